"""Three ways to put a new version live, measured under the same load.

* ``zdagent``: the real engine (verified switch, drain, warm standby, tuned template).
* ``bare``: a typical render-and-reload script: start the new container on the other port,
  wait for it, rewrite the upstream, ``nginx -s reload``, remove the old container at once;
  plain ``proxy_pass``, no keep-alive, no backup, no drain, no verification.
* ``naive``: stop the old container and start the new one on the same port.
Each runs against its own private Nginx on 127.0.0.1, and reports when the candidate was
healthy and when the switch happened, so the driver can measure switch and rollback times.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx

from benchmarks.harness import (
    NginxServer,
    app_config,
    free_port,
    push,
    run_registry,
    single_node_swarm,
    untag,
)
from zdagent.config import load_config
from zdagent.deploy import Engine, Result
from zdagent.events import Event
from zdagent.nginx import render_site, render_upstream

PLAIN_SITE = """\
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://{upstream};
        add_header X-Zdagent-Upstream $upstream_addr always;
    }}
}}
"""


SWARM_SERVICE = ('restart_delay = 1\nhealthcheck = ["/bin/busybox", "wget", "-q", "-O", '
                 '"/dev/null", "http://127.0.0.1:8080/cgi-bin/health"]\n')


@dataclass
class Op:
    """One deploy or rollback as the driver sees it (wall-clock times)."""

    action: str
    version: str
    t_cmd: float
    t_end: float
    healthy_at: float
    switch_at: float
    phases: dict[str, float] = field(default_factory=dict)


def _wait_healthy(port: int, deadline_s: float = 30.0) -> float:
    deadline = time.monotonic() + deadline_s
    with httpx.Client(headers={"Connection": "close"}) as c:
        while time.monotonic() < deadline:
            try:
                if c.get(f"http://127.0.0.1:{port}/cgi-bin/health", timeout=2).status_code \
                        == 200:
                    return time.time()
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port} never became healthy")


class ZdagentStrategy:
    name = "zdagent"
    extra = ""  # config lines appended to [nginx]

    def __init__(self, workdir: Path, repo: str, app: str | None = None) -> None:
        self.app = app or self.name  # the app (and container) name; tests give a unique one
        self.nginx = NginxServer.create(workdir / f"nginx-{self.name}")
        blue, green = free_port(), free_port()
        cfg_path = workdir / f"{self.app}.toml"
        source = self.source(repo)
        cfg_path.write_text(app_config(self.app, workdir / "state", self.nginx, blue, green,
                                       source, extra=self.extra)
                            .replace("drain_seconds = 5", "drain_seconds = 10"))
        cfg = load_config(cfg_path)
        (self.nginx.prefix / "sites" / f"{self.app}.conf").write_text(render_site(cfg))
        cfg.nginx.upstream_file.write_text(render_upstream(cfg, None, None))
        self.nginx.start()
        self.events: list[tuple[float, Event]] = []
        self.engine = Engine(cfg, lambda e: self.events.append((time.time(), e)))

    def source(self, repo: str) -> str:
        return f'[source]\nimage = "{repo}"\npull = "never"'

    def _op(self, action: str, t_cmd: float, result: Result) -> Op:
        ends = {p.name: p.started_at + (p.duration or 0) for p in result.phases}
        durations = {p.name: p.duration or 0.0 for p in result.phases}
        healthy = ends.get("probe", t_cmd)
        return Op(action, result.version or "?", t_cmd, time.time(), healthy,
                  ends["switch"], durations)

    def deploy(self, version: str) -> Op:
        t = time.time()
        return self._op("deploy", t, self.engine.deploy(version))

    def rollback(self, version: str) -> Op:
        t = time.time()
        op = self._op("rollback", t, self.engine.rollback())
        assert op.version == version, (op.version, version)
        return op

    def close(self) -> None:
        """Stop Nginx and remove both slots' containers: a benchmark leaves nothing running."""
        self.engine.close()
        self.nginx.stop()
        client = docker.from_env()
        try:
            for c in client.containers.list(all=True,
                                            filters={"label": f"zdagent.app={self.app}"}):
                with contextlib.suppress(docker.errors.NotFound):  # Swarm removing a task's
                    c.remove(force=True)
        finally:
            client.close()


class ZdagentNjsStrategy(ZdagentStrategy):
    """zdagent with switch_mode = "njs": the switch is a file rename, never a reload."""

    name = "zdagent-njs"
    extra = 'switch_mode = "njs"\n'


class ZdagentSwarmStrategy(ZdagentStrategy):
    """zdagent with app.backend = "swarm": each slot a service on a single-node swarm (joined
    here if the engine is in none, and left after), images pulled from a local registry.

    Publishing: the routing mesh with 3 replicas where the kernel has IPVS; otherwise host
    mode, one task per slot (a kernel without IPVS cannot run the mesh).
    """

    name = "swarm"

    def __init__(self, workdir: Path, repo: str, app: str | None = None) -> None:
        self.extra = self.swarm_lines()
        self.client = docker.from_env()
        self.stack = contextlib.ExitStack()
        try:
            self.stack.enter_context(single_node_swarm(self.client))
            (workdir / "registry").mkdir(parents=True, exist_ok=True)
            registry = self.stack.enter_context(run_registry(workdir / "registry"))
            pushed = f"{registry}/{repo}"
            for image in self.client.images.list(name=repo):
                for tag in image.tags:
                    push(self.client, tag, pushed, tag.rpartition(":")[2])
            self.stack.callback(untag, self.client, pushed)
            super().__init__(workdir, pushed, app)
        except BaseException:
            self.stack.close()
            self.client.close()
            raise

    def swarm_lines(self) -> str:
        """The config's [nginx] extra and [swarm] section for this mode."""
        mesh = Path("/proc/net/ip_vs").exists()
        return (f'[swarm]\nreplicas = {3 if mesh else 1}\npublish_mode = '
                f'"{"ingress" if mesh else "host"}"\n{SWARM_SERVICE}')

    def source(self, repo: str) -> str:
        return f'backend = "swarm"\n\n[source]\nimage = "{repo}"\npull = "always"'

    def close(self) -> None:
        """Remove both slot services, then as the base class; leave the swarm as found."""
        try:
            for svc in self.client.services.list(filters={"label": f"zdagent.app={self.app}"}):
                svc.remove()
            super().close()
        finally:
            self.stack.close()
            self.client.close()


class ZdagentSwarmTasksStrategy(ZdagentSwarmStrategy):
    """Three tasks per slot service on task ports (each task on its own port, all of them in
    the upstream; no routing mesh needed), njs switch."""

    name = "swarm-tasks"

    def swarm_lines(self) -> str:
        return ('switch_mode = "njs"\n[swarm]\nreplicas = 3\npublish_mode = "task-ports"\n'
                f'{SWARM_SERVICE}')


class _ContainerStrategy:
    """Shared plumbing of the two script-style baselines."""

    name = "base"

    def __init__(self, workdir: Path, repo: str, app: str | None = None) -> None:
        self.repo = repo
        self.docker = docker.from_env()
        self.nginx = NginxServer.create(workdir / f"nginx-{self.name}")
        self.upstream_file = self.nginx.prefix / "zdagent" / f"{self.name}.conf"
        (self.nginx.prefix / "sites" / f"{self.name}.conf").write_text(
            f"include {self.upstream_file};\n"
            + PLAIN_SITE.format(port=self.nginx.port, upstream=self.name))

    def _run(self, name: str, version: str, port: int) -> None:
        self.docker.containers.run(
            f"{self.repo}:{version}", name=name, detach=True,
            ports={"8080/tcp": ("127.0.0.1", port)},
            labels={"zdagent.app": f"zdbench-{self.name}"},
            environment={"ZDAGENT_VERSION": version})

    def _remove(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.docker.containers.get(name).remove(force=True)

    def _write_upstream(self, port: int) -> None:
        self.upstream_file.write_text(f"upstream {self.name} {{ server 127.0.0.1:{port}; }}\n")

    def rollback(self, version: str) -> Op:
        op = self.deploy(version)
        op.action = "rollback"
        return op

    def close(self) -> None:
        for c in self.docker.containers.list(
                all=True, filters={"label": f"zdagent.app=zdbench-{self.name}"}):
            c.remove(force=True)
        self.nginx.stop()
        self.docker.close()


class BareReloadStrategy(_ContainerStrategy):
    name = "bare"

    def __init__(self, workdir: Path, repo: str, app: str | None = None) -> None:
        super().__init__(workdir, repo, app)
        self.ports = {"blue": free_port(), "green": free_port()}
        self.live: str | None = None
        self._write_upstream(self.ports["blue"])
        self.nginx.start()

    def deploy(self, version: str) -> Op:
        t = time.time()
        target = "green" if self.live == "blue" else "blue"
        self._remove(f"zdbench-bare-{target}")
        self._run(f"zdbench-bare-{target}", version, self.ports[target])
        healthy = _wait_healthy(self.ports[target])
        self._write_upstream(self.ports[target])
        self.nginx.reload()
        switched = time.time()
        if self.live:
            self._remove(f"zdbench-bare-{self.live}")  # no drain
        self.live = target
        return Op("deploy", version, t, time.time(), healthy, switched)


class NaiveStrategy(_ContainerStrategy):
    name = "naive"

    def __init__(self, workdir: Path, repo: str, app: str | None = None) -> None:
        super().__init__(workdir, repo, app)
        self.port = free_port()
        self._write_upstream(self.port)
        self.nginx.start()

    def deploy(self, version: str) -> Op:
        t = time.time()
        self._remove("zdbench-naive-app")
        self._run("zdbench-naive-app", version, self.port)
        healthy = _wait_healthy(self.port)
        return Op("deploy", version, t, time.time(), healthy, healthy)


STRATEGIES = {s.name: s for s in (ZdagentStrategy, ZdagentNjsStrategy, BareReloadStrategy,
                                  NaiveStrategy, ZdagentSwarmStrategy,
                                  ZdagentSwarmTasksStrategy)}
