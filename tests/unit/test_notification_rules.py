"""Notifications: the event filter, the signature, the backoff, the outbox's state
transitions on a real SQLite file and the config's validation. Sends to real receivers:
tests/integration/test_notifications.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from pathlib import Path

import pytest

from tests.unit.test_config import MINIMAL
from zdagent.config import load_config
from zdagent.errors import ConfigError
from zdagent.notifications import outbox
from zdagent.notifications.deliver import body_of, drain, label, scrub, sign
from zdagent.notifications.events import (
    FAILURES,
    HealthAlerts,
    check_events,
    describe,
    expand,
    make_notice,
    wanted,
)
from zdagent.store import Store

SECRET = "s3cret-hmac-key"


def app_with(tmp_path: Path, notify: str):
    path = tmp_path / "app.toml"
    path.write_text(MINIMAL + notify)
    return load_config(path)


def webhook_cfg(tmp_path: Path, url: str, events: str = '"all"'):
    return app_with(tmp_path, f'\n[[notify]]\nwebhook = "{url}"\nsecret = "{SECRET}"\n'
                              f"events = {events}\n")


# --- filter -------------------------------------------------------------------------------

def test_filter_shorthands_and_names():
    assert expand("failures") == FAILURES
    assert "deploy-succeeded" not in FAILURES and "deploy-failed" in FAILURES
    assert expand(["failures", "recovered"]) == FAILURES | {"recovered"}
    assert expand("all") >= {"deploy-started", "recovered", "hook-failed"}
    assert wanted("deploy-failed", expand("failures"))
    assert not wanted("deploy-succeeded", expand("failures"))
    assert describe(expand(["recovered", "failures"])) == ["failures", "recovered"]
    assert describe(expand(["deploy-failed", "failures"])) == ["failures"]
    assert describe(expand("all")) == ["all"]
    assert wanted("test", frozenset())  # the test event goes to every channel
    assert "did you mean 'deploy-failed'" in (check_events(["deploy-faild"]) or "")
    assert check_events([]) is not None and check_events(3) is not None


def test_health_alerts_one_notice_per_transition():
    a = HealthAlerts()
    seen = [a.transition(s) for s in
            ("healthy", "failing", "degraded", "failing", "revert-failed", "degraded",
             "nginx-down", "healthy", "healthy", "failing", "healthy", "nginx-down", "healthy")]
    assert [s for s in seen if s] == ["degraded", "recovered", "degraded", "recovered"]


# --- signature, backoff -------------------------------------------------------------------

def test_signature_is_hmac_sha256_of_the_exact_body():
    notice = make_notice("web", "deploy-failed", {"version": "v2", "error": "boom"})
    body = body_of(notice.payload)
    want = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(SECRET.encode(), body) == "sha256=" + want
    assert json.loads(body) == notice.payload
    assert body_of(notice.payload) == body  # deterministic bytes


def test_backoff_doubles_and_is_capped():
    assert [outbox.backoff(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert outbox.backoff(50) == outbox.MAX_BACKOFF


# --- the outbox on a real SQLite file -----------------------------------------------------

def test_outbox_claim_fail_retry_deliver(tmp_path):
    store = Store(tmp_path)
    n = make_notice("web", "deploy-failed", {"error": "x"}, now=1000.0)
    outbox.enqueue(store, n, ["a", "b"], 1000.0)
    assert outbox.outbox_depth(store, "web") == 2
    items = outbox.due(store, "web", 1000.0)
    assert [(i.event_id, i.channel) for i in items] == [(n.id, "a"), (n.id, "b")]
    a, _b = items
    assert outbox.claim(store, a, 1000.0)
    assert not outbox.claim(store, a, 1000.0)  # a second sender never gets a claimed row
    assert [i.channel for i in outbox.due(store, "web", 1000.0)] == ["b"]
    when = outbox.failed(store, a, 1001.0, "connection refused")
    assert when == 1001.0 + outbox.backoff(1)
    assert [i.channel for i in outbox.due(store, "web", when - 0.1)] == ["b"]
    retry = next(i for i in outbox.due(store, "web", when) if i.channel == "a")
    assert retry.attempts == 1
    assert outbox.claim(store, retry, when)
    outbox.delivered(store, retry, when + 0.1)
    assert not outbox.claim(store, retry, when + 999)  # delivered: never again
    assert outbox.outbox_depth(store, "web") == 1
    stats = outbox.channel_stats(store, "web")
    assert stats["a"]["delivered"] == 1 and stats["b"]["pending"] == 1
    store.close()


def test_a_claim_whose_sender_died_is_retried_after_the_lease(tmp_path):
    store = Store(tmp_path)
    n = make_notice("web", "auto-revert", {}, now=0.0)
    outbox.enqueue(store, n, ["a"], 0.0)
    item = outbox.due(store, "web", 0.0)[0]
    assert outbox.claim(store, item, 0.0)  # ... and the sender is killed here
    store.close()
    store = Store(tmp_path)  # a restarted sender
    assert outbox.due(store, "web", outbox.LEASE - 1) == []
    again = outbox.due(store, "web", outbox.LEASE)
    assert [i.event_id for i in again] == [n.id] and again[0].attempts == 1
    store.close()


def test_give_up_after_max_age_and_on_removed_channel(tmp_path):
    store = Store(tmp_path)
    old = make_notice("web", "degraded", {}, now=0.0)
    outbox.enqueue(store, old, ["a", "gone"], 0.0)
    assert outbox.drop_unknown(store, "web", {"a"}, 1.0) == 1
    item = outbox.due(store, "web", outbox.MAX_AGE)[0]
    assert outbox.claim(store, item, outbox.MAX_AGE)
    assert outbox.failed(store, item, outbox.MAX_AGE, "still down") is None
    assert outbox.outbox_depth(store) == 0
    assert outbox.channel_stats(store, "web")["a"]["given_up"] == 1
    store.close()


def test_no_channel_wants_it_writes_nothing(tmp_path):
    store = Store(tmp_path)
    outbox.enqueue(store, make_notice("web", "recovered", {}), [], 0.0)
    assert store.rows("SELECT count(*) FROM notify_outbox")[0][0] == 0
    store.close()


def test_an_existing_store_gains_the_outbox(tmp_path):
    db = sqlite3.connect(tmp_path / "zdagent.db")
    db.execute("CREATE TABLE deploys (id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL,"
               " kind TEXT NOT NULL, version TEXT, image TEXT, image_id TEXT, slot TEXT,"
               " from_slot TEXT, started_at REAL NOT NULL, finished_at REAL, outcome TEXT NOT"
               " NULL, error TEXT, phases TEXT NOT NULL DEFAULT '[]', user TEXT, pid INTEGER)")
    db.execute("INSERT INTO deploys(app, kind, started_at, outcome) VALUES ('web','deploy',1,"
               "'succeeded')")
    db.commit()
    db.close()
    store = Store(tmp_path)
    outbox.enqueue(store, make_notice("web", "recovered", {}), ["a"], 0.0)
    assert outbox.outbox_depth(store, "web") == 1
    assert store.history("web")[0].outcome == "succeeded"
    store.close()


# --- config -------------------------------------------------------------------------------

@pytest.mark.parametrize(("toml", "error"), [
    ('url = "slack://TokenA/TokenB/TokenC"\nwebhook = "https://h/x"', "exactly one of url"),
    ('webhook = "https://h.example/x?token=TOPSECRET"', "exactly one of secret_file"),
    ('url = "nosuchservice://TOPSECRET@h"', "not a URL Apprise understands"),
    ('url = "slack://TokenA/TokenB/TokenC"\nsecret = "TOPSECRET"', "belongs to a webhook"),
    ('webhook = "ftp://TOPSECRET@h/x"\nsecret = "k"', "must be an http(s):// URL"),
    ('url = "slack://a/b/c"\nevents = ["deploy-faild"]', "did you mean 'deploy-failed'"),
    ('url = "slack://a/b/c"\ncolour = "red"', "notify[0].colour: unknown key"),
    ('webhook = "https://h/x"\nsecret_env = "1BAD"', "an environment variable name"),
])
def test_notify_config_errors_never_show_the_secret(tmp_path, toml, error):
    with pytest.raises(ConfigError) as e:
        app_with(tmp_path, f"\n[[notify]]\n{toml}\n")
    assert error in e.value.message
    assert "TOPSECRET" not in e.value.message and "TOPSECRET" not in e.value.hint


def test_notify_must_be_an_array_of_tables(tmp_path):
    with pytest.raises(ConfigError, match=r"notify: must be an array of tables"):
        app_with(tmp_path, '\n[notify]\nurl = "slack://a/b/c"\n')


def test_notify_channels_are_parsed_and_never_shown(tmp_path):
    cfg = app_with(tmp_path, '\n[[notify]]\nurl = "slack://TOKA/TOKB/TOKC"\nevents = "failures"'
                             '\n[[notify]]\nname = "hook"\nwebhook = "https://h.example/p/TOKP"'
                             '\nsecret_file = "hook.secret"\nevents = ["deploy-succeeded"]\n')
    slack, hook = cfg.notify
    assert slack.kind == "apprise" and slack.events == FAILURES and slack.name == "slack-0"
    assert hook.secret_file == tmp_path / "hook.secret" and hook.events == {"deploy-succeeded"}
    shown = repr(cfg) + label(slack) + label(hook)
    assert "TOK" not in shown
    assert slack.key != hook.key and len(slack.key) == 16


def test_the_annotated_example_has_both_kinds_of_channel(tmp_path):
    example = Path(__file__).resolve().parents[2] / "zdagent" / "example.toml"
    (tmp_path / "web.toml").write_text(example.read_text())
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\n")
    slack, hook = load_config(tmp_path / "web.toml").notify
    assert (slack.kind, slack.events) == ("apprise", FAILURES | {"recovered"})
    assert (hook.kind, hook.name, hook.secret_file) == ("webhook", "ci-hook",
                                                       Path("/etc/zdagent/hook.secret"))


def test_prune_deletes_only_old_finished_events(tmp_path):
    store = Store(tmp_path)
    done, waiting, new = (make_notice("web", "degraded", {}, now=t) for t in (0.0, 0.0, 50.0))
    for n in (done, waiting, new):
        outbox.enqueue(store, n, ["a"], n.payload["timestamp"])
    item = next(i for i in outbox.due(store, "web", 1.0) if i.event_id == done.id)
    assert outbox.claim(store, item, 1.0)
    outbox.delivered(store, item, 1.0)
    assert outbox.prune(store, "web", before=10.0) == 1
    left = {r[0] for r in store.rows("SELECT id FROM notify_outbox")}
    assert left == {waiting.id, new.id}
    assert outbox.outbox_depth(store, "web") == 2
    store.close()


def test_errors_lose_every_credential_of_the_url():
    url = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-1001234567/?format=text"
    said = ("Failed to send Telegram notification to https://api.telegram.org/"
            "bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage: error=404.")
    out = scrub(said, url)
    assert "AAHdq" not in out and "123456789" not in out and "1001234567" not in out
    assert out.startswith("Failed to send Telegram notification") and "error=404" in out
    assert "s3cr3t" not in scrub("login failed for ops:s3cr3t%21", "mailtos://ops:s3cr3t%21@h")


def test_a_removed_channel_is_skipped_then_given_up(tmp_path):
    cfg = app_with(tmp_path, '\n[[notify]]\nwebhook = "http://127.0.0.1:9/x"\nsecret = "k"\n')
    store = Store(cfg.state_dir)
    outbox.enqueue(store, make_notice(cfg.name, "degraded", {}, now=0.0), ["gone"], 0.0)
    done = drain(store, cfg, deadline=100.0, clock=lambda: 1.0, tidy=False)
    assert (done.sent, done.failed, done.left) == (0, {}, 1)  # skipped, not a KeyError
    done = drain(store, cfg, deadline=100.0, clock=lambda: 1.0, tidy=True)
    assert done.left == 0
    assert outbox.channel_stats(store, cfg.name)["gone"]["given_up"] == 1
    store.close()


def test_backoff_never_overflows_however_many_attempts():
    """A row tried past ~1024 times (a clock stepped back keeps it from MAX_AGE) must not
    raise in failed(): the error escaped drain() and stopped every later delivery."""
    assert outbox.backoff(2000) == outbox.MAX_BACKOFF


def test_a_clock_stepped_back_does_not_stall_the_outbox(tmp_path):
    """Rows scheduled by a clock that was ahead (an RTC off at boot, then NTP) must not wait
    for the clock to catch up: no genuine schedule is further ahead than the longest backoff."""
    store = Store(tmp_path)
    n = make_notice("web", "deploy-failed", {}, now=100_000.0)
    outbox.enqueue(store, n, ["a"], 100_000.0)
    item = outbox.due(store, "web", 100_000.0)[0]
    assert outbox.claim(store, item, 100_000.0)
    outbox.failed(store, item, 100_001.0, "down")  # next try at 100_003
    later = 10_000.0  # the clock stepped back by a day
    again = outbox.due(store, "web", later)
    assert [i.event_id for i in again] == [n.id]
    assert outbox.claim(store, again[0], later)
    assert outbox.due(store, "web", later) == []  # now leased at the corrected time
    store.close()


def test_recovered_is_notified_after_a_daemon_restart(tmp_path):
    """The daemon restarted while the app was degraded: its watchdog starts afresh, and the
    app's return to healthy must still be notified (and its still bad state not twice)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from zdagent.daemon.outbox import Delivery

    cfg = webhook_cfg(tmp_path, "http://127.0.0.1:9/hook")

    def events() -> list[str]:
        store = Store(cfg.state_dir)
        try:
            return [r[0] for r in store.rows("SELECT event FROM notify_outbox ORDER BY rowid")]
        finally:
            store.close()

    def daemon_run(transitions: list[tuple[str, str]]) -> None:
        pool = ThreadPoolExecutor(1)
        d = Delivery(lambda: [cfg], lambda: pool, asyncio.Event(), lambda line: None)
        changed = d.watch_changes(cfg.name, lambda: cfg, lambda: "why")
        for old, new in transitions:
            changed(old, new)
        pool.shutdown(wait=True)

    daemon_run([("starting", "healthy"), ("healthy", "failing"), ("failing", "degraded")])
    assert events() == ["degraded"]
    daemon_run([("starting", "degraded")])  # restarted, still bad: nothing new
    assert events() == ["degraded"]
    daemon_run([("starting", "healthy")])  # restarted, then well again
    assert events() == ["degraded", "recovered"]
