"""`zdagent logs`, `zdagent exec` and the release command of a swarm app (app.backend =
"swarm") on a real single-node swarm, images pulled from a local registry (host mode: this
kernel has no IPVS for the routing mesh; see test_swarm.py).

A one-off (exec, release) is a plain container on this host: it pulls the slot's or the
candidate's digest-pinned image here, joins the app's attachable overlay network, and is
refused, with nothing changed, what a plain container cannot have (a non-attachable overlay
network, Docker secrets)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid

import docker.errors
import httpx
import pytest

from tests.conftest import TEST_PREFIX
from tests.integration.test_daemon import wait_for
from tests.integration.test_swarm import services, swarm_app, swarm_registry

__all__ = ["services", "swarm_registry"]  # the fixtures, shared

# Runs in the candidate image (busybox): fails while the env_file says so.
RELEASE = """
[hooks]
release = ["/bin/busybox", "sh", "-c", '''
echo "migrating to $ZDAGENT_VERSION in $ZDAGENT_SLOT greeting=$GREETING"
if [ "$FAIL_MIGRATION" = 1 ]; then echo "ERROR: column orders.total exists" >&2; exit 3; fi
echo "migrated"''']
release_timeout = 30
"""


def _set(app, section: str, lines: str) -> None:
    text = app.config.read_text()
    app.config.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n", 1))


def _oneoffs(client, app) -> list[str]:
    return [c.name for c in client.containers.list(
        all=True, filters={"label": ["zdagent.oneoff=1", f"zdagent.app={app.name}"]})]


def _services(client, app) -> dict[str, str]:
    """slot -> version of the app's services."""
    return {s.attrs["Spec"]["Labels"]["zdagent.slot"]: s.attrs["Spec"]["Labels"]["zdagent.version"]
            for s in client.services.list(filters={"label": f"zdagent.app={app.name}"})}


def test_logs_exec_and_release_of_a_swarm_app(make_app, swarm_registry, services,
                                              docker_client, tmp_path):
    net = docker_client.networks.create(f"{TEST_PREFIX}ov-{uuid.uuid4().hex[:6]}",
                                        driver="overlay", attachable=True)
    closed = docker_client.networks.create(f"{TEST_PREFIX}ovc-{uuid.uuid4().hex[:6]}",
                                           driver="overlay")  # services only
    app = swarm_app(make_app, swarm_registry, extra=RELEASE)
    services.append(app.name)
    env_file = tmp_path / "app.env"
    env_file.write_text("FAIL_MIGRATION=0\n")
    env_file.chmod(0o600)
    _set(app, "container", f'network = "{net.name}"\nenv = {{ GREETING = "hi" }}\n'
                           f'env_file = "{env_file}"')
    try:
        # the release command: in the candidate's image (pulled here by digest), with the
        # app's env and env_file, before the candidate's service exists
        p = app.ok("deploy", "v1")
        assert "migrating to v1 in release greeting=hi" in p.stderr and "migrated" in p.stderr
        assert f"pulling {swarm_registry}@sha256:" in p.stderr, p.stderr
        assert app.served_version() == "v1" and _oneoffs(docker_client, app) == []

        # logs: the live service's output (-f keeps streaming it), --tail, and a slot
        # without a service
        with Follow(app) as follow:
            follow.wait_for("sample app v1 starting on :8080 (mode ok, slot blue)")
            marker = f"swarm-{uuid.uuid4().hex[:8]}"
            r = httpx.get(f"{app.url}/cgi-bin/log?{marker}", timeout=10)
            assert r.status_code == 200, r.text
            follow.wait_for(f"app log: {marker}")
        out = app.ok("logs", "--tail", "3").stdout
        assert f"app log: {marker}" in out and len(out.splitlines()) <= 3, out
        assert "starting on :8080" in app.ok("logs", "--since", "10m").stdout
        p = app.cli("logs", "--slot", "standby")
        assert p.returncode == 1 and "the green slot has no service" in p.stderr, p.stderr
        assert "hint:" in p.stderr

        # exec: the live slot's image and env, its exit code, the overlay network (the live
        # task answers on it by name; tasks.<service>: DNS round robin, no IPVS needed)
        script = ('echo "v=$ZDAGENT_VERSION g=$GREETING"; /bin/busybox wget -q -O - '
                  f'http://tasks.{app.name}-blue:8080/cgi-bin/version; exit 7')
        p = app.cli("exec", "--", "/bin/busybox", "sh", "-c", script)
        assert p.returncode == 7, p.stderr
        assert "v=v1 g=hi" in p.stdout and "v1 blue" in p.stdout, p.stdout
        assert _oneoffs(docker_client, app) == []

        # a failing release stops the deploy: no green service, v1 serving, nothing left
        env_file.write_text("FAIL_MIGRATION=1\n")
        p = app.cli("deploy", "v2")
        assert p.returncode == 1, p.stderr
        assert "release command /bin/busybox failed with exit code 3" in p.stderr, p.stderr
        assert "column orders.total exists" in p.stderr and "nothing was switched" in p.stderr
        assert _services(docker_client, app) == {"blue": "v1"}
        assert app.served_version() == "v1" and _oneoffs(docker_client, app) == []
        assert json.loads(app.ok("history", "--json").stdout)[0]["outcome"] == "failed"

        # refused before anything runs: an overlay network only services can join ...
        env_file.write_text("FAIL_MIGRATION=0\n")
        app.config.write_text(app.config.read_text().replace(net.name, closed.name))
        for argv in (("exec", "--", "/bin/busybox", "true"), ("deploy", "v2")):
            p = app.cli(*argv)
            assert p.returncode == 1, p.stderr
            assert f"cannot join the overlay network {closed.name}" in p.stderr, p.stderr
            assert "--attachable" in p.stderr and "Traceback" not in p.stderr
        assert _services(docker_client, app) == {"blue": "v1"}
        # ... and Docker secrets (mounted into tasks only): the config refuses a release
        # command beside them, exec says what is missing
        app.config.write_text(app.config.read_text().replace(closed.name, net.name))
        _set(app, "swarm", f'secrets = ["{TEST_PREFIX}db"]')
        p = app.cli("config", "check")
        assert p.returncode == 2 and "hooks.release: cannot run with swarm.secrets" in p.stderr
        assert RELEASE in app.config.read_text()
        app.config.write_text(app.config.read_text().replace(RELEASE, "\n"))
        p = app.cli("exec", "--", "/bin/busybox", "true")
        assert p.returncode == 1 and "Docker secrets" in p.stderr, p.stderr
        assert f"({TEST_PREFIX}db)" in p.stderr and "hint:" in p.stderr
        assert _oneoffs(docker_client, app) == []
    finally:
        for s in docker_client.services.list(filters={"label": f"zdagent.app={app.name}"}):
            s.remove()
        wait_for(lambda: not docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"zdagent.app={app.name}"}), 60,
            "the services' containers to go")
        for n in (net, closed):  # the tasks' endpoints leave the network asynchronously
            wait_for(lambda n=n: _removed(n), 30, f"{n.name} to be removed")


class Follow:
    """``zdagent logs -f`` of ``app`` in a subprocess, its lines read by a thread."""

    def __init__(self, app) -> None:
        env = {**os.environ, "ZDAGENT_CONFIG": str(app.config)}
        self.proc = subprocess.Popen([sys.executable, "-m", "zdagent", "logs", "-f"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=left)
                assert line is not None, f"logs -f ended: {self.proc.stderr.read()}"
                if text in line:
                    assert self.proc.poll() is None  # still following
                    return
        pytest.fail(f"{text!r} did not appear in `logs -f` within {timeout:g}s")

    def __enter__(self) -> Follow:
        return self

    def __exit__(self, *_: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _removed(network) -> bool:
    try:
        network.remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False
    return True

