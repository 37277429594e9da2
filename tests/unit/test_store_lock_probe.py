"""Store round trips, the per-app lock across processes, and probes against a real server."""

from __future__ import annotations

import http.server
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from zdagent.config import HealthConfig
from zdagent.errors import HealthCheckFailed, LockBusy
from zdagent.events import Event
from zdagent.lock import app_lock
from zdagent.probe import probe_once, wait_healthy
from zdagent.store import PhaseRecord, Store


def test_store_history_and_state_round_trip(tmp_path):
    store = Store(tmp_path)
    did = store.begin("web", "deploy", "v1", "blue", None)
    store.update(did, image="web:v1", image_id="sha256:1")
    store.set_phases(did, [PhaseRecord("source", 1.0, 0.5, True)])
    store.finish(did, "succeeded")
    store.set_state("web", phase="idle", live_slot="blue")
    store.close()

    again = Store(tmp_path)  # reopened: what was committed is there
    rec = again.history("web")[0]
    assert (rec.version, rec.outcome, rec.image_id) == ("v1", "succeeded", "sha256:1")
    assert rec.phases == [PhaseRecord("source", 1.0, 0.5, True)]
    assert again.last_success_of("web", "v1").id == did
    assert again.last_success_of("web", "v2") is None
    assert again.state("web").live_slot == "blue"
    assert again.state("other").phase == "idle"
    mode = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _hold_lock(state_dir: str, ready, release) -> None:
    with app_lock(Path(state_dir), "web", "deploy v9", lambda e: None):
        ready.set()
        release.wait(10)


def test_lock_no_wait_names_the_holder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockBusy, match=rf"deploy v9 by .* \(pid {holder.pid}"), \
                app_lock(tmp_path, "web", "deploy v10", lambda e: None, wait=False):
            pass
        events: list[Event] = []
        threading.Timer(0.5, release.set).start()
        with app_lock(tmp_path, "web", "deploy v10", events.append):
            pass
        assert any("waiting for the lock: deploy v9" in e.message for e in events)
    finally:
        release.set()
        holder.join(10)


def test_stale_lock_from_dead_process_is_taken_over_and_said(tmp_path):
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    (tmp_path / "web.lock").write_text(json.dumps(
        {"pid": child.pid, "user": "ci", "since": time.time(), "what": "deploy v1"}))
    events: list[Event] = []
    with app_lock(tmp_path, "web", "deploy v2", events.append, wait=False):
        pass
    assert any(e.kind == "warn" and f"dead process {child.pid}" in e.message for e in events)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b"ok v1"

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("X-App-Version", "v1")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


def health(**kw) -> HealthConfig:
    base = dict(path="/", statuses=(200,), timeout=1.0, interval=0.05, startup_deadline=1.0,
                passes=2, expect_version="none")
    return HealthConfig(**{**base, **kw})


def test_probe_checks_status_and_version(server):
    with httpx.Client() as c:
        assert probe_once(c, server, health(), "v1").ok
        assert probe_once(c, server, health(expect_version="body"), "v1").ok
        assert probe_once(c, server, health(expect_version="header:X-App-Version"), "v1").ok
        bad = probe_once(c, server, health(expect_version="body"), "v2")
        assert not bad.ok and "not in the body" in bad.detail
        assert not probe_once(c, server, health(statuses=(204,)), None).ok


def test_wait_healthy_fails_fast_when_the_container_exits(server):
    t0 = time.monotonic()
    with pytest.raises(HealthCheckFailed, match=r"exited with code 3.*last log lines: boom"):
        wait_healthy(server.replace("/", "/x", 3), health(startup_deadline=30), None,
                     lambda e: None, exit_reason=lambda: "the container exited with code 3",
                     logs=lambda: ["boom"])
    assert time.monotonic() - t0 < 5


def test_wait_healthy_times_out_on_a_dead_port():
    with pytest.raises(HealthCheckFailed, match="not healthy within"):
        wait_healthy("http://127.0.0.1:9/", health(startup_deadline=0.5), None,
                     lambda e: None, exit_reason=lambda: None, logs=lambda: [])


def test_sd_notify_never_blocks_on_a_full_socket(tmp_path, monkeypatch):
    """A reader that lags (systemd busy, a test that drains late) must not stall the daemon:
    with the receive queue full, send returns False at once instead of blocking."""
    import socket

    from zdagent.notify import Notifier

    path = f"/tmp/zdn-unit-{os.getpid()}.sock"
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(path)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        n = Notifier()
        sent = [n.send("WATCHDOG=1") for _ in range(2000)]  # far past the queue's length
        assert sent[0] and not all(sent)  # some were queued, the rest dropped, none blocked
    finally:
        reader.close()
        os.unlink(path)
