"""Traffic analysis on real Docker + Nginx + daemon: a release whose health is fine but whose
pages fail is reverted by its traffic, with the figures in history; a good release under the
same load (no errors, or 1 % background errors on both versions) is kept. The access log is
followed through a rotation (rename + `nginx -s reopen`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

import pytest

from benchmarks.harness import build_image
from tests.conftest import TEST_PREFIX, make_context
from tests.integration import test_daemon
from tests.integration.test_daemon import FAST_WATCHDOG, history, live_in_file, wait_for
from tests.traffic import RequestLoop

daemon_factory = test_daemon.daemon_factory  # the fixture, shared

FAST_ANALYSIS = """
[analysis]
window = 6
interval = 0.5
failures = 2
min_requests = 20
cooldown = 60
"""


@pytest.fixture(scope="module")
def release_images(docker_client, tmp_path_factory):
    """v1, v2 (good) and bad (health 200, 20 % of pages answer 500), removed afterwards."""
    repo = f"{TEST_PREFIX.rstrip('-')}rel"
    ctx = make_context(tmp_path_factory.mktemp("relctx") / "app")
    tags = {"v1": "0", "v2": "0", "bad": "20"}
    for tag, pct in tags.items():
        build_image(docker_client, ctx, f"{repo}:{tag}", ZDAGENT_VERSION=tag, MODE="ok",
                    ERROR_PERCENT=pct)
    yield f'[source]\nimage = "{repo}"\npull = "never"'
    for tag in tags:
        with contextlib.suppress(Exception):
            docker_client.images.remove(f"{repo}:{tag}", force=True)


def traffic(app, d) -> dict:
    return d.status()["apps"][app.name]["traffic"]


def analysis(app, d) -> dict | None:
    return traffic(app, d)["analysis"]


def test_bad_release_is_reverted_by_its_traffic(make_app, daemon_factory, release_images):
    app = make_app(source=release_images, extra=FAST_WATCHDOG + FAST_ANALYSIS)
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=90, counter=True) as load:
        wait_for(lambda: traffic(app, d)["slots"].get("blue", {}).get("requests", 0) >= 20,
                 30, "blue's traffic in the figures (the baseline)")
        app.ok("deploy", "bad")  # its health passes: the deploy itself succeeds
        row = wait_for(lambda: next((h for h in history(app) if h["kind"] == "auto-revert"
                                     and h["outcome"] == "succeeded"), None), 40,
                       "the analysis revert")
    assert row["reason"].startswith("analysis: 5xx "), row
    assert "> 5%" in row["reason"] and "green since the switch: " in row["reason"], row
    assert "previous blue: " in row["reason"], row
    assert live_in_file(app) == "blue" and app.served_version() == "v1"
    # The history row is written inside the revert; the daemon's analysis says "reverted"
    # once the revert has returned to it: wait for that state, not for luck.
    def reverted() -> dict | None:
        a = analysis(app, d)
        return a if a["verdict"] == "reverted" else None

    a = wait_for(reverted, 10, "the analysis to record its revert")
    assert a["verdict"] == "reverted" and a["slot"] == "green", a
    assert a["figures"]["errors"] >= 4 and a["figures"]["error_rate"] > 0.05, a
    failed = [f for f in load.failures if f.startswith("HTTP 500")]
    assert failed and len(failed) == len(load.failures), load.failures[:5]
    # status and status --json show the figures per slot
    data = json.loads(app.ok("status", "--json").stdout)
    assert data["traffic"]["slots"]["green"]["errors"] >= 4, data["traffic"]
    text = app.ok("status").stdout
    assert "traffic (last 60s" in text and "analysis of green" in text, text


@pytest.mark.parametrize("background", [0, 1])
def test_good_release_under_the_same_load_is_kept(make_app, daemon_factory, release_images,
                                                  background):
    env = f'\n[container.env]\nERROR_PERCENT = "{background}"\n' if background else ""
    app = make_app(source=release_images, extra=FAST_WATCHDOG + FAST_ANALYSIS + env)
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=90, counter=True) as load:
        wait_for(lambda: traffic(app, d)["slots"].get("blue", {}).get("requests", 0) >= 20,
                 30, "blue's traffic in the figures (the baseline)")
        app.ok("deploy", "v2")
        a = wait_for(lambda: (a := analysis(app, d)) and a["verdict"] != "watching" and a,
                     60, "the end of the analysis window")
    assert a["verdict"] == "passed", a
    assert a["figures"]["requests"] >= 20, a  # judged on real traffic, not on silence
    assert not [h for h in history(app) if h["kind"] == "auto-revert"]
    assert live_in_file(app) == "green" and app.served_version() == "v2"
    if background:  # the background errors happened and were seen, below the threshold
        assert 0 < a["figures"]["error_rate"] < 0.05, a
        assert all(f == "HTTP 503" for f in load.failures), load.failures[:5]
    else:
        assert a["figures"]["errors"] == 0 and load.failures == [], a


def test_figures_survive_log_rotation(make_app, daemon_factory, release_images):
    app = make_app(source=release_images, extra=FAST_ANALYSIS)
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    log = app.nginx.prefix / "zdagent" / f"{app.name}.access.json"

    def blue() -> int:
        return traffic(app, d)["slots"].get("blue", {}).get("requests", 0)

    for _ in range(30):
        app.get()
    wait_for(lambda: blue() >= 30, 20, "30 requests counted")
    before = blue()
    os.rename(log, log.with_name(log.name + ".1"))  # logrotate's way: rename, then reopen
    subprocess.run(app.nginx.argv("-s", "reopen"), check=True, capture_output=True, timeout=30)
    wait_for(log.exists, 20, "Nginx reopened its access log")
    for _ in range(30):
        app.get()
    wait_for(lambda: blue() >= before + 30, 20, "the requests after the rotation counted")
    t = traffic(app, d)
    assert t["rotations"] >= 1 and t["bad_lines"] == 0 and t["following"], t


def test_watchdog_probes_are_not_the_apps_traffic(make_app, daemon_factory, release_images):
    """The watchdog's probe through Nginx (every 0.3 s here) is in the access log; it must not
    count as the live slot's requests, or a quiet site is judged on its health endpoint."""
    app = make_app(source=release_images, extra=FAST_WATCHDOG + FAST_ANALYSIS)
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    wait_for(lambda: traffic(app, d).get("own_requests", 0) >= 5, 30,
             "the watchdog's probes seen in the access log")
    assert traffic(app, d)["slots"].get("blue", {}).get("requests", 0) == 0, traffic(app, d)
    for _ in range(5):
        app.get()
    wait_for(lambda: traffic(app, d)["slots"].get("blue", {}).get("requests", 0) >= 5, 20,
             "the app's own requests counted")
    assert traffic(app, d)["slots"]["blue"]["requests"] == 5, traffic(app, d)


def test_a_failed_try_rescued_by_the_backup_counts_against_the_live_slot(
        make_app, release_images, docker_client):
    """Real Nginx: the live slot (green) gone, the standby (Nginx's backup) answers. The
    access log's "ua" lists both tries; the figures count green's failure, not only blue's
    success."""
    from zdagent.traffic.follow import LogFollower, feed
    from zdagent.traffic.windows import TrafficWindows

    app = make_app(source=release_images)
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    docker_client.containers.get(f"{app.name}-green").stop(timeout=1)
    for _ in range(3):
        assert app.get().status_code == 200  # rescued by blue
    log = app.nginx.prefix / "zdagent" / f"{app.name}.access.json"
    follower = LogFollower(log, from_start=True)
    w = TrafficWindows()
    lines = follower.read()
    follower.close()
    assert any(b", 127.0.0.1:" in x for x in lines), lines[-3:]
    feed(w, lines, {app.blue_port: "blue", app.green_port: "green"})
    green = w.figures("green", time.time())
    assert green.errors >= 1, (green, lines[-3:])
