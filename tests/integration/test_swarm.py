"""app.backend = "swarm" on a real single-node swarm, images pulled from a local registry.

This machine's kernel has no IPVS, so Swarm's routing mesh (ingress publishing) cannot
balance here (dockerd logs "ipvs is not enabled in your kernel"): these tests publish in host
mode, where each node runs one task of a slot on the slot port. The ingress test with
replicas = 3 runs where the kernel has IPVS.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from benchmarks.harness import push, run_registry, untag
from tests.conftest import IMAGE_REPO, TEST_PREFIX, require
from tests.integration.test_daemon import daemon_factory, history, live_in_file, wait_for
from tests.traffic import RequestLoop

__all__ = ["daemon_factory"]  # the fixture, shared

HEALTHCHECK = '["/bin/busybox", "wget", "-q", "-O", "/dev/null", ' \
              '"http://127.0.0.1:8080/cgi-bin/health"]'


def ipvs_available() -> bool:
    return Path("/proc/net/ip_vs").exists()


@pytest.fixture(scope="module")
def swarm_registry(swarm, docker_client, images, tmp_path_factory):
    """A registry holding zdtest:v1, v2 and crash; the swarm's node pulls from it."""
    require(shutil.which("docker-registry") is not None,
            "docker-registry (apt-get install docker-registry)")
    with run_registry(tmp_path_factory.mktemp("registry")) as addr:
        repo = f"{addr}/zdswarm"
        for tag in ("v1", "v2", "crash"):
            push(docker_client, f"{IMAGE_REPO}:{tag}", repo, tag)
        yield repo
        untag(docker_client, repo)


def swarm_app(make_app, repo: str, *, replicas: int = 1, mode: str = "host",
              extra: str = ""):
    source = f'backend = "swarm"\n\n[source]\nimage = "{repo}"\npull = "always"'
    return make_app(source=source, extra=f"""
[swarm]
replicas = {replicas}
publish_mode = "{mode}"
healthcheck = {HEALTHCHECK}
restart_delay = 0.5
{extra}""")


@pytest.fixture
def services(docker_client):
    """Removes every service of the test's apps, also when the test failed."""
    apps: list[str] = []
    yield apps
    for name in apps:
        for s in docker_client.services.list(filters={"label": f"zdagent.app={name}"}):
            s.remove()


def watched_swarm_app(make_app, repo: str, services, daemon_factory, docker_client, **kw):
    """v1 then v2 live under a fast watchdog; Swarm waits 30 s before replacing a task, so a
    killed task stays down long enough for K = 3 failed rounds. Returns (app, daemon,
    the live service)."""
    app = swarm_app(make_app, repo, **kw)
    app.config.write_text(app.config.read_text().replace("restart_delay = 0.5",
                                                         "restart_delay = 30"))
    services.append(app.name)
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    wait_for(lambda: d.status()["apps"][app.name]["status"] == "healthy", 30, "healthy")
    return app, d, docker_client.services.get(f"{app.name}-green")


def kill_tasks(docker_client, svc, n: int) -> None:
    """SIGKILL the containers of ``n`` running tasks of ``svc``."""
    for task in svc.tasks(filters={"desired-state": "running"})[:n]:
        docker_client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"]).kill()


def slot_status(app, slot: str) -> dict:
    return json.loads(app.ok("status", "--json").stdout)["slots"][slot]


def test_deploy_rollback_and_a_crashing_release_on_swarm_services(
        make_app, swarm_registry, services, docker_client, tmp_path):
    app = swarm_app(make_app, swarm_registry)
    services.append(app.name)
    assert "published on every interface" in app.ok("config", "check").stderr
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    assert app.served_version() == "v2"
    green = docker_client.services.get(f"{app.name}-green")
    image = green.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    assert image.startswith(f"{swarm_registry}:v2@sha256:")  # pinned: nodes pull exactly it
    st = slot_status(app, "green")
    assert st["tasks"] == "1/1 running" and st["health"] == "healthy", st
    assert slot_status(app, "blue")["tasks"] == "1/1 running"  # the warm standby
    assert "running (1/1 running)" in app.ok("status").stdout

    p = app.cli("deploy", "crash")
    assert p.returncode == 1, p.stderr
    assert "task" in p.stderr and "failed" in p.stderr, p.stderr
    assert app.served_version() == "v2"  # the live service never noticed

    app.ok("rollback", "--to", "v1")
    assert app.served_version() == "v1"
    app.ok("rollback")
    assert app.served_version() == "v2"
    kinds = [(h["kind"], h["outcome"]) for h in json.loads(app.ok("history", "--json").stdout)]
    assert kinds[:3] == [("rollback", "succeeded"), ("rollback", "succeeded"),
                         ("deploy", "failed")], kinds

    apps = tmp_path / "apps"  # doctor: this node is a manager; the slot ports are exposed
    apps.mkdir()
    shutil.copy(app.config, apps / f"{app.name}.toml")
    p = app.cli("doctor", "--json", "--config-dir", str(apps))
    checks = {r["check"]: r for r in json.loads(p.stdout)}
    assert checks[f"swarm:{app.name}"]["status"] == "ok", checks[f"swarm:{app.name}"]
    exposure = checks[f"swarm:{app.name}/exposure"]
    assert exposure["status"] == "warn" and "every interface" in exposure["message"], exposure
    assert "--ctorigdstport" in exposure["hint"]
    assert str(app.blue_port) in exposure["hint"] and str(app.green_port) in exposure["hint"]
    assert f"swarm:{app.name}/mesh" not in checks  # host mode needs no IPVS


def test_a_deploy_refused_before_the_standby_changed_keeps_the_standby(
        make_app, swarm_registry, services, docker_client):
    """A missing Docker secret fails the deploy before the standby service's spec changes:
    the standby (the previous version) stays, so a rollback still has somewhere to go."""
    app = swarm_app(make_app, swarm_registry)
    services.append(app.name)
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    app.config.write_text(app.config.read_text().replace(
        "restart_delay = 0.5", f'restart_delay = 0.5\nsecrets = ["{TEST_PREFIX}absent"]'))
    p = app.cli("deploy", "crash")
    assert p.returncode == 1 and f"the Docker secret {TEST_PREFIX}absent" in p.stderr, p.stderr
    blue = slot_status(app, "blue")
    assert (blue["version"], blue["tasks"]) == ("v1", "1/1 running"), blue
    app.ok("rollback")
    assert app.served_version() == "v1"


def test_after_switch_stop_scales_the_old_service_to_zero_and_rollback_brings_it_back(
        make_app, swarm_registry, services, docker_client):
    """Also: a Docker secret reaches the tasks as a file, the limits reach the spec."""
    app = swarm_app(make_app, swarm_registry, extra=f'secrets = ["{TEST_PREFIX}db"]')
    text = app.config.read_text().replace("drain_seconds = 5",
                                          'drain_seconds = 5\nafter_switch = "stop"')
    app.config.write_text(text.replace("stop_timeout = 2", 'stop_timeout = 2\nmemory = "64m"'))
    services.append(app.name)
    secret = docker_client.secrets.create(name=f"{TEST_PREFIX}db", data=b"s3cret")
    try:
        app.ok("deploy", "v1")
        app.ok("deploy", "v2")
        blue = slot_status(app, "blue")
        assert (blue["state"], blue["tasks"]) == ("exited", "0/0 running"), blue
        app.ok("rollback")  # scales blue back up, waits for its task, then switches
        assert app.served_version() == "v1"
        assert slot_status(app, "blue")["tasks"] == "1/1 running"
        assert slot_status(app, "green")["tasks"] == "0/0 running"
        svc = docker_client.services.get(f"{app.name}-blue")
        spec = svc.attrs["Spec"]["TaskTemplate"]
        assert spec["Resources"]["Limits"]["MemoryBytes"] == 64 << 20
        (task,) = svc.tasks(filters={"desired-state": "running"})
        c = docker_client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        out = c.exec_run(["/bin/busybox", "cat", f"/run/secrets/{TEST_PREFIX}db"]).output
        assert out == b"s3cret"
    finally:
        for s in docker_client.services.list(filters={"label": f"zdagent.app={app.name}"}):
            s.remove()  # a secret in use cannot be removed
        secret.remove()


def test_a_killed_live_task_is_replaced_and_no_request_fails(make_app, swarm_registry,
                                                            services, docker_client):
    app = swarm_app(make_app, swarm_registry)
    services.append(app.name)
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    svc = docker_client.services.get(f"{app.name}-green")
    (task,) = svc.tasks(filters={"desired-state": "running"})
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=60) as loop:
        wait_for(lambda: loop.total > 20, 20, "load before the kill")
        docker_client.containers.get(cid).kill()

        def replaced() -> bool:
            running = svc.tasks(filters={"desired-state": "running"})
            return any(t["Status"]["State"] == "running" and
                       t["Status"]["ContainerStatus"]["ContainerID"] != cid for t in running)

        wait_for(replaced, 30, "Swarm to replace the killed task")
        # Nginx sends to the new task once the failed server's fail_timeout is over.
        wait_for(lambda: app.served_version() == "v2", 30, "the live service to serve again")
    assert loop.failures == [], loop.failures[:5]
    assert loop.versions["v1"] > 0  # Nginx's backup (the standby service) covered the gap
    assert live_in_file(app) == "green"


def test_watchdog_reverts_when_the_live_service_cannot_keep_min_healthy_tasks(
        make_app, swarm_registry, services, docker_client, daemon_factory):
    # replicas 1, min_healthy 1. With one task per node the direct probe sees it down as
    # early as the task count does; the count alone decides with several tasks behind the
    # mesh (the ingress test below).
    app, d, svc = watched_swarm_app(
        make_app, swarm_registry, services, daemon_factory, docker_client,
        extra="min_healthy = 1\n[watchdog]\ninterval = 0.3\nfailures = 3\ncooldown = 60\n")
    t0 = time.monotonic()
    kill_tasks(docker_client, svc, 1)
    wait_for(lambda: any(h["kind"] == "auto-revert" and h["outcome"] == "succeeded"
                         for h in history(app)), 30, "the revert")
    took = time.monotonic() - t0
    assert live_in_file(app) == "blue" and app.served_version() == "v1"
    w = d.status()["apps"][app.name]
    assert w["status"] == "reverted" and "green" in w["last_reason"], w
    assert took < 15, took


@pytest.mark.skipif(not ipvs_available(),
                    reason="Swarm's routing mesh needs IPVS in the kernel (no /proc/net/ip_vs "
                           "here; dockerd: 'ipvs is not enabled in your kernel')")
def test_three_replicas_through_the_routing_mesh(make_app, swarm_registry, services,
                                                  docker_client):
    app = swarm_app(make_app, swarm_registry, replicas=3, mode="ingress")
    services.append(app.name)
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    assert slot_status(app, "green")["tasks"] == "3/3 running"
    svc = docker_client.services.get(f"{app.name}-green")
    task = svc.tasks(filters={"desired-state": "running"})[0]
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=60) as loop:
        wait_for(lambda: loop.total > 20, 20, "load before the kill")
        docker_client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"]).kill()
        wait_for(lambda: slot_status(app, "green")["tasks"] == "3/3 running", 30, "3/3")
    assert loop.failures == [], loop.failures[:5]
    app.ok("rollback")
    assert app.served_version() == "v1"


@pytest.mark.skipif(not ipvs_available(), reason="the routing mesh needs IPVS (see above)")
def test_watchdog_reverts_when_three_replicas_fall_below_min_healthy(
        make_app, swarm_registry, services, docker_client, daemon_factory):
    """Two of three tasks killed: the mesh still answers from the third, only the task
    count sees the live service below min_healthy = 3."""
    app, d, svc = watched_swarm_app(
        make_app, swarm_registry, services, daemon_factory, docker_client, replicas=3,
        mode="ingress", extra="min_healthy = 3\n[watchdog]\ninterval = 0.3\nfailures = 3\n")
    kill_tasks(docker_client, svc, 2)
    wait_for(lambda: live_in_file(app) == "blue", 30, "the revert")
    w = d.status()["apps"][app.name]
    assert "1/3 tasks running (min_healthy 3)" in w["last_reason"], w


def test_the_zero_downtime_benchmark_swarm_mode(swarm, docker_client, tmp_path):
    """CI-sized `python -m benchmarks.zero_downtime --modes swarm`: the service backend
    under six clients loses no close or browser-like GET."""
    require(shutil.which("docker-registry") is not None,
            "docker-registry (apt-get install docker-registry)")
    from benchmarks import zero_downtime as bench

    bench.build_images()
    res = bench.run_mode("swarm", tmp_path, bench.schedule(deploys=2, rollbacks=1), rate=40,
                         gap=0.5, app=f"{TEST_PREFIX}zd-swarm")
    assert res["deploys"] == 2 and res["rollbacks"] == 1
    for key in ("close/GET", "close/POST", "retry/GET"):
        assert res["clients"][key]["failed"] == 0, (key, res["clients"][key])
        assert res["clients"][key]["requests"] > 50
    assert res["flip_windows"]["ended_on_new"] == res["flip_windows"]["total"] == 6 * 3
    assert res["post_replayed"] == 0
