"""Notifications to real local receivers: a webhook receiver that checks the HMAC signature
and an SMTP server (aiosmtpd); deploys on real Docker and Nginx, in-process and through the
daemon, with the receiver down meanwhile and the daemon killed with SIGKILL."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.integration.test_daemon import FAST_WATCHDOG, daemon_factory, live_in_file, wait_for
from tests.receivers import SmtpReceiver, WebhookReceiver
from tests.unit.test_notification_rules import SECRET, app_with, webhook_cfg
from zdagent.config import load_config
from zdagent.notifications import outbox
from zdagent.notifications.deliver import drain, flush, send, send_test
from zdagent.notifications.events import make_notice
from zdagent.store import Store

__all__ = ["daemon_factory"]  # the fixture, used by name

@pytest.fixture
def webhook():
    rx = WebhookReceiver(SECRET.encode())
    yield rx
    rx.stop()


@pytest.fixture
def smtp():
    rx = SmtpReceiver().start()
    yield rx
    rx.stop()


def notify_toml(rx: WebhookReceiver, events: str = '"all"', extra: str = "") -> str:
    return (f'\n[[notify]]\nname = "hook"\nwebhook = "{rx.url}"\nsecret_env = "ZD_HOOK_SECRET"'
            f"\nevents = {events}\n{extra}")


def outbox_rows(app) -> list[tuple]:
    cfg = load_config(app.config)
    store = Store(cfg.state_dir)
    try:
        return [tuple(r) for r in store.rows(
            "SELECT o.event, d.attempts, d.delivered_at IS NOT NULL, d.last_error FROM"
            " notify_delivery d JOIN notify_outbox o ON o.id = d.event_id WHERE d.app=?"
            " ORDER BY o.created_at", (cfg.name,))]
    finally:
        store.close()


# --- sends, no Docker ---------------------------------------------------------------

def test_webhook_send_is_signed_and_carries_the_event_id(tmp_path):
    rx = WebhookReceiver(SECRET.encode()).start()
    try:
        cfg = webhook_cfg(tmp_path, rx.url)
        notice = make_notice(cfg.name, "deploy-failed", {"error": "boom"})
        send(cfg.notify[0], notice.payload)
        [got] = rx.got
        assert got.signature_ok
        assert got.headers["X-Zdagent-Event-Id"] == notice.id
        assert got.headers["X-Zdagent-Event"] == "deploy-failed"
        assert got.payload["summary"] == f"{cfg.name}: deploy failed: boom"
    finally:
        rx.stop()


def test_a_wrong_secret_is_refused_by_the_receiver(tmp_path):
    rx = WebhookReceiver(b"another key").start()
    try:
        cfg = webhook_cfg(tmp_path, rx.url)
        [ch] = send_test(cfg)["channels"]
        assert (ch["ok"], ch["error"]) == (False, "the receiver answered HTTP 401")
    finally:
        rx.stop()


def test_email_through_apprise_to_a_local_smtp_server(tmp_path):
    smtp = SmtpReceiver().start()
    try:
        cfg = app_with(tmp_path, f'\n[[notify]]\nurl = "{smtp.url()}"\n')
        assert [c["ok"] for c in send_test(cfg)["channels"]] == [True]
        [msg] = smtp.messages
        assert msg.rcpt_tos == ["ops@example.com"]
        text = msg.content.decode()
        assert "test notification from zdagent" in text and "event id:" in text
    finally:
        smtp.stop()


def test_a_receiver_down_then_up_gets_every_event_once(tmp_path):
    rx = WebhookReceiver(SECRET.encode())  # not started: its port is closed
    cfg = webhook_cfg(tmp_path, rx.url, '"failures"')
    store = Store(cfg.state_dir)
    now = [1000.0]
    queued = [outbox.queue(store, cfg, e, {}, now[0]) for e in
              ("deploy-started", "deploy-failed", "degraded", "auto-revert")]
    assert queued[0] is None  # not a failure: this channel does not want it
    first = drain(store, cfg, deadline=now[0] + 30, clock=lambda: now[0])
    assert first.sent == 0 and "ConnectError" in first.failed["webhook-0"] and first.left == 3
    rx.start()
    try:
        for _ in range(20):  # rounds as the daemon runs them, time moving on
            now[0] += outbox.MAX_BACKOFF
            drain(store, cfg, deadline=now[0] + 30, clock=lambda: now[0])
        assert sorted(rx.ids()) == sorted(n.id for n in queued if n)
        assert set(rx.ids().values()) == {1}
        assert outbox.outbox_depth(store, cfg.name) == 0
    finally:
        rx.stop()
        store.close()


def test_a_receiver_that_never_answers_costs_the_cli_its_bound_only(tmp_path):
    """A webhook that accepts the connection and never answers: the CLI's flush gives up at
    its bound, and the events stay queued (claimed: retried after the lease)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # never accepted, never answered
        cfg = webhook_cfg(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}/hook")
        store = Store(cfg.state_dir)
        for event in ("deploy-started", "deploy-succeeded", "degraded"):
            outbox.queue(store, cfg, event, {})
        t0 = time.monotonic()
        done = flush(cfg, 2.0)
        took = time.monotonic() - t0
        assert done is not None and done.sent == 0 and done.left == 3
        assert "Timeout" in done.failed["webhook-0"]
        assert took < 2.0 + 1.0, took
        assert outbox.outbox_depth(store, cfg.name) == 3
        store.close()


# --- deploys ------------------------------------------------------------------------------

def test_in_process_deploys_notify_webhook_and_email(make_app, webhook, smtp):
    webhook.start()
    app = make_app(extra='[hooks]\npost_deploy = ["/bin/false"]\n' + notify_toml(webhook)
                   + f'\n[[notify]]\nurl = "{smtp.url()}"\nevents = "failures"\n')
    app.env["ZD_HOOK_SECRET"] = SECRET
    app.ok("deploy", "v1", "--local")
    # Delivered before the CLI returned (its bounded flush), signed.
    assert [e["event"] for e in webhook.events()] == ["deploy-started", "hook-failed",
                                                      "deploy-succeeded"]
    assert all(r.signature_ok for r in webhook.got)
    assert webhook.events()[1]["fields"]["hook"] == "post_deploy"
    [hook_mail] = smtp.messages  # email wants failures only: the hook's
    assert "hook failed" in hook_mail.content.decode()
    failed = app.cli("deploy", "crash", "--local")
    assert failed.returncode == 1
    events = webhook.events()
    assert [e["event"] for e in events][3:] == ["deploy-started", "deploy-failed"]
    assert events[-1]["fields"]["error"] and events[-1]["fields"]["version"] == "crash"
    assert len(smtp.messages) == 2
    body = smtp.messages[1].content.decode()
    assert "deploy failed (crash)" in body and events[-1]["id"] in body
    assert all(row[2] for row in outbox_rows(app))  # every delivery marked delivered
    test = app.cli("notify", "test", "--json")
    assert test.returncode == 0, test.stderr
    assert [c["ok"] for c in json.loads(test.stdout)["channels"]] == [True, True]
    assert webhook.events()[-1]["event"] == "test" and len(smtp.messages) == 3
    status = json.loads(app.ok("notify", "status", "--json").stdout)
    assert status["pending"] == 0
    assert [(c["name"], c["delivered"]) for c in status["channels"]] == [("hook", 5),
                                                                         ("mailto-1", 2)]
    assert SECRET not in test.stdout + test.stderr + json.dumps(status)
    st = json.loads(app.ok("status", "--json", "--local").stdout)
    assert st["notifications"] == {"channels": 2, "pending": 0}


def test_receiver_down_and_daemon_killed_then_every_event_arrives_once(
        make_app, daemon_factory, webhook):
    """Events queued while the receiver is down survive a kill -9 of the daemon; after the
    restart, with the receiver back, each arrives exactly once, signed."""
    app = make_app(extra=notify_toml(webhook))
    d = daemon_factory([app], env={"ZD_HOOK_SECRET": SECRET}).start()
    app.ok("deploy", "v1")  # through the daemon; the receiver's port is closed
    wait_for(lambda: len(rows := outbox_rows(app)) == 2 and all(r[1] >= 1 and r[3]
                                                                  for r in rows),
             30, "both events tried and failed")
    assert not any(r[2] for r in outbox_rows(app))
    d.kill9()
    webhook.start()
    d.start()
    wait_for(lambda: all(r[2] for r in outbox_rows(app)), 60, "delivery after the restart")
    ids = webhook.ids()
    # Retried events arrive in the order their backoffs end (receivers order by "timestamp").
    assert sorted(e["event"] for e in webhook.events()) == ["deploy-started",
                                                            "deploy-succeeded"]
    assert set(ids.values()) == {1}, ids  # exactly once per event id
    assert all(r.signature_ok for r in webhook.got)
    log = d.log.read_text()
    assert log.count("notification to hook failed") == 1  # once, not once per retry
    assert "ZD_HOOK_SECRET" not in app.env
    test = app.cli("notify", "test", "--json")  # sent by the daemon: only it has the secret
    assert test.returncode == 0, test.stderr
    assert json.loads(test.stdout)["channels"][0]["ok"]
    assert webhook.events()[-1]["event"] == "test" and webhook.got[-1].signature_ok


def test_watchdog_auto_revert_degraded_and_recovered(make_app, daemon_factory, webhook,
                                                     docker_client):
    webhook.start()
    app = make_app(extra=FAST_WATCHDOG + notify_toml(webhook, '["failures", "recovered"]'))
    d = daemon_factory([app], env={"ZD_HOOK_SECRET": SECRET}).start()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    docker_client.containers.get(f"{app.name}-green").exec_run(
        ["/bin/busybox", "touch", "/tmp/unhealthy"])
    webhook.wait_for(lambda ev: [e["event"] for e in ev] == ["auto-revert"], 30, "auto-revert")
    assert live_in_file(app) == "blue"
    app.nginx.stop()
    webhook.wait_for(lambda ev: len(ev) == 2, 30, "degraded")
    degraded = webhook.events()[1]
    assert degraded["event"] == "degraded" and degraded["fields"]["state"] == "nginx-down"
    app.nginx.start()
    webhook.wait_for(lambda ev: len(ev) == 3, 30, "recovered")
    assert webhook.events()[2]["event"] == "recovered"
    seen = d.status()["apps"][app.name]["checks"]  # more rounds, healthy: nothing more sent
    wait_for(lambda: d.status()["apps"][app.name]["checks"] >= seen + 5, 30, "5 more rounds")
    assert [e["event"] for e in webhook.events()] == ["auto-revert", "degraded", "recovered"]
    assert set(webhook.ids().values()) == {1}


def backlog_and_failure(tmp_path, backlog: tuple[str, WebhookReceiver],
                        other: tuple[str, WebhookReceiver], n: int):
    """Two webhook channels, the second for failures only; ``n`` events only the first wants,
    then a failure (for both). Returns the config, its open store and the failure's notice."""
    (a, a_rx), (b, b_rx) = backlog, other
    cfg = app_with(tmp_path, f'\n[[notify]]\nname = "{a}"\nwebhook = "{a_rx.url}"\n'
                             f'secret = "{SECRET}"\n\n[[notify]]\nname = "{b}"\n'
                             f'webhook = "{b_rx.url}"\nsecret = "{SECRET}"\n'
                             'events = "failures"\n')
    store = Store(cfg.state_dir)
    for i in range(n):
        outbox.queue(store, cfg, "deploy-succeeded", {}, 1000.0 + i)
    return cfg, store, outbox.queue(store, cfg, "deploy-failed", {"error": "boom"}, 2000.0)


def test_a_down_channel_with_a_backlog_does_not_starve_another(tmp_path):
    """A webhook down long enough to hold more than one query's worth of due deliveries must
    not keep another channel from the event it wants: each channel drains on its own."""
    rx = WebhookReceiver(SECRET.encode()).start()
    dead = WebhookReceiver(SECRET.encode())  # never started: its port is closed
    try:
        cfg, store, failure = backlog_and_failure(tmp_path, ("down", dead), ("up", rx), 60)
        done = drain(store, cfg, deadline=2000.0 + 30, clock=lambda: 2000.0)
        assert "down" in done.failed
        assert list(rx.ids()) == [failure.id]
        store.close()
    finally:
        rx.stop()


def test_a_trickling_receiver_costs_the_cli_its_bound_only(tmp_path):
    """A webhook that answers one byte at a time never trips a per-read timeout: the send
    itself is bounded, so the CLI's flush (after a deploy) still ends at its bound."""
    from tests.receivers import TricklingReceiver

    rx = TricklingReceiver(gap=1.5)  # a byte just before each read would time out
    guard = threading.Timer(15.0, rx.stop)  # unbounded before the fix: fail, never hang
    guard.start()
    try:
        cfg = webhook_cfg(tmp_path, rx.url)
        store = Store(cfg.state_dir)
        outbox.queue(store, cfg, "deploy-succeeded", {})
        t0 = time.monotonic()
        done = flush(cfg, 2.0)
        took = time.monotonic() - t0
        assert done is not None and done.sent == 0 and done.left == 1
        assert "Timeout" in done.failed["webhook-0"], done.failed
        assert took < 2.0 + 1.0, took
        store.close()
    finally:
        guard.cancel()
        rx.stop()


def test_an_outbox_that_refuses_writes_never_fails_the_deploy(make_app, webhook):
    """The store refuses every notification (a trigger aborts the insert): the deploy still
    succeeds and switches, and says why nothing was queued (no traceback)."""
    import sqlite3

    webhook.start()
    app = make_app(extra=notify_toml(webhook))
    app.env["ZD_HOOK_SECRET"] = SECRET
    cfg = load_config(app.config)
    Store(cfg.state_dir).close()
    db = sqlite3.connect(cfg.state_dir / "zdagent.db")
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON notify_outbox"
               " BEGIN SELECT RAISE(ABORT, 'the outbox refuses'); END")
    db.commit()
    db.close()
    done = app.ok("deploy", "v1", "--local")
    assert live_in_file(app) == "blue"
    assert "could not queue the deploy-started notification" in done.stderr
    assert "could not queue the deploy-succeeded notification" in done.stderr
    assert "Traceback" not in done.stderr and webhook.events() == []
    failed = app.cli("deploy", "crash", "--local")  # a failure is still the deploy's own
    assert failed.returncode == 1 and "could not queue the deploy-failed" in failed.stderr


def test_a_slow_smtp_server_costs_the_cli_its_bound_only(tmp_path):
    """An SMTP server slow at every step (each reply well within a read timeout): Apprise's
    timeouts are per read, so only a bound on the whole send keeps the CLI's flush at its."""
    import asyncio

    from aiosmtpd.controller import Controller

    from benchmarks.harness import free_port

    got: list[object] = []

    class Slow:
        async def handle_MAIL(self, server, session, envelope, address, options):
            await asyncio.sleep(1.5)
            envelope.mail_from = address
            return "250 OK"

        async def handle_RCPT(self, server, session, envelope, address, options):
            await asyncio.sleep(1.5)
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            await asyncio.sleep(1.5)
            got.append(envelope)
            return "250 OK"

    port = free_port()
    smtp = Controller(Slow(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        cfg = app_with(tmp_path, f'\n[[notify]]\nurl = "mailto://127.0.0.1:{port}?from='
                                 'zdagent@example.com&to=ops@example.com"\n')
        store = Store(cfg.state_dir)
        outbox.queue(store, cfg, "deploy-failed", {"error": "boom"})
        t0 = time.monotonic()
        done = flush(cfg, 2.0)
        took = time.monotonic() - t0
        assert took < 2.0 + 1.0, took
        assert done is not None and "Timeout" in done.failed["mailto-0"], done
        assert outbox.outbox_depth(store, cfg.name) == 1  # retried later (at least once)
        wait_for(lambda: got, 30, "the abandoned send to end")
        store.close()
    finally:
        smtp.stop()


def test_a_slow_channel_with_a_backlog_does_not_hold_up_another(tmp_path):
    """A receiver that takes its time with each of many events shares a drain round with the
    other channels, one delivery each in turn, rather than using it all up first."""
    slow = WebhookReceiver(SECRET.encode(), delay=1.0).start()
    fast = WebhookReceiver(SECRET.encode()).start()
    try:
        cfg, store, failure = backlog_and_failure(tmp_path, ("slow", slow), ("fast", fast), 5)
        t0 = time.monotonic()
        done = drain(store, cfg, deadline=time.time() + 3.0)
        assert time.monotonic() - t0 < 3.0 + 1.5
        assert list(fast.ids()) == [failure.id]
        assert set(done.failed) <= {"slow"}  # its last send may be cut at the deadline
        assert 1 <= done.sent < 6 and done.left == 6 - done.sent
        store.close()
    finally:
        slow.stop()
        fast.stop()
