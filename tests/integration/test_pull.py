"""The pull path against a real registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import shutil

import pytest

from benchmarks.harness import push, run_registry
from tests.conftest import require


@pytest.fixture
def registry(tmp_path):
    require(shutil.which("docker-registry") is not None,
            "docker-registry (apt-get install docker-registry)")
    with run_registry(tmp_path) as addr:
        yield addr


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
