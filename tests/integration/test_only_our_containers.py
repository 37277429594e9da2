"""Only our containers: a slot is found by its labels, a look-alike is never touched, and a
Docker error keeps its cause (the end of the message)."""

from __future__ import annotations

import pytest

from tests.conftest import IMAGE_REPO


@pytest.fixture
def foreign(docker_client):
    """Start containers that are not zdagent's (no zdagent labels); removed at the end."""
    started = []

    def run(name: str | None = None, ports: dict | None = None):
        c = docker_client.containers.run(f"{IMAGE_REPO}:v1", name=name, detach=True,
                                         labels={"zdtest.foreign": "1"}, ports=ports or {})
        started.append(c)
        return c

    yield run
    for c in started:
        c.remove(force=True)


def ours(docker_client, app) -> list[str]:
    return sorted(c.name for c in docker_client.containers.list(
        all=True, filters={"label": f"zdagent.app={app.name}"}))


def test_a_container_with_our_name_but_not_our_labels_is_never_touched(make_app, docker_client,
                                                                       foreign):
    app = make_app()
    app.ok("deploy", "v1")
    stranger = foreign(name=f"{app.name}-green")

    p = app.cli("deploy", "v2")
    assert p.returncode == 1, p.stderr
    assert (f"a container named {app.name}-green exists but was not created by zdagent"
            in p.stderr)
    assert "hint:" in p.stderr and f"docker rm -f {app.name}-green" in p.stderr
    assert "Traceback" not in p.stderr
    stranger.reload()
    assert stranger.status == "running"  # neither stopped nor removed
    assert app.served_version() == "v1"  # the live slot is untouched
    assert ours(docker_client, app) == [f"{app.name}-blue"]
    status = app.ok("status", "--json").stdout
    assert '"state": "missing"' in status  # the look-alike is not reported as our green slot


def test_deploy_onto_a_port_another_container_holds_names_the_cause(make_app, docker_client,
                                                                    foreign):
    app = make_app()
    foreign(ports={"8080/tcp": ("127.0.0.1", app.blue_port)})

    p = app.cli("deploy", "v1")
    assert p.returncode == 1, p.stderr
    error = next(line for line in p.stderr.splitlines() if line.startswith("error:"))
    assert f"could not start {app.name}-blue" in error
    assert "port is already allocated" in error
    assert f"127.0.0.1:{app.blue_port}" in p.stderr
    assert ours(docker_client, app) == []  # the failed candidate was removed
