"""The watchdog tells the truth: Nginx down is not the app's fault, occasional app errors are
no reason to revert (nor to send traffic to the standby)."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from benchmarks.harness import build_image
from tests.conftest import TEST_PREFIX, make_context
from tests.integration import test_daemon
from tests.integration.test_daemon import (
    FAST_WATCHDOG,
    history,
    live_in_file,
    wait_for,
    watched_app,
)

daemon_factory = test_daemon.daemon_factory  # the fixture, shared


def _watch(d, app) -> dict:
    return d.status()["apps"][app.name]


def _checks_pass(d, app, n: int, status: str, timeout: float) -> dict:
    """Wait until the watchdog did ``n`` more probe rounds, all seen in ``status``."""
    start = _watch(d, app)["checks"]

    def done():
        w = _watch(d, app)
        assert w["status"] == status, w
        return w if w["checks"] >= start + n else None

    return wait_for(done, timeout, f"{n} probe rounds in state {status}")


def test_nginx_down_is_its_own_state_and_touches_nothing(make_app, daemon_factory,
                                                         docker_client):
    app, d = watched_app(make_app, daemon_factory)
    wait_for(lambda: _watch(d, app)["status"] == "healthy", 20, "healthy")
    before = [h["id"] for h in history(app)]
    green = docker_client.containers.get(f"{app.name}-green")
    started = green.attrs["State"]["StartedAt"]
    app.nginx.stop()
    wait_for(lambda: _watch(d, app)["status"] == "nginx-down", 20, "nginx-down")
    # Long enough for K = 3 failures twice over: the old watchdog had reverted by now.
    w = _checks_pass(d, app, 8, "nginx-down", 30)
    assert "Nginx is not running" in w["last_reason"], w
    assert "green answers directly" in w["last_reason"], w
    assert w["reverts"] == 0 and w["restarts"] == 0
    assert [h["id"] for h in history(app)] == before  # no revert, no restart recorded
    green.reload()
    assert green.attrs["State"]["StartedAt"] == started and green.status == "running"
    app.nginx.start()
    wait_for(lambda: _watch(d, app)["status"] == "healthy", 20, "healthy again")
    assert _watch(d, app)["last_reason"] is None
    assert live_in_file(app) == "green" and app.served_version() == "v2"
    assert [h["id"] for h in history(app)] == before
    assert "Nginx is back" in d.log.read_text()


@pytest.fixture(scope="module")
def error_images(docker_client, tmp_path_factory):
    """This run's own v1/v2 of the sample app (the error-percent mode), removed afterwards."""
    repo = f"{TEST_PREFIX.rstrip('-')}err"
    ctx = make_context(tmp_path_factory.mktemp("errctx") / "app")
    for v in ("v1", "v2"):
        build_image(docker_client, ctx, f"{repo}:{v}", ZDAGENT_VERSION=v, MODE="ok")
    yield repo
    for v in ("v1", "v2"):
        with contextlib.suppress(Exception):
            docker_client.images.remove(f"{repo}:{v}", force=True)


def test_occasional_503s_from_the_app_go_to_the_client_not_to_the_standby(
        make_app, daemon_factory, docker_client, error_images):
    """5 % of requests answer 503 for a bounded period: no revert, ~0 traffic on the standby."""
    # Traffic analysis would rightly judge 5 % of 503s right after a deploy a bad release
    # (tests/integration/test_analysis.py); this test is about the watchdog alone.
    app = make_app(source=f'[source]\nimage = "{error_images}"\npull = "never"',
                   extra=FAST_WATCHDOG + "\n[analysis]\nenabled = false\n")
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    wait_for(lambda: _watch(d, app)["status"] == "healthy", 20, "healthy")
    before = [h["id"] for h in history(app)]
    docker_client.containers.get(f"{app.name}-green").exec_run(
        ["/bin/busybox", "sh", "-c", "echo 5 > /tmp/error_percent"])
    standby = f"127.0.0.1:{app.blue_port}"
    live = f"127.0.0.1:{app.green_port}"
    by: dict[str, int] = {}
    statuses: dict[int, int] = {}
    checks0 = _watch(d, app)["checks"]

    def watched_enough() -> bool:  # 3 times the watchdog's K failures in a row, at least
        return _watch(d, app)["checks"] - checks0 >= 3 * 3

    # Traffic goes on until the watchdog has probed 9 times meanwhile (state, not a duration),
    # bounded in requests and time.
    deadline, total = time.monotonic() + 60, 0
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline and total < 6000:
            total += 1
            r = client.get(app.url + "/cgi-bin/version")
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            upstream = r.headers.get("X-Zdagent-Upstream", "")
            by[upstream] = by.get(upstream, 0) + 1
            if total % 50 == 0 and total >= 200 and watched_enough():
                break
    w = _watch(d, app)
    assert total >= 200, f"only {total} requests in 60 s"
    assert statuses.get(503, 0) > 0, statuses  # the app's errors did happen ...
    assert set(statuses) <= {200, 503}, statuses
    assert by.get(standby, 0) == 0 and set(by) == {live}, by  # ... and reached the client
    assert w["checks"] - checks0 >= 3 * 3, w  # the watchdog kept probing meanwhile
    assert w["status"] == "healthy" and w["reverts"] == 0, w
    assert [h["id"] for h in history(app)] == before
    assert live_in_file(app) == "green"


def test_reverting_away_from_a_dead_slot_drops_it_as_backup(make_app, daemon_factory,
                                                            docker_client):
    app, d = watched_app(make_app, daemon_factory)
    docker_client.containers.get(f"{app.name}-green").stop(timeout=1)
    wait_for(lambda: any(h["kind"] == "auto-revert" and h["outcome"] == "succeeded"
                         for h in history(app)), 30, "the revert")
    text = (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf").read_text()
    assert f"127.0.0.1:{app.blue_port} max_fails" in text
    assert f"{app.green_port}" not in text.split("upstream", 1)[1], text  # no dead backup
    rev = history(app)[0]
    assert "green was exited: not kept as the standby" in rev["reason"]
    w = _watch(d, app)
    assert w["status"] == "reverted" and "green does not answer at all" in w["last_reason"]
    st = app.ok("status", "--json").stdout
    assert "no warm standby: green is exited" in st
    assert "stays up as the warm standby" not in d.log.read_text()
    assert "green is exited: it is not kept" in d.log.read_text()



def test_engine_rechecks_the_watchdogs_decision_under_the_lock(make_app, docker_client):
    """A decision made on what was live before a deploy finished is refused, not applied."""
    from zdagent.config import load_config
    from zdagent.deploy import Engine
    from zdagent.errors import DeployFailed, EnvironmentProblem

    app = make_app()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")  # green live: a revert decided while blue was live is stale
    before = [h["id"] for h in history(app)]
    green = docker_client.containers.get(f"{app.name}-green")
    started = green.attrs["State"]["StartedAt"]
    with Engine(load_config(app.config), lambda e: None) as engine:
        with pytest.raises(DeployFailed, match="the live slot is now green, not blue"):
            engine.auto_revert("blue failed", expected_live="blue")
        with pytest.raises(DeployFailed, match="the live slot is now green, not blue"):
            engine.restart_live("blue degraded", expected_live="blue")
        docker_client.containers.get(f"{app.name}-blue").exec_run(
            ["/bin/busybox", "touch", "/tmp/unhealthy"])
        with pytest.raises(DeployFailed, match="standby blue is not healthy"):
            engine.auto_revert("green failed", expected_live="green")
        app.nginx.stop()
        with pytest.raises(EnvironmentProblem, match="nginx is not running"):
            engine.restart_live("green degraded", expected_live="green")
    assert live_in_file(app) == "green"
    rows = history(app)
    assert [h["id"] for h in rows[1:]] == before  # only the refused revert's own record
    assert rows[0]["kind"] == "auto-revert" and rows[0]["outcome"] == "failed"
    green.reload()
    assert green.attrs["State"]["StartedAt"] == started
