"""What an operator looks at: the daemon's Prometheus metrics and its status page, after real
deploys and a real watchdog revert (the live container killed), the page in a real headless
Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import free_port
from tests.conftest import require
from tests.integration import test_daemon
from tests.integration.test_daemon import FAST_WATCHDOG, live_in_file, reverted, wait_for
from zdagent.daemon.web import STATIC, asset

daemon_factory = test_daemon.daemon_factory  # the fixture, shared
CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]


def observed_app(make_app, daemon_factory):
    """An app with a fast watchdog and a daemon serving the page and /metrics on a free port."""
    app = make_app(extra=FAST_WATCHDOG)
    url = f"http://127.0.0.1:{free_port()}"
    d = daemon_factory([app], env={"ZDAGENT_HTTP": url.removeprefix("http://")}).start()
    wait_for(lambda: _answers(url), 20, "the HTTP listener")
    return app, d, url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/status", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_after_real_deploys_a_failed_one_and_a_revert(make_app, daemon_factory,
                                                              docker_client):
    app, _d, url = observed_app(make_app, daemon_factory)
    app.ok("deploy", "v1")
    assert app.cli("deploy", "crash").returncode != 0  # fails before the switch
    app.ok("deploy", "v2")  # into the slot the failed one used: v1 stays the warm standby
    assert live_in_file(app) == "green" and app.served_version() == "v2"
    with httpx.Client(timeout=10) as client:  # real requests through Nginx, to green
        assert all(client.get(app.url + "/cgi-bin/version").status_code == 200
                   for _ in range(20))

    def counted():  # the traffic window (Nginx's access log, followed by the daemon)
        s = scrape(url)
        n = value(s, "zdagent_traffic_requests", app=app.name, slot="green")
        return s if n is not None and n >= 20 else None

    s = wait_for(counted, 30, "the 20 requests in green's traffic window")
    assert value(s, "zdagent_traffic_errors_5xx", app=app.name, slot="green") == 0
    assert (value(s, "zdagent_traffic_window_seconds", app=app.name, slot="green") or 0) > 0
    docker_client.containers.get(f"{app.name}-green").kill()
    wait_for(lambda: reverted(app), 60, "the watchdog's revert")

    def settled():  # the look at the slots is reused for a few seconds: wait for a new one
        s = scrape(url)
        return s if value(s, "zdagent_slot_running", app=app.name, slot="green") == 0 else None

    s = wait_for(settled, 30, "a scrape that saw green down")
    a = app.name
    assert value(s, "zdagent_deploys_total", app=a, kind="deploy", outcome="succeeded") == 2
    assert value(s, "zdagent_deploys_total", app=a, kind="deploy", outcome="failed") == 1
    assert value(s, "zdagent_deploys_total", app=a, kind="auto-revert",
                 outcome="succeeded") == 1
    assert value(s, "zdagent_reverts_total", app=a, reason="unreachable") == 1
    assert value(s, "zdagent_live_slot", app=a, slot="blue") == 1
    assert value(s, "zdagent_live_slot", app=a, slot="green") == 0
    assert value(s, "zdagent_slot_healthy", app=a, slot="blue") == 1
    assert value(s, "zdagent_slot_healthy", app=a, slot="green") == 0
    assert value(s, "zdagent_slot_info", app=a, slot="blue", version="v1", state="running") == 1
    assert value(s, "zdagent_watchdog_state", app=a, state="reverted") == 1
    assert value(s, "zdagent_watchdog_state", app=a, state="healthy") == 0
    # Histograms: two verified switches of deploys, one of the revert; every phase timed.
    assert value(s, "zdagent_switch_duration_seconds_count", app=a, kind="deploy") == 2
    assert value(s, "zdagent_switch_duration_seconds_count", app=a, kind="auto-revert") == 1
    assert value(s, "zdagent_deploy_phase_duration_seconds_count", app=a, kind="deploy",
                 phase="probe") == 3  # the failed deploy's probe too
    assert value(s, "zdagent_deploy_duration_seconds_count", app=a, kind="deploy",
                 outcome="succeeded") == 2
    switch_sum = value(s, "zdagent_switch_duration_seconds_sum", app=a, kind="deploy")
    assert switch_sum is not None and 0 < switch_sum < 60
    probes = value(s, "zdagent_watchdog_probe_duration_seconds_count", app=a)
    assert probes is not None and probes >= 3
    # A second scrape counts nothing twice.
    again = scrape(url)
    assert value(again, "zdagent_deploys_total", app=a, kind="deploy", outcome="succeeded") == 2
    assert value(again, "zdagent_reverts_total", app=a, reason="unreachable") == 1


def test_listener_is_read_only_and_loopback_only(make_app, daemon_factory):
    app, _d, url = observed_app(make_app, daemon_factory)
    assert f"status page: {url}/ (metrics: {url}/metrics)" in app.ok("status").stdout
    assert httpx.post(url + "/api/status", json={}, timeout=10).status_code == 405
    assert httpx.get(url + "/v1/status", timeout=10).status_code == 404
    # A page elsewhere that rebinds its name to 127.0.0.1 sends its own Host: refused.
    r = httpx.get(url + "/api/status", headers={"Host": "evil.example"}, timeout=10)
    assert r.status_code == 421
    page = httpx.get(url + "/", headers={"Host": "localhost:8080"}, timeout=10)  # ssh -L
    assert page.status_code == 200 and "static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_a_token_guards_status_and_metrics(daemon_factory, tmp_path):
    token = "zd-" + "0123456789abcdef" * 2
    (tmp_path / "token").write_text(token + "\n")
    port = free_port()
    daemon_factory([], env={"ZDAGENT_HTTP": f"127.0.0.1:{port}",
                            "ZDAGENT_HTTP_TOKEN_FILE": str(tmp_path / "token")}).start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/", timeout=5).status_code == 200, 20, "the listener")
    for path in ("/api/status", "/metrics"):
        r = httpx.get(url + path, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert httpx.get(url + path, headers={"Authorization": "Bearer nope"},
                         timeout=10).status_code == 401
        ok = httpx.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert ok.status_code == 200, path
        assert token not in ok.text
    assert httpx.get(url + "/api/status", headers={"Authorization": f"Bearer {token}"},
                     timeout=10).json()["daemon"]["http"]["token"] is True
    with sync_playwright() as pw:  # the page: the token from the URL's fragment, then gone
        browser = _browser(pw)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.locator("#conn").filter(has_text="token needed").wait_for(timeout=20000)
            page.goto(url + f"/#token={token}")
            page.locator("#conn").filter(has_text="live").wait_for(timeout=20000)
            assert token not in page.url
            page.reload()  # kept for the tab's session
            page.locator("#conn").filter(has_text="live").wait_for(timeout=20000)
        finally:
            browser.close()


def test_a_port_already_taken_is_reported_not_fatal(daemon_factory):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon_factory([], env={"ZDAGENT_HTTP": f"127.0.0.1:{port}"}).start()
        http = d.status()["daemon"]["http"]
    assert http["url"] == f"http://127.0.0.1:{port}/"
    assert "cannot listen on" in http["error"], http
    assert d.proc.poll() is None  # the daemon goes on: deploys and the watchdog matter more
    assert "status page and metrics: cannot listen" in d.log.read_text()


def test_zdagentd_refuses_a_public_address_without_a_token(tmp_path):
    p = subprocess.run([sys.executable, "-m", "zdagent.daemon", "--config-dir", str(tmp_path),
                        "--socket", str(tmp_path / "s.sock"), "--http", "0.0.0.0:9361"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2, p.stderr
    assert "without a token" in p.stderr and "hint: pass --http-token-file" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "s.sock").exists()  # nothing started


def _browser(pw):
    require(CHROMIUM.exists(), "Debian's chromium (apt-get install chromium)")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=args)


def test_status_page_in_chromium_shows_a_deploy_and_the_auto_revert(
        make_app, daemon_factory, docker_client, tmp_path):
    app, _d, url = observed_app(make_app, daemon_factory)
    app.ok("deploy", "v1")
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 430, "height": 1100})  # a phone
            page.goto(url + "/")
            card = page.locator(f'article[data-app="{app.name}"]')
            live = card.locator(".live-version")
            live.filter(has_text="v1 on blue").wait_for(timeout=20000)
            app.ok("deploy", "v2")
            live.filter(has_text="v2 on green").wait_for(timeout=20000)
            with httpx.Client(timeout=10) as client:  # real traffic: the chart draws it
                for _ in range(30):
                    client.get(app.url + "/cgi-bin/version")
            card.locator(".chart .legend").filter(has_text="green").filter(
                has_text="req/s").wait_for(timeout=30000)
            # The switch shows first; the record says succeeded once the old slot drained.
            page.locator('#timeline li[data-kind="deploy"][data-outcome="succeeded"]').filter(
                has_text="v2 blue → green").wait_for(timeout=20000)

            docker_client.containers.get(f"{app.name}-green").kill()
            killed = time.monotonic()
            revert = page.locator('#timeline li[data-kind="auto-revert"]'
                                  '[data-outcome="succeeded"]')
            revert.first.wait_for(timeout=60000)
            shown = time.monotonic() - killed
            text = revert.first.inner_text()
            assert "green → blue" in text, text
            assert "green failed 3 probes in a row" in text, text
            card.locator(".watchdog-status").filter(has_text="reverted").wait_for(timeout=10000)
            assert "green does not answer at all" in card.locator(
                ".watchdog-reason").inner_text()
            live.filter(has_text="v1 on blue").wait_for(timeout=20000)
            assert page.locator("#conn").inner_text() == "live"
            shot = tmp_path / "status-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10000
            print(f"\nstatus page: the revert showed {shown:.1f}s after the kill; "
                  f"screenshot {shot}")
            if os.environ.get("ZDAGENT_DOCS_SCREENSHOT"):  # refreshes docs/status-page.png
                shutil.copy(shot, REPO / "docs" / "status-page.png")
        finally:
            browser.close()
    assert shown < 30, f"the page showed the revert {shown:.1f}s after the kill"


def test_page_draws_traffic_and_escapes_what_users_wrote():
    """The page's own script in Chromium, fed /api/status documents in turn (its data routed
    by the browser): per-slot traffic windows become a chart, canary/maintenance show, and a
    version or reason full of markup stays text."""
    evil = '<img src=x onerror="window.pwned=1">'
    polls = {"n": 0}

    def status() -> dict:
        n = polls["n"] = polls["n"] + 1
        row = {"id": 1, "app": "web", "kind": "auto-revert", "version": evil, "slot": "blue",
               "from_slot": "green", "started_at": 1000.0, "finished_at": 1001.0,
               "outcome": "succeeded", "reason": evil, "error": None, "user": evil}
        return {"now": 1002.0 + n, "daemon": {"summary": "1 apps", "version": "t"},
                "apps": {"web": {
                    "live_slot": "blue", "watchdog": {"status": "reverted", "reverts": 1,
                                                      "last_reason": evil},
                    "slots": {"blue": {"state": "running", "version": evil,
                                       "health": "healthy"},
                              "green": {"state": "exited", "version": "v2", "health": "-"}},
                    "standby": {"slot": "green", "state": "exited", "warm": False},
                    "history": [row],
                    "traffic": {"window_seconds": 60, "slots": {
                        "blue": {"requests": 600 * n, "errors": 60, "seconds": 60},
                        "green": {"requests": 0, "errors": 0, "seconds": 60}}},
                    "canary": {"version": "v3", "weight_percent": 10},
                    "maintenance": {"on": False}}},
                "config_errors": {"bad": evil}, "timeline": [row]}

    def serve(route):
        path = route.request.url.removeprefix("http://zdagent.test")
        if path == "/api/status":
            route.fulfill(status=200, content_type="application/json",
                          body=json.dumps(status()))
        elif path.startswith("/static/") and path[8:] in STATIC:
            route.fulfill(status=200, content_type=STATIC[path[8:]], body=asset(path[8:]))
        else:
            route.fulfill(status=200, content_type="text/html", body=asset("index.html"))

    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page()
            page.route("http://zdagent.test/**", serve)
            page.goto("http://zdagent.test/")
            legend = page.locator(".chart .legend")
            # A window's counts per second: the third poll's 1800 requests in 60 s = 30/s.
            legend.filter(has_text="blue 30.0 req/s").wait_for(timeout=20000)
            text = legend.inner_text()
            assert "blue 1.0 5xx/s" in text and "green 0.0 req/s" in text, text
            assert page.locator(".chart polyline").count() == 4
            page.wait_for_function("() => [...document.querySelectorAll('.chart polyline')]"
                                   ".every(p => p.points.length >= 2)", timeout=20000)
            assert page.locator('[data-extra="canary"]').inner_text().startswith("canary")
            assert "weight_percent: 10" in page.locator('[data-extra="canary"]').inner_text()
            card = page.locator('article[data-app="web"]')
            assert evil in card.locator(".watchdog-reason").inner_text()
            assert evil in card.locator('tr[data-slot="blue"] .version').inner_text()
            assert evil in page.locator("#timeline").inner_text()
            assert evil in page.locator("#errors").inner_text()
            assert page.locator("img").count() == 0
            assert page.evaluate("window.pwned") is None
        finally:
            browser.close()
