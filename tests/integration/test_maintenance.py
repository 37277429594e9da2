"""Maintenance mode on real Nginx: 503 + Retry-After + page, never a connection error, no
reload in njs mode, and deploys still work while it is on."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

import httpx

from tests.integration import test_daemon
from tests.integration.test_canary import njs_app
from tests.integration.test_njs_switch import master_workers

daemon_factory = test_daemon.daemon_factory
MESSAGE = "Back at 10:00 <script>alert(1)</script> $host 'x' \\ {ok};"


class Answers(threading.Thread):
    """A load loop (fresh connection per request, or one kept-alive connection that is
    never retried) sorting every answer: app, maintenance page, anything else."""

    def __init__(self, port: int, keep_alive: bool) -> None:
        super().__init__(daemon=True)
        self.port, self.keep_alive = port, keep_alive
        self.seen: Counter[str] = Counter()
        self.bad: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = None
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/cgi-bin/version",
                             headers={} if self.keep_alive else {"Connection": "close"})
                r = conn.getresponse()
                body = r.read().decode()
            except (OSError, http.client.HTTPException) as e:
                self.bad.append(type(e).__name__)
                conn.close()
                conn = None
                continue
            if r.status == 200:
                self.seen["app"] += 1
            elif (r.status == 503 and r.getheader("Retry-After") == "30"
                  and "maintenance" in body):
                self.seen["maintenance"] += 1
            else:
                self.bad.append(f"HTTP {r.status}: {body[:80]!r}")
            if not self.keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def page_while_on(app) -> httpx.Response:
    r = httpx.get(app.url + "/any/path", timeout=10)
    assert r.status_code == 503 and r.headers["Retry-After"] == "30", r
    return r


def watchdog(app) -> dict:
    return json.loads(app.ok("status", "--json").stdout)["watchdog"]


def wait_seen(loops: list[Answers], kind: str, more: int) -> None:
    start = [lp.seen[kind] for lp in loops]
    test_daemon.wait_for(lambda: all(lp.seen[kind] >= s + more for lp, s in zip(
        loops, start, strict=True)), 60, f"{more} more '{kind}' answers on every loop")


def test_njs_maintenance_under_load_loses_nothing_and_deploys_still_work(make_app,
                                                                          daemon_factory):
    app = njs_app(make_app, "")
    daemon_factory([app]).start()
    app.ok("deploy", "v1")
    workers = master_workers(app)
    loops = [Answers(app.port, keep_alive=False), Answers(app.port, keep_alive=True)]
    for lp in loops:
        lp.start()
    try:
        wait_seen(loops, "app", 20)
        app.ok("maintenance", "on", "--message", MESSAGE, "--retry-after", "30")
        wait_seen(loops, "maintenance", 20)
        r = page_while_on(app)
        assert "&lt;script&gt;" in r.text and "<script>" not in r.text and "&#36;host" in r.text
        st = json.loads(app.ok("status", "--json").stdout)
        assert st["maintenance"]["message"] == MESSAGE and st["maintenance"]["retry_after"] == 30
        # The watchdog keeps probing (directly and through Nginx) and sees nothing wrong.
        checks = st["watchdog"]["checks"]
        test_daemon.wait_for(lambda: watchdog(app)["checks"] >= checks + 3, 60,
                             "3 more watchdog checks")
        w = watchdog(app)
        assert w["status"] == "healthy" and w["consecutive_failures"] == 0, w
        assert "maintenance: ON" in app.ok("status").stdout
        app.ok("deploy", "v2")  # verified through Nginx (health path from 127.0.0.1)
        page_while_on(app)
        app.ok("maintenance", "off")
        wait_seen(loops, "app", 20)
    finally:
        for lp in loops:
            lp.stop.set()
            lp.join(30)
    for lp in loops:
        assert lp.bad == [], (lp.keep_alive, lp.bad[:5])
    assert master_workers(app) == workers  # no reload in njs mode
    assert app.served_version() == "v2"
    assert json.loads(app.ok("status", "--json").stdout)["maintenance"] is None


def test_reload_mode_maintenance_on_off_under_load(make_app):
    app = make_app()
    app.ok("deploy", "v1")
    loop = Answers(app.port, keep_alive=False)  # reloads close idle keep-alive (documented)
    loop.start()
    try:
        wait_seen([loop], "app", 20)
        p = app.ok("maintenance", "on", "--retry-after", "30", "--message", MESSAGE)
        assert "maintenance is on" in p.stderr
        wait_seen([loop], "maintenance", 20)
        assert "&lt;script&gt;" in page_while_on(app).text
        app.ok("maintenance", "off")
        wait_seen([loop], "app", 20)
    finally:
        loop.stop.set()
        loop.join(30)
    assert loop.bad == [], loop.bad[:5]
    assert app.served_version() == "v1"


def test_maintenance_refuses_bad_input_and_changes_nothing(make_app):
    app = make_app()
    p = app.cli("maintenance", "maybe")
    assert p.returncode == 2 and "on or off" in p.stderr and "Traceback" not in p.stderr
    p = app.cli("maintenance", "on", "--message", "x" * 501)
    assert p.returncode == 2 and "500" in p.stderr
    assert not list((app.nginx.prefix / "zdagent").glob("*maintenance*"))
