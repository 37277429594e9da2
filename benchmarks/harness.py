"""Real components for tests and benchmarks: a private Nginx, free ports, sample-app images.

Shared by tests/conftest.py and the benchmarks, so a benchmark measures exactly the setup the
tests prove. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_APP = ROOT / "examples" / "sample-app"

NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")

# Workers run as root here only because pytest's temporary directories are 0700: in njs mode
# they read the app's active file. (On a host, /etc/nginx/zdagent is readable by www-data.)
NGINX_CONF = """\
{load_modules}user root;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/sites/*.conf;
}}
"""


# Every Nginx master started here (pid -> prefix): the test session checks that none is left.
STARTED_NGINX: dict[int, str] = {}


# Ports handed out, from below the kernel's ephemeral range (32768-60999 by default): a port
# that bind(0) returns is one any outgoing connection (a load client's, Docker's) may take as
# its local port before Docker or Nginx binds it — seen as "address already in use" under load.
PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A 127.0.0.1 port free right now, never handed out before by this process."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


@dataclass
class NginxServer:
    """A private Nginx master on 127.0.0.1:<port> with its own prefix."""

    prefix: Path
    port: int

    @classmethod
    def create(cls, prefix: Path, port: int | None = None) -> NginxServer:
        for sub in ("tmp", "sites", "zdagent"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        server = cls(prefix=prefix, port=port or free_port())
        modules = f"load_module {NJS_MODULE};\n" if NJS_MODULE.exists() else ""
        server.conf.write_text(NGINX_CONF.format(prefix=prefix, load_modules=modules))
        return server

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "nginx.pid"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self, *extra: str) -> list[str]:
        return ["nginx", "-p", str(self.prefix), "-c", str(self.conf), "-e",
                str(self.prefix / "error.log"), *extra]

    def start(self) -> None:
        subprocess.run(self.argv(), check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while (pid := self._pid()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not write its pid file")
            time.sleep(0.05)
        STARTED_NGINX[pid] = str(self.prefix)

    def _pid(self) -> int | None:
        """The master's pid from its pid file; None while absent or half-written."""
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def reload(self) -> None:
        subprocess.run(self.argv("-s", "reload"), check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


@contextlib.contextmanager
def run_registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<free port>, storing under ``tmp_path``."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise FileNotFoundError("docker-registry not found (apt-get install docker-registry)")
    port = free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(REGISTRY_CONFIG.format(root=tmp_path / "data", port=port))
    proc = subprocess.Popen([str(binary), "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the registry did not start")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def push(client, local: str, repo: str, tag: str) -> None:
    """Push the local image ``local`` as ``repo:tag``; only the registry keeps that name."""
    client.images.get(local).tag(repo, tag)
    for chunk in client.api.push(repo, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise RuntimeError(f"push of {repo}:{tag}: {chunk['error']}")
    client.images.remove(f"{repo}:{tag}")


def untag(client, repo: str) -> None:
    """Remove every name of ``repo`` here (tags and pulled digests), never the images."""
    for image in client.images.list(name=repo):
        for ref in [*image.tags, *image.attrs.get("RepoDigests", [])]:
            if ref.startswith(repo):
                client.images.remove(ref)


# Test runs and benchmarks that overlap on one Docker engine (CI beside a developer) share
# the swarm: each holds SWARM_LOCK shared while it uses it; SWARM_LOCK.join is held (briefly)
# to join or leave, and names the node a run joined, so the last run out leaves that swarm
# and never one no run joined.
SWARM_LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "zdagent-test-swarm.lock"


@contextlib.contextmanager
def single_node_swarm(client, on_leave=None) -> Iterator[None]:
    """A swarm to run services in: joined here if the engine was in none, and left by the
    last overlapping run to finish (after ``on_leave``); a swarm no run joined is left as
    it was found."""
    users = os.open(SWARM_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    join = os.open(f"{SWARM_LOCK}.join", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        with _locked(join):
            fcntl.flock(users, fcntl.LOCK_SH)
            if not swarm_active(client):
                client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
                _swarm_mark(join, _node_id(client))
        try:
            yield
        finally:
            if on_leave is not None:
                on_leave()
            with _locked(join):
                _leave_if_last(client, users, join)
    finally:
        os.close(users)
        os.close(join)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _leave_if_last(client, users: int, join: int) -> None:
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another run still uses it: the last one leaves
    joined = os.pread(join, 256, 0).decode().strip()
    if joined and swarm_active(client) and _node_id(client) == joined:
        client.swarm.leave(force=True)
    _swarm_mark(join, "")


def _swarm_mark(fd: int, node: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, node.encode(), 0)


def _node_id(client) -> str:
    return str(client.info().get("Swarm", {}).get("NodeID") or "")


def swarm_active(client) -> bool:
    return client.info().get("Swarm", {}).get("LocalNodeState") == "active"


def make_context(dest: Path) -> Path:
    """A build context of the sample app with Debian's static busybox copied in."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise FileNotFoundError("busybox not found (apt-get install busybox-static)")
    shutil.copytree(SAMPLE_APP, dest, dirs_exist_ok=True)
    shutil.copy2(busybox, dest / "busybox")
    return dest


def build_image(client, context: Path, tag: str, **args: str) -> str:
    """Build ``tag`` from ``context`` with build args; raise on any error chunk."""
    for chunk in client.api.build(path=str(context), tag=tag, buildargs=args, rm=True,
                                  decode=True):
        if "error" in chunk:
            raise RuntimeError(f"building {tag}: {chunk['error']}")
    return str(client.images.get(tag).id)


def app_config(name: str, state_dir: Path, nginx: NginxServer, blue: int, green: int,
               source: str, extra: str = "", listen: int | None = None) -> str:
    """A zdagent app config wired to a private Nginx, with fast probes for tests/benchmarks.

    ``listen``: the app's own site port on that Nginx (default: the server's port).
    """
    upstream = nginx.prefix / "zdagent" / f"{name}.upstream.conf"
    port = listen or nginx.port
    argv = json.dumps  # TOML arrays of strings are JSON arrays
    return f"""\
[app]
name = "{name}"
state_dir = "{state_dir}"

{source}

[container]
port = 8080
stop_timeout = 2

[slots]
blue_port = {blue}
green_port = {green}
drain_seconds = 5

[health]
path = "/cgi-bin/health"
interval = 0.2
timeout = 2
passes = 2
startup_deadline = 15
expect_version = "body"

[nginx]
upstream_file = "{upstream}"
test_command = {argv(nginx.argv("-t"))}
reload_command = {argv(nginx.argv("-s", "reload"))}
pid_file = "{nginx.pid_file}"
public_url = "http://127.0.0.1:{port}/"
listen = "127.0.0.1:{port}"
reload_timeout = 10
access_log = "{nginx.prefix / 'zdagent' / f'{name}.access.json'}"
{extra}
"""
