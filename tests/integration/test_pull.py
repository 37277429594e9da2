"""The pull path against a real registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, require

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
    require(binary is not None, "docker-registry (apt-get install docker-registry)")
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
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def registry(tmp_path):
    with run_registry(tmp_path) as addr:
        yield addr


def push(docker_client, local: str, repo: str, tag: str) -> None:
    docker_client.images.get(local).tag(repo, tag)
    for chunk in docker_client.api.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in chunk, chunk
    docker_client.images.remove(f"{repo}:{tag}")  # only the registry has it now


def test_deploy_pulls_from_the_registry(make_app, registry, docker_client):
    repo = f"{registry}/zdpull"
    push(docker_client, "zdtest:v1", repo, "v1")
    push(docker_client, "zdtest:v2", repo, "v2")
    app = make_app(source=f'[source]\nimage = "{repo}"\npull = "always"')
    try:
        app.ok("deploy", "v1")
        assert app.served_version() == "v1"
        app.ok("deploy", "v2")
        assert app.served_version() == "v2"
        p = app.cli("deploy", "v404")
        assert p.returncode == 1
        assert f"pull of {repo}:v404 failed" in p.stderr
        assert app.served_version() == "v2"
    finally:
        for c in docker_client.containers.list(all=True,
                                               filters={"label": f"zdagent.app={app.name}"}):
            c.remove(force=True)
        for tag in ("v1", "v2"):
            docker_client.images.remove(f"{repo}:{tag}", force=True)
