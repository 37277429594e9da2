"""What can be notified, who wants it, and what a notification says (pure, no I/O).

A channel's ``events`` is a list of names and shorthands (``all``, ``failures``); the config
validates it with :func:`check_events` and stores the expanded set. The payload is the JSON
body of the signed webhook and the source of the Apprise title and body, so every channel
tells the same story, and each carries the event id receivers use to drop a duplicate.
"""

from __future__ import annotations

import difflib
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

EVENTS: dict[str, str] = {
    "deploy-started": "deploy started",
    "deploy-succeeded": "deploy succeeded",
    "deploy-failed": "deploy failed",
    "canary-succeeded": "canary promoted",
    "canary-failed": "canary aborted: all traffic back on the stable version",
    "rollback-succeeded": "rollback succeeded",
    "rollback-failed": "rollback failed",
    "auto-revert": "auto-reverted to the standby",
    "degraded": "degraded",
    "recovered": "recovered",
    "hook-failed": "hook failed",
}
TEST = "test"  # `zdagent notify test`: sent to every channel, whatever its filter

FAILURES = frozenset({"deploy-failed", "rollback-failed", "auto-revert", "degraded",
                      "hook-failed", "canary-failed"})
SHORTHANDS: dict[str, frozenset[str]] = {"all": frozenset(EVENTS), "failures": FAILURES}


def check_events(value: Any) -> str | None:
    """The config check of a channel's ``events``: a name/shorthand or a list of them."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "must be an event name, a shorthand (all, failures) or a non-empty list of them"
    for name in names:
        if name not in EVENTS and name not in SHORTHANDS:
            known = [*SHORTHANDS, *EVENTS]
            close = difflib.get_close_matches(name, known, n=1)
            tip = f" (did you mean '{close[0]}'?)" if close else ""
            return f"unknown event {name!r}{tip}; known: {', '.join(known)}"
    return None


def expand(value: str | list[str]) -> frozenset[str]:
    """The event names a checked ``events`` value stands for."""
    names = [value] if isinstance(value, str) else value
    out: set[str] = set()
    for name in names:
        out |= SHORTHANDS.get(name, frozenset({name}))
    return frozenset(out)


def describe(events: frozenset[str]) -> list[str]:
    """A filter as short as the config could say it: shorthands first, then the rest."""
    for name, members in SHORTHANDS.items():
        if events == members:
            return [name]
    if events > FAILURES:
        return ["failures", *sorted(events - FAILURES)]
    return sorted(events)


def wanted(event: str, events: frozenset[str]) -> bool:
    """Does a channel with filter ``events`` get ``event``? The test event goes everywhere."""
    return event == TEST or event in events


@dataclass(frozen=True)
class Notice:
    """One event as queued: its id (the receivers' dedup key) and its JSON payload."""

    id: str
    event: str
    app: str
    payload: dict[str, Any]


def make_notice(app: str, event: str, fields: dict[str, Any],
                now: float | None = None) -> Notice:
    """Build the payload of ``event`` for ``app``; ``fields`` are event details (JSON-able)."""
    if event not in EVENTS and event != TEST:
        raise ValueError(f"unknown notification event {event!r}")
    at = time.time() if now is None else now
    event_id = uuid.uuid4().hex
    payload = {
        "id": event_id,
        "event": event,
        "app": app,
        "host": socket.gethostname(),
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds"),
        "timestamp": at,
        "summary": summary(app, event, fields),
        "fields": {k: v for k, v in fields.items() if v is not None},
    }
    return Notice(event_id, event, app, payload)


def summary(app: str, event: str, fields: dict[str, Any]) -> str:
    """One line for humans: ``web: deploy failed (v2): health check ...``."""
    what = EVENTS.get(event, "test notification from zdagent")
    version = fields.get("version")
    detail = fields.get("error") or fields.get("reason")
    line = f"{app}: {what}" + (f" ({version})" if version else "")
    return line + (f": {detail}" if detail else "")


def title_and_body(payload: dict[str, Any]) -> tuple[str, str]:
    """The Apprise title and body: the summary, then the fields, then the event id."""
    title = f"zdagent: {payload['summary']}"
    if len(title) > 120:
        title = title[:119] + "…"
    lines = [payload["summary"], ""]
    lines += [f"{k}: {v}" for k, v in sorted(payload["fields"].items())]
    lines += [f"host: {payload['host']}", f"time: {payload['time']}",
              f"event id: {payload['id']}"]
    return title, "\n".join(lines)


# --- the watchdog's transitions: one notice per change, never one per tick -----------------

BAD_STATES = frozenset({"degraded", "revert-failed", "nginx-down"})


@dataclass
class HealthAlerts:
    """Turns watchdog state changes into ``degraded`` / ``recovered`` (pure).

    Entering any bad state from a good one is one ``degraded``; moving between bad states
    (degraded -> revert-failed -> degraded) says nothing more; only ``healthy`` after a bad
    state is ``recovered``. Transient states (failing, paused, reverted, ...) change nothing.
    """

    down: bool = False

    def transition(self, new: str) -> str | None:
        if new in BAD_STATES and not self.down:
            self.down = True
            return "degraded"
        if new == "healthy" and self.down:
            self.down = False
            return "recovered"
        return None
