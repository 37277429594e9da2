"""The durable outbox: notifications wait in the app's SQLite store until each channel has it.

An event is one ``notify_outbox`` row plus one ``notify_delivery`` row per channel that wants
it, written in one transaction, so a crash never leaves half an event. A sender first *claims*
a delivery (one conditional UPDATE: attempts + 1, and a lease as its next attempt time), sends,
then marks it delivered or schedules the retry with a capped exponential backoff. Two senders
(the daemon and a CLI run, or a restarted daemon) never both send a claimed row; a sender
killed between sending and marking leaves a lease that runs out, and the row is sent again:
delivery is at least once, and every copy carries the same event id for the receiver to drop
the duplicate.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from zdagent.config import AppConfig
from zdagent.notifications.events import Notice, make_notice, wanted
from zdagent.store import Store

FIRST_BACKOFF = 2.0
MAX_BACKOFF = 300.0
LEASE = 30.0  # longer than any send (deliver.SEND_TIMEOUT): a claim outlives its send
MAX_AGE = 24 * 3600.0  # an event still undelivered after a day is given up
KEEP = 30 * 24 * 3600.0  # finished events are deleted after this long
# No schedule (a backoff or a lease) is further ahead than this: a row beyond it was scheduled
# by a clock that has since stepped back, and is due now rather than when the clock catches up.
HORIZON = MAX_BACKOFF + LEASE
_DUE = "(next_attempt_at <= ? OR next_attempt_at > ?)"


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones (1-based), capped."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(max(0, attempts - 1), 32))


@dataclass(frozen=True)
class Pending:
    """One delivery that is due: the event (id, name, payload) for one channel."""

    event_id: str
    channel: str
    event: str
    payload: dict[str, Any]
    attempts: int
    created_at: float


def enqueue(store: Store, notice: Notice, channels: list[str], now: float) -> None:
    """Queue ``notice`` for ``channels`` (keys), atomically; nothing when none wants it."""
    if not channels:
        return
    with store.transaction() as db:
        db.execute("INSERT INTO notify_outbox(id, app, event, payload, created_at)"
                   " VALUES (?,?,?,?,?)",
                   (notice.id, notice.app, notice.event, json.dumps(notice.payload), now))
        db.executemany("INSERT INTO notify_delivery(event_id, channel, app, next_attempt_at)"
                       " VALUES (?,?,?,?)",
                       [(notice.id, ch, notice.app, now) for ch in channels])


def queue(store: Store, cfg: AppConfig, event: str, fields: dict[str, Any],
          now: float | None = None) -> Notice | None:
    """Queue ``event`` for the channels of ``cfg`` that want it; None when none does."""
    channels = [c.key for c in cfg.notify if wanted(event, c.events)]
    if not channels:
        return None
    at = time.time() if now is None else now
    notice = make_notice(cfg.name, event, fields, at)
    enqueue(store, notice, channels, at)
    return notice


def due(store: Store, app: str, now: float, limit: int = 50,
        channel: str | None = None) -> list[Pending]:
    """Deliveries of ``app`` (to ``channel`` only, if given) whose time has come, oldest
    event first."""
    rows = store.rows(
        "SELECT d.event_id, d.channel, o.event, o.payload, d.attempts, o.created_at"
        " FROM notify_delivery d JOIN notify_outbox o ON o.id = d.event_id"
        " WHERE d.app=? AND d.delivered_at IS NULL AND d.gave_up_at IS NULL"
        f" AND {_DUE} AND (? IS NULL OR d.channel = ?)"
        " ORDER BY o.created_at, o.rowid, d.rowid LIMIT ?",
        (app, now, now + HORIZON, channel, channel, limit))
    return [Pending(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]


def claim(store: Store, item: Pending, now: float, lease: float = LEASE) -> bool:
    """Take ``item`` for sending; False when another sender took it (or it was done)."""
    with store.transaction() as db:
        cur = db.execute(
            "UPDATE notify_delivery SET attempts = attempts + 1, next_attempt_at = ?"
            " WHERE event_id=? AND channel=? AND delivered_at IS NULL AND gave_up_at IS NULL"
            f" AND {_DUE}", (now + lease, item.event_id, item.channel, now, now + HORIZON))
        return cur.rowcount == 1


def delivered(store: Store, item: Pending, now: float) -> None:
    with store.transaction() as db:
        db.execute("UPDATE notify_delivery SET delivered_at=?, last_error=NULL"
                   " WHERE event_id=? AND channel=?", (now, item.event_id, item.channel))


def failed(store: Store, item: Pending, now: float, error: str) -> float | None:
    """Record a failed try: schedule the next (returns when), or give up after MAX_AGE."""
    attempts = item.attempts + 1  # the claim counted this try
    give_up = now - item.created_at >= MAX_AGE
    when = None if give_up else now + backoff(attempts)
    with store.transaction() as db:
        if give_up:
            db.execute("UPDATE notify_delivery SET gave_up_at=?, last_error=?"
                       " WHERE event_id=? AND channel=?",
                       (now, error, item.event_id, item.channel))
        else:
            db.execute("UPDATE notify_delivery SET next_attempt_at=?, last_error=?"
                       " WHERE event_id=? AND channel=?",
                       (when, error, item.event_id, item.channel))
    return when


def drop_unknown(store: Store, app: str, channels: set[str], now: float) -> int:
    """Give up pending deliveries to channels no longer in the config; how many."""
    marks = ",".join("?" * len(channels))
    where = f" AND channel NOT IN ({marks})" if channels else ""
    with store.transaction() as db:
        cur = db.execute(
            "UPDATE notify_delivery SET gave_up_at=?, last_error='channel removed from the"
            " config' WHERE app=? AND delivered_at IS NULL AND gave_up_at IS NULL" + where,
            (now, app, *channels))
        return cur.rowcount


def prune(store: Store, app: str, before: float) -> int:
    """Delete ``app``'s events created before ``before`` that no channel still waits for."""
    with store.transaction() as db:
        old = "SELECT id FROM notify_outbox WHERE app=? AND created_at < ? AND NOT EXISTS" \
              " (SELECT 1 FROM notify_delivery d WHERE d.event_id = notify_outbox.id AND" \
              " d.delivered_at IS NULL AND d.gave_up_at IS NULL)"
        db.execute(f"DELETE FROM notify_delivery WHERE event_id IN ({old})", (app, before))
        return db.execute(f"DELETE FROM notify_outbox WHERE id IN ({old})",
                          (app, before)).rowcount


def last_health_event(store: Store, app: str) -> str | None:
    """The newest ``degraded`` or ``recovered`` queued for ``app`` (a restarted daemon's
    starting point), None if none is kept."""
    rows = store.rows("SELECT event FROM notify_outbox WHERE app=? AND event IN"
                      " ('degraded', 'recovered') ORDER BY created_at DESC, rowid DESC"
                      " LIMIT 1", (app,))
    return rows[0][0] if rows else None


def outbox_depth(store: Store, app: str | None = None) -> int:
    """Deliveries still to make (not delivered, not given up), of ``app`` or of all apps."""
    sql = ("SELECT count(*) FROM notify_delivery WHERE delivered_at IS NULL"
           " AND gave_up_at IS NULL")
    rows = store.rows(sql + " AND app=?", (app,)) if app else store.rows(sql)
    return int(rows[0][0])


def channel_stats(store: Store, app: str) -> dict[str, dict[str, Any]]:
    """Per channel key: pending, delivered, given up, and the newest error of a pending one."""
    out: dict[str, dict[str, Any]] = {}
    for r in store.rows(
            "SELECT channel, sum(delivered_at IS NULL AND gave_up_at IS NULL),"
            " sum(delivered_at IS NOT NULL), sum(gave_up_at IS NOT NULL),"
            " max(delivered_at) FROM notify_delivery WHERE app=? GROUP BY channel", (app,)):
        out[r[0]] = {"pending": r[1], "delivered": r[2], "given_up": r[3],
                     "last_delivered_at": r[4], "last_error": None}
    for r in store.rows(
            "SELECT channel, last_error FROM notify_delivery WHERE app=? AND delivered_at IS"
            " NULL AND last_error IS NOT NULL ORDER BY next_attempt_at", (app,)):
        out[r[0]]["last_error"] = r[1]
    return out
