"""app.backend = "swarm" on a real single-node swarm, images pulled from a local registry.

This machine's kernel has no IPVS, so Swarm's routing mesh (ingress publishing) cannot
balance here (dockerd logs "ipvs is not enabled in your kernel"): these tests publish in host
mode, where each node runs one task of a slot on the slot port. The ingress test with
replicas = 3 runs where the kernel has IPVS.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from benchmarks.harness import NJS_MODULE, push, run_registry, untag
from benchmarks.loadgen import NO_RESPONSE, Load
from tests.conftest import IMAGE_REPO, TEST_PREFIX, require
from tests.integration.test_canary import at_step, finish, start_canary
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
              extra: str = "", nginx: str = ""):
    source = f'backend = "swarm"\n\n[source]\nimage = "{repo}"\npull = "always"'
    return make_app(source=source, extra=f"""{nginx}
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
    remove_services(docker_client, apps)


def remove_services(docker_client, apps: list[str]) -> None:
    """Remove the apps' services and wait until Swarm removed their tasks' containers."""
    for name in apps:
        for s in docker_client.services.list(filters={"label": f"zdagent.app={name}"}):
            s.remove()
    # Swarm removes the tasks' containers by itself: wait, so the session's leftover check
    # does not race it (a container being removed twice is Docker's 409).
    wait_for(lambda: not [c for name in apps for c in docker_client.containers.list(
        all=True, sparse=True, filters={"label": f"zdagent.app={name}"})], 60,
        "the services' containers to go")


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


def test_ingress_without_ipvs_fails_fast_and_says_why(make_app, swarm_registry, services,
                                                      tmp_path):
    """A kernel without IPVS cannot run the routing mesh: doctor fails the app, and the
    deploy stops as soon as the service converged (not at the probe deadline) with the
    cause and the way out, and nothing is routed."""
    from zdagent.services import no_ipvs

    if not no_ipvs():
        pytest.skip("this kernel has IPVS (or an ip_vs module): the routing mesh can work")
    app = swarm_app(make_app, swarm_registry, mode="ingress")
    apps = tmp_path / "apps"
    apps.mkdir()
    shutil.copy(app.config, apps / f"{app.name}.toml")
    checks = {r["check"]: r for r in json.loads(
        app.cli("doctor", "--json", "--config-dir", str(apps)).stdout)}
    mesh = checks[f"swarm:{app.name}/mesh"]
    assert mesh["status"] == "fail" and "task-ports" in json.dumps(mesh), mesh
    text = app.config.read_text()
    assert "startup_deadline = 15\n" in text
    app.config.write_text(text.replace("startup_deadline = 15\n", "startup_deadline = 600\n"))
    services.append(app.name)
    began = time.monotonic()
    r = app.cli("deploy", "v1", timeout=700)
    took = time.monotonic() - began
    assert r.returncode != 0 and "this kernel has no IPVS (/proc/net/ip_vs)" in r.stderr, r.stderr
    assert 'publish_mode = "task-ports"' in r.stderr and "Traceback" not in r.stderr
    assert took < 300, took  # the 600 s probe deadline was not waited out
    assert history(app)[0]["outcome"] == "failed"


NO_RESPONSE_NAMES = {e.__name__ for e in NO_RESPONSE}


def host_port(docker_client, task: dict) -> int | None:
    """The IPv4 host port of a task's container (Docker 20.10 may give IPv6 another); None
    once the container stopped (its task may still say running for a moment)."""
    c = docker_client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    ports = [int(b["HostPort"]) for b in
             (c.attrs["NetworkSettings"]["Ports"] or {}).get("8080/tcp") or []
             if b["HostIp"] == "0.0.0.0"]
    return ports[0] if ports else None


def task_ports(docker_client, service: str) -> list[int]:
    """The IPv4 host ports of the service's running tasks."""
    svc = docker_client.services.get(service)
    ports = [host_port(docker_client, t) for t in svc.tasks(filters={"desired-state": "running"})
             if t["Status"]["State"] == "running"]
    return sorted(p for p in ports if p is not None)


def upstream_text(app) -> str:
    return (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf").read_text()


def servers(text: str) -> tuple[list[int], list[int]]:
    """(primary, backup) server ports of a reload-mode upstream file."""
    found = re.findall(r"server 127\.0\.0\.1:(\d+)([^;]*);", text)
    return (sorted(int(p) for p, flags in found if "backup" not in flags),
            sorted(int(p) for p, flags in found if "backup" in flags))


def test_three_replicas_on_task_ports_deploy_rollback_and_status(
        make_app, swarm_registry, services, docker_client):
    """publish_mode = "task-ports" (no routing mesh, no IPVS): three tasks per slot, each on
    its own host port, every one of them a server of the slot's upstream (reload mode)."""
    app = swarm_app(make_app, swarm_registry, replicas=3, mode="task-ports")
    services.append(app.name)
    assert "task-ports" in app.ok("config", "check").stderr
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    green, blue = slot_status(app, "green"), slot_status(app, "blue")
    assert green["tasks"] == blue["tasks"] == "3/3 running", (green, blue)
    assert green["health"] == "healthy", green
    ports = task_ports(docker_client, f"{app.name}-green")
    assert len(ports) == 3 and green["task_ports"] == ports, (ports, green)
    assert app.green_port not in ports  # the slot port is not published
    text = upstream_text(app)
    assert "# zdagent: live=green standby=blue" in text
    assert servers(text) == (ports, blue["task_ports"]), text
    spec = docker_client.services.get(f"{app.name}-green").attrs["Spec"]
    (published,) = spec["EndpointSpec"]["Ports"]
    assert published["PublishMode"] == "host" and not published.get("PublishedPort")
    node = docker_client.info()["Swarm"]["NodeID"]
    assert f"node.id == {node}" in spec["TaskTemplate"]["Placement"]["Constraints"]

    seen: set[str] = set()  # Nginx balances fresh connections over the three tasks

    def answered_by_all() -> bool:
        r = app.get()
        assert r.status_code == 200 and r.text.startswith("v2"), r.text
        seen.add(r.headers["X-Zdagent-Upstream"])
        return len(seen) == 3

    wait_for(answered_by_all, 30, "each of the three tasks to answer through Nginx")
    assert seen == {f"127.0.0.1:{p}" for p in ports}
    assert f"127.0.0.1:{','.join(map(str, ports))}" in app.ok("status").stdout

    app.ok("rollback")
    assert app.served_version() == "v1"
    assert "# zdagent: live=blue standby=green" in upstream_text(app)
    assert servers(upstream_text(app))[0] == task_ports(docker_client, f"{app.name}-blue")


def test_a_killed_task_of_three_loses_no_request_and_its_replacement_is_routed(
        make_app, swarm_registry, services, docker_client, daemon_factory, tmp_path):
    """njs mode, under GET and POST load (a fresh connection per request, and keep-alive
    retrying an idempotent request on a reused connection closed without a response): one
    live task SIGKILLed, Swarm starts a replacement on a new port, and the daemon renders it
    into the upstream in place of the dead port: one reload (nginx -t, reload) for both."""
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    app = swarm_app(make_app, swarm_registry, replicas=3, mode="task-ports",
                    nginx='switch_mode = "njs"\n',
                    extra="min_healthy = 2\n[watchdog]\ninterval = 0.3\nfailures = 3\n")
    services.append(app.name)
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    wait_for(lambda: d.status()["apps"][app.name]["status"] == "healthy", 30, "healthy")
    svc = docker_client.services.get(f"{app.name}-green")
    before = task_ports(docker_client, svc.name)
    assert all(f"127.0.0.1:{p} " in upstream_text(app) for p in before)
    victim = svc.tasks(filters={"desired-state": "running"})[0]
    dead = host_port(docker_client, victim)
    with Load(app.port, "/cgi-bin/version", 10, tmp_path, max_seconds=120,
              kinds=("close", "retry")) as load, \
            RequestLoop(app.url + "/cgi-bin/version", max_seconds=120) as loop:
        wait_for(lambda: loop.total > 10, 30, "load before the kill")
        container = docker_client.containers.get(
            victim["Status"]["ContainerStatus"]["ContainerID"])
        killed_at = time.time()
        container.kill()

        def replaced() -> list[int]:
            now = task_ports(docker_client, svc.name)
            return [p for p in now if p not in before] if len(now) == 3 else []

        (new,) = wait_for(replaced, 60, "Swarm to replace the killed task")
        wait_for(lambda: f"127.0.0.1:{new} " in upstream_text(app) and
                 f"127.0.0.1:{dead} " not in upstream_text(app), 30,
                 "the daemon to render the replacement's port into the upstream")
        dropped_at = time.time()
        wait_for(lambda: app.get().headers["X-Zdagent-Upstream"] == f"127.0.0.1:{new}", 30,
                 "the replacement to answer through Nginx")
        routed_at, base = time.time(), loop.total
        wait_for(lambda: loop.total > base + 20, 30, "load after the reroute")
    records = load.records()
    # GETs: none lost, fresh connections or keep-alive (a browser retries a GET on a reused
    # connection closed without a response). POSTs are never replayed, so two losses are
    # physics, not routing: a POST the killed task took as it died (answered 502 by it alone,
    # as it died), and a keep-alive POST meeting the re-render's reload closing its idle
    # connection (no response at all; the zero-downtime benchmark counts keep-alive POSTs the
    # same way).
    assert [r for r in records if not r.ok and r.method == "GET"] == []
    lost = [r for r in records if not r.ok and r.method == "POST"]
    in_flight = [r for r in lost if killed_at - 1 < r.t < dropped_at and r.status == 502
                 and r.upstream == f"127.0.0.1:{dead}"]
    closed = [r for r in lost if r.kind == "retry" and r.status == 0 and
              r.error in NO_RESPONSE_NAMES]
    print(f"killed task of three: {len(records)} load requests, {len(loop.failures)} of "
          f"{loop.total} loop GETs failed; POSTs lost: {len(in_flight)} in flight on the "
          f"killed task, {len(closed)} keep-alive closed by the reload")
    assert len(in_flight) + len(closed) == len(lost), lost
    # Nginx passes a POST on only when it could not be sent: the first try was the dead task.
    passed_on = [r for r in records if r.method == "POST" and "," in r.upstream]
    assert all(r.upstream.split(", ")[0] == f"127.0.0.1:{dead}" for r in passed_on), passed_on
    assert loop.failures == [], loop.failures[:5]
    for kind in ("close", "retry"):
        for method in ("GET", "POST"):
            mine = [r for r in records if (r.kind, r.method) == (kind, method)]
            assert any(r.t < killed_at for r in mine) and any(r.t > routed_at for r in mine), \
                (kind, method, len(mine))
    log = d.log.read_text()  # the daemon's record of its one re-render: dead port out, new in
    rerenders = [line for line in log.splitlines()
                 if "the tasks' ports changed" in line and "now routes to" in line]
    assert len(rerenders) == 1, rerenders
    assert f"127.0.0.1:{new}" in rerenders[0] and f"127.0.0.1:{dead}" not in rerenders[0]
    assert app.served_version() == "v2"
    assert d.status()["apps"][app.name]["status"] == "healthy"  # 2/3 is min_healthy: no revert


def test_task_ports_traffic_counts_per_slot_and_a_bad_canary_fails_by_it(
        make_app, swarm_registry, services, docker_client, daemon_factory):
    """task-ports, njs: requests answered by the tasks' own ports count for their slot (the
    daemon learns the ports from the upstream file), so a canary whose tasks answer 503 on
    real paths while /health stays 200 fails its first step by traffic analysis."""
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    app = swarm_app(make_app, swarm_registry, replicas=2, mode="task-ports",
                    nginx='switch_mode = "njs"\n',
                    extra="\n[canary]\nsteps = [30, 100]\nstep_seconds = 300\n"
                          "\n[analysis]\nmin_requests = 10\nmax_error_rate = 0.2\n")
    services.append(app.name)
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    for _ in range(30):
        assert app.get().status_code == 200

    def blue_requests() -> int:
        traffic = d.status()["apps"][app.name]["traffic"] or {}
        return traffic.get("slots", {}).get("blue", {}).get("requests", 0)

    wait_for(lambda: blue_requests() >= 30, 30, "blue's tasks' requests counted for blue")
    proc = start_canary(app, "v2")
    wait_for(lambda: at_step(app, 1), 120, "step 1")
    green = docker_client.services.get(f"{app.name}-green")
    for task in green.tasks(filters={"desired-state": "running"}):
        docker_client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"]) \
            .exec_run(["/bin/busybox", "sh", "-c", "echo 100 > /tmp/error_percent"])
    statuses: set[int] = set()
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        statuses.add(app.get().status_code)
    assert proc.poll() is not None, "the failing step was not cut short"
    code, err = finish(proc)
    assert code == 1 and "canary failed at step 1 (30% to green)" in err, err
    assert 503 in statuses  # the candidate's errors were real
    assert {app.served_version() for _ in range(20)} == {"v1"}
    rec = history(app)[0]
    assert rec["outcome"] == "failed" and "5xx" in rec["error"], rec


def test_watchdog_reverts_when_two_of_three_task_ports_tasks_die(
        make_app, swarm_registry, services, docker_client, daemon_factory):
    """Two of three tasks killed: Nginx still answers from the third, only the task count
    sees the live service below min_healthy = 3."""
    app, d, svc = watched_swarm_app(
        make_app, swarm_registry, services, daemon_factory, docker_client, replicas=3,
        mode="task-ports",
        extra="min_healthy = 3\n[watchdog]\ninterval = 0.3\nfailures = 3\ncooldown = 60\n")
    kill_tasks(docker_client, svc, 2)
    wait_for(lambda: any(h["kind"] == "auto-revert" and h["outcome"] == "succeeded"
                         for h in history(app)), 30, "the revert")
    assert "# zdagent: live=blue" in upstream_text(app) and app.served_version() == "v1"
    w = d.status()["apps"][app.name]
    assert w["status"] == "reverted", w
    assert "1/3 tasks running (min_healthy 3)" in w["last_reason"], w


@pytest.mark.parametrize("mode", ["swarm", "swarm-tasks"])
def test_the_zero_downtime_benchmark_swarm_mode(swarm, docker_client, tmp_path, mode):
    """CI-sized `python -m benchmarks.zero_downtime --modes swarm,swarm-tasks`: the service
    backend (one task in host mode; three on task ports with the njs switch, where each
    deploy brings new ports and so a reload) under six clients loses no close or
    browser-like request."""
    require(shutil.which("docker-registry") is not None,
            "docker-registry (apt-get install docker-registry)")
    if mode == "swarm-tasks":
        require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    from benchmarks import zero_downtime as bench

    bench.build_images()
    res = bench.run_mode(mode, tmp_path, bench.schedule(deploys=2, rollbacks=1), rate=40,
                         gap=0.5, app=f"{TEST_PREFIX}zd-{mode}")
    assert res["deploys"] == 2 and res["rollbacks"] == 1
    for key in ("close/GET", "close/POST", "retry/GET"):
        assert res["clients"][key]["failed"] == 0, (key, res["clients"][key])
        assert res["clients"][key]["requests"] > 50
    assert res["flip_windows"]["ended_on_new"] == res["flip_windows"]["total"] == 6 * 3
    assert res["post_replayed"] == 0
