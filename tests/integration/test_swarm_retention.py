"""Image retention of a swarm app (app.backend = "swarm") on this host: a real single-node
swarm, images pulled by digest from a local registry (host mode: see test_swarm.py).

The images are made for this test (zdtest:v1 saying their own version) and exist here only
as pulled by digest, so nothing else names them and retention may remove them."""

from __future__ import annotations

import io
import json
import uuid

import docker.errors
import pytest

from benchmarks.harness import push, untag
from tests.integration.test_swarm import remove_services, services, swarm_app, swarm_registry
from zdagent.services import by_digest

__all__ = ["services", "swarm_registry"]  # the fixtures, shared


def _set_retain(app, n: int) -> None:
    text = app.config.read_text()
    if "\nretain = " in text:
        text = "\n".join(f"retain = {n}" if line.startswith("retain = ") else line
                         for line in text.splitlines()) + "\n"
    else:
        text = text.replace('backend = "swarm"\n', f'backend = "swarm"\nretain = {n}\n', 1)
    app.config.write_text(text)


def _push_versions(client, repo: str, versions: list[str]) -> None:
    """Push one image of its own per version to ``repo``."""
    for v in versions:
        local = f"zdtest-ret-{uuid.uuid4().hex[:8]}:{v}"
        client.images.build(fileobj=io.BytesIO(
            f"FROM zdtest:v1\nLABEL zdtest.retention={local}\n"  # the probe wants {v}:
            f'RUN ["/bin/busybox", "sh", "-c", "echo {v} > /www/version.txt"]\n'.encode()),
            tag=local, rm=True)
        push(client, local, repo, v)
        client.images.remove(local)  # left here under repo@sha256:… only, as if pulled


def _here(client, repo: str) -> dict[str, str]:
    """repo@sha256:… -> local image id of ``repo``'s images on this host."""
    found = {}
    for image in client.images.list():
        for ref in image.attrs.get("RepoDigests") or []:
            if ref.startswith(f"{repo}@"):
                found[ref] = image.id
    return found


def _digest(app, version: str) -> str:
    """The digest ref (repo@sha256:…) the last deploy of ``version`` pinned."""
    for h in json.loads(app.ok("history", "--json").stdout):
        if h["version"] == version and h.get("image_id"):
            return by_digest(h["image_id"])
    raise AssertionError(f"no deploy of {version} in the history")


def _live(app) -> str:
    """The version the app serves, and that status names it live."""
    st = json.loads(app.ok("status", "--json").stdout)
    assert st["slots"][st["live_slot"]]["version"] == app.served_version()
    return app.served_version()


def _stopped_tasks(client, app) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={
        "label": f"zdagent.app={app.name}", "status": "exited"})]


def test_retention_prunes_a_swarm_apps_old_images_on_this_host(
        make_app, swarm_registry, services, docker_client):
    repo = f"{swarm_registry.rpartition('/')[0]}/zdret{uuid.uuid4().hex[:6]}"
    app = swarm_app(make_app, repo)
    services.append(app.name)
    try:
        _push_versions(docker_client, repo, ["r1", "r2", "r3"])
        for v in ("r1", "r2", "r3"):  # retain = 5: nothing goes yet
            assert "pruned" not in app.ok("deploy", v).stderr
        digests = {v: _digest(app, v) for v in ("r1", "r2", "r3")}
        assert set(_here(docker_client, repo)) == set(digests.values())
        # Swarm keeps blue's r1 task (stopped) as the service's history
        assert _stopped_tasks(docker_client, app)

        _set_retain(app, 1)
        dry = json.loads(app.ok("prune", "--dry-run", "--json").stdout)
        assert dry["dry_run"] is True
        assert [c["versions"] for c in dry["remove"]] == [["r1"]], dry
        assert sorted(c["reason"] for c in dry["keep"]) == ["the live slot's image",
                                                             "the standby slot's image"], dry
        assert dry["containers_remove"], dry  # r1's stopped task container goes with it
        assert set(_here(docker_client, repo)) == set(digests.values())  # nothing changed
        p = app.ok("prune", "--dry-run")
        assert "would remove" in p.stdout and "r1" in p.stdout, p.stdout
        assert "1 image(s), would free" in p.stderr, p.stderr

        real = json.loads(app.ok("prune", "--json").stdout)
        assert real["remove"] == dry["remove"]
        assert set(_here(docker_client, repo)) == {digests["r2"], digests["r3"]}
        assert real["containers_remove"] == dry["containers_remove"]
        for cid in real["containers_remove"]:
            with pytest.raises(docker.errors.NotFound):
                docker_client.containers.get(cid)
        assert _live(app) == "r3"
        assert json.loads(app.ok("prune", "--dry-run", "--json").stdout)["remove"] == []

        # the post-deploy prune: r1 again (pulled again) goes live, r3 is the standby and
        # r2, no longer either, goes
        p = app.ok("deploy", "r1")
        assert "pruned 1 old image(s) (r2)" in p.stderr, p.stderr
        assert set(_here(docker_client, repo)) == {digests["r1"], digests["r3"]}
        assert _live(app) == "r1"
        st = json.loads(app.ok("status", "--json").stdout)["slots"]
        assert {s["version"] for s in st.values()} == {"r1", "r3"}
        assert all(s["tasks"] == "1/1 running" for s in st.values()), st
    finally:
        remove_services(docker_client, [app.name])  # before untag: they use the images
        untag(docker_client, repo)

