"""Shared fixtures: real Docker, real Nginx, test images built once per session.

Under CI=true a missing Docker engine or Nginx fails the integration tests; elsewhere they
skip with the reason. Every container a test creates belongs to an app named ``zdt<pid>-…``.
At the start of a session, leftovers of runners that have died are swept. At the end, anything
of this run still there (a container of its apps, an Nginx master it started, a daemon or any
other child process) FAILS the run: each test must remove what it started. It is then removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks import harness
from benchmarks.harness import NginxServer, build_image, free_port

IMAGE_REPO = "zdtest"
# App names carry the test runner's pid, so concurrent runs never sweep each other's apps.
TEST_PREFIX = f"zdt{os.getpid()}-"
IN_CI = os.environ.get("CI", "").lower() == "true"
_docker_used = False  # the leftover check looks at Docker only if a test used it
_late_leftovers: list[str] = []  # found by fixtures torn down before no_leftovers runs


def require(ok: bool, what: str) -> None:
    """Skip locally, fail under CI: a missing dependency must never hide a test in CI."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true", pytrace=False)
    pytest.skip(what)


# --- Docker ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # any failure to reach the engine
        require(False, f"a Docker engine ({e})")
    global _docker_used
    _docker_used = True
    _sweep_dead_runners(client)
    yield client
    client.close()


def labelled_containers(client, label: str = "zdagent.app") -> list[tuple[str, str, str]]:
    """(id, name, app) of zdagent-labelled containers, from one list call: a sparse list does
    not inspect each container, so a container removed meanwhile by a parallel run is no race."""
    return [(c.id, c.attrs["Names"][0].lstrip("/"), c.attrs["Labels"].get("zdagent.app", ""))
            for c in client.containers.list(all=True, sparse=True, filters={"label": label})]


def remove_container(client, container_id: str) -> None:
    """Force-remove; one that is already gone is fine."""
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_container(container_id, force=True)


def _sweep_dead_runners(client) -> None:
    """Remove test apps' containers left by a runner that has died (never another live run's)."""
    for cid, _, app in labelled_containers(client):
        m = re.match(r"zdt(\d+)-", app)
        if m and m.group(0) != TEST_PREFIX and not psutil.pid_exists(int(m.group(1))):
            remove_container(client, cid)


# --- nothing left behind ----------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def no_leftovers(tmp_path_factory) -> Iterator[None]:
    """Fail the run if a test left a container, an Nginx master or a process behind.

    Set up first, so torn down last: after every other fixture has cleaned up.
    """
    yield
    found = _leftover_processes(str(tmp_path_factory.getbasetemp())) + _late_leftovers
    if _docker_used:
        found += _leftover_containers() + _leftover_services()
    if found:
        pytest.fail("this run left behind (now removed): " + "; ".join(found), pytrace=False)


def _leftover_containers() -> list[str]:
    import docker

    client = docker.from_env()
    try:
        mine = [(cid, name) for cid, name, app in labelled_containers(client)
                if app.startswith(TEST_PREFIX)]
        for cid, _ in mine:
            remove_container(client, cid)
        return [f"container {name}" for _, name in mine]
    finally:
        client.close()


def _test_services(client) -> list[tuple[object, str]]:
    """(service, app) of every test app's service (zdagent.app=zdt<pid>-…) in the swarm."""
    if not harness.swarm_active(client):
        return []
    found = [(s, s.attrs["Spec"].get("Labels", {}).get("zdagent.app", ""))
             for s in client.services.list(filters={"label": "zdagent.app"})]
    return [(s, app) for s, app in found if re.match(r"zdt\d+-", app)]


def _leftover_services(client=None) -> list[str]:
    """Swarm services of this run's apps (labelled zdagent.app=zdt<pid>-…), removed."""
    import docker

    own = client is None
    client = client or docker.from_env()
    try:
        mine = [s for s, app in _test_services(client) if app.startswith(TEST_PREFIX)]
        for s in mine:
            with contextlib.suppress(docker.errors.NotFound):
                s.remove()
        return [f"service {s.name}" for s in mine]
    finally:
        if own:
            client.close()


@pytest.fixture(scope="session")
def swarm(docker_client) -> Iterator[None]:
    """A single-node swarm (harness.single_node_swarm: left as found); this run's services
    are checked before a swarm joined here is left."""
    import docker

    with harness.single_node_swarm(
            docker_client, lambda: _late_leftovers.extend(_leftover_services(docker_client))):
        for s, app in _test_services(docker_client):  # left by runners that have died
            pid = int(app[3:].split("-", 1)[0])
            if not app.startswith(TEST_PREFIX) and not psutil.pid_exists(pid):
                with contextlib.suppress(docker.errors.NotFound):
                    s.remove()
        yield


def _leftover_processes(basetemp: str) -> list[str]:
    """Live child processes of this run, and Nginx masters it started (they daemonize)."""
    found: list[str] = []
    children = [p for p in psutil.Process().children(recursive=True) if _alive(p)]
    masters = [p for pid, prefix in harness.STARTED_NGINX.items()
               if (p := _process(pid)) and _alive(p) and prefix in " ".join(_cmdline(p))]
    masters += [p for p in psutil.process_iter(["name"]) if p.info["name"] == "nginx"
                and _alive(p) and basetemp in " ".join(_cmdline(p)) and p not in masters]
    for p in children + masters:
        cmd = " ".join(_cmdline(p))[:120]
        if "multiprocessing" in cmd and "resource_tracker" in cmd:
            continue
        found.append(f"process {p.pid} ({cmd})")
        with contextlib.suppress(psutil.Error):  # Nginx's master takes its workers with it
            p.send_signal(signal.SIGTERM if p in masters else signal.SIGKILL)
    return found


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def make_context(dest: Path) -> Path:
    require(shutil.which("busybox") is not None, "busybox-static (apt-get install busybox-static)")
    return harness.make_context(dest)


@pytest.fixture(scope="session")
def images(docker_client, tmp_path_factory) -> dict[str, str]:
    """zdtest:v1..v3 healthy, plus :fail (health 500), :crash, :slow; built once."""
    ctx = make_context(tmp_path_factory.mktemp("ctx") / "app")
    specs = {"v1": "ok", "v2": "ok", "v3": "ok", "fail": "fail", "crash": "crash",
             "slow": "slow"}
    return {tag: build_image(docker_client, ctx, f"{IMAGE_REPO}:{tag}", ZDAGENT_VERSION=tag,
                             MODE=mode)
            for tag, mode in specs.items()}


# --- Nginx ----------------------------------------------------------------------------------

@pytest.fixture
def nginx_server(tmp_path) -> Iterator[NginxServer]:
    require(shutil.which("nginx") is not None, "nginx (apt-get install nginx)")
    server = NginxServer.create(tmp_path / "nginx")
    yield server
    server.stop()


# --- an app under test ----------------------------------------------------------------------

@dataclass
class TestApp:
    """One zdagent app config wired to a test Nginx; run the real CLI against it."""

    name: str
    config: Path
    nginx: NginxServer
    blue_port: int
    green_port: int
    port: int  # this app's site on the test Nginx
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ZDAGENT_CONFIG": str(self.config), "NO_COLOR": "1",
               "COLUMNS": "200", **self.env}
        return subprocess.run([sys.executable, "-m", "zdagent", *args], capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        p = self.cli(*args)
        assert p.returncode == 0, f"zdagent {' '.join(args)} -> {p.returncode}\n{p.stderr}"
        return p

    def get(self, path: str = "/cgi-bin/version") -> httpx.Response:
        return httpx.get(self.url + path, headers={"Connection": "close"}, timeout=10)

    def served_version(self) -> str:
        r = self.get()
        assert r.status_code == 200, r.text
        return r.text.split()[0]


IMAGE_SOURCE = f'[source]\nimage = "{IMAGE_REPO}"\npull = "never"'


@pytest.fixture
def make_app(tmp_path, nginx_server, docker_client, images):
    """Factory: an app config (image source by default) plus Nginx serving its site."""
    made: list[TestApp] = []

    def factory(source: str = IMAGE_SOURCE, extra: str = "", start_nginx: bool = True
                ) -> TestApp:
        name = f"{TEST_PREFIX}{uuid.uuid4().hex[:6]}"
        cfg_dir = tmp_path / name
        cfg_dir.mkdir()
        blue, green = free_port(), free_port()
        port = free_port() if made else nginx_server.port  # each app has its own site port
        config = cfg_dir / "zdagent.toml"
        config.write_text(harness.app_config(name, cfg_dir / "state", nginx_server, blue, green,
                                             source, extra, listen=port))
        app = TestApp(name, config, nginx_server, blue, green, port)
        site = app.ok("nginx", "render", "--site").stdout
        (nginx_server.prefix / "sites" / f"{name}.conf").write_text(site)
        upstream = app.ok("nginx", "render", "--live", "none").stdout
        (nginx_server.prefix / "zdagent" / f"{name}.upstream.conf").write_text(upstream)
        if start_nginx and nginx_server.pid_file.exists():
            nginx_server.reload()  # a second app on the same test Nginx
        elif start_nginx:
            nginx_server.start()
        made.append(app)
        return app

    yield factory
    for app in made:
        for cid, _, _ in labelled_containers(docker_client, f"zdagent.app={app.name}"):
            remove_container(docker_client, cid)
