"""Embedded, crash-safe state and history: stdlib sqlite3 in WAL mode.

``deploys`` is the audit trail (one row per deploy, rollback or recovery, with
per-phase timings), and ``app_state`` holds the phase an app is in right now, the slot being
started and whether it is a fresh candidate or the standby a rollback restarts, so a crash
mid-deploy is found by a lookup on the next run rather than guessed. ``notify_outbox`` and
``notify_delivery`` are the notifications' durable outbox (zdagent.notifications.outbox).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from zdagent.errors import EnvironmentProblem

SCHEMA = """
CREATE TABLE IF NOT EXISTS deploys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT,
    image TEXT,
    image_id TEXT,
    slot TEXT,
    from_slot TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL,
    error TEXT,
    phases TEXT NOT NULL DEFAULT '[]',
    user TEXT,
    pid INTEGER,
    source_ref TEXT,
    reason TEXT,
    notes TEXT
);
CREATE INDEX IF NOT EXISTS deploys_app ON deploys(app, id);
CREATE TABLE IF NOT EXISTS app_state (
    app TEXT PRIMARY KEY,
    live_slot TEXT,
    phase TEXT NOT NULL,
    deploy_id INTEGER,
    candidate_slot TEXT,
    updated_at REAL NOT NULL,
    candidate_kind TEXT
);
CREATE TABLE IF NOT EXISTS notify_outbox (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notify_delivery (
    event_id TEXT NOT NULL REFERENCES notify_outbox(id),
    channel TEXT NOT NULL,
    app TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    delivered_at REAL,
    gave_up_at REAL,
    last_error TEXT,
    PRIMARY KEY (event_id, channel)
);
CREATE INDEX IF NOT EXISTS notify_due ON notify_delivery(app, delivered_at, next_attempt_at);
CREATE TABLE IF NOT EXISTS canary (
    app TEXT PRIMARY KEY,
    deploy_id INTEGER NOT NULL,
    version TEXT,
    stable TEXT NOT NULL,
    candidate TEXT NOT NULL,
    step INTEGER NOT NULL,
    steps TEXT NOT NULL,
    percent INTEGER NOT NULL,
    started_at REAL NOT NULL,
    step_started_at REAL NOT NULL,
    owner_pid INTEGER NOT NULL,
    figures TEXT NOT NULL DEFAULT '{}'
);
"""


class Phase(StrEnum):
    """Where an app is; stored before each step so a crash leaves a lookup, not a guess."""

    IDLE = "idle"
    PRE_DEPLOY = "pre_deploy"  # the host's pre_deploy hook
    SOURCE = "source"
    RELEASE = "release"  # the release command, in a one-off container of the candidate image
    START = "start"
    PROBE = "probe"
    SMOKE = "smoke"  # HTTP smoke checks on the healthy candidate
    SWITCH = "switch"
    DRAIN = "drain"
    CANARY = "canary"  # both slots serve: a split; recovery puts everything back on stable


# What the slot being started is: a fresh container (its removal on failure costs nothing) or
# the existing standby restarted by a rollback (it must survive a failure or a crash).
FRESH = "fresh"
STANDBY = "standby"


@dataclass
class PhaseRecord:
    name: str
    started_at: float
    duration: float | None = None
    ok: bool | None = None


@dataclass
class DeployRecord:
    """One row of history."""

    id: int
    app: str
    kind: str  # deploy | rollback | recover
    version: str | None
    image: str | None
    image_id: str | None
    slot: str | None
    from_slot: str | None
    started_at: float
    finished_at: float | None
    outcome: str  # running | succeeded | failed | interrupted | cancelled
    error: str | None
    user: str | None
    pid: int | None
    source_ref: str | None = None
    reason: str | None = None
    notes: str | None = None  # what went wrong without failing it (a post_ hook)
    phases: list[PhaseRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AppState:
    app: str
    live_slot: str | None
    phase: str
    deploy_id: int | None
    candidate_slot: str | None
    updated_at: float
    candidate_kind: str | None = None  # FRESH | STANDBY; None in rows from older versions


@dataclass(frozen=True)
class CanaryState:
    """A running canary: which step, which share, since when, owned by which process."""

    app: str
    deploy_id: int
    version: str | None
    stable: str
    candidate: str
    step: int  # 1-based index into steps
    steps: list[int]
    percent: int
    started_at: float
    step_started_at: float
    owner_pid: int
    figures: dict[str, Any] = field(default_factory=dict)  # the last step's analysis

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_user() -> str:
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except Exception:  # no passwd entry in a container: the uid is still informative
        return str(os.getuid())


class Store:
    """History and per-app state in ``<state_dir>/zdagent.db``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "zdagent.db"
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: consistent after any crash; a power cut may lose only the last commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._migrate()
        except (OSError, sqlite3.Error) as e:
            raise EnvironmentProblem(
                f"cannot open the state store at {self.path}: {e}",
                hint="check app.state_dir exists and is writable by this user",
            ) from None

    def _migrate(self) -> None:
        """Add columns that older stores lack (SQLite ALTER TABLE only appends)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(deploys)")}
        for column in ("source_ref", "reason", "notes"):
            if column not in have:
                self._db.execute(f"ALTER TABLE deploys ADD COLUMN {column} TEXT")
        have = {row[1] for row in self._db.execute("PRAGMA table_info(app_state)")}
        if "candidate_kind" not in have:
            self._db.execute("ALTER TABLE app_state ADD COLUMN candidate_kind TEXT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` write transaction (for tables kept by other modules)."""
        return self._tx()

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A read outside any transaction (for tables kept by other modules)."""
        return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- history ------------------------------------------------------------------------

    def begin(self, app: str, kind: str, version: str | None, slot: str | None,
              from_slot: str | None, *, user: str | None = None) -> int:
        """Open a history row; ``user`` is who asked (the daemon passes its caller)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO deploys(app, kind, version, slot, from_slot, started_at, outcome,"
                " user, pid) VALUES (?,?,?,?,?,?,?,?,?)",
                (app, kind, version, slot, from_slot, time.time(), "running",
                 user or current_user(), os.getpid()),
            )
            return int(cur.lastrowid or 0)

    def update(self, deploy_id: int, **fields: Any) -> None:
        allowed = {"version", "image", "image_id", "slot", "from_slot", "error", "outcome",
                   "source_ref", "reason", "notes"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown fields {bad}")
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE deploys SET {cols} WHERE id=?", (*fields.values(), deploy_id))

    def add_note(self, deploy_id: int, note: str) -> None:
        """Append to the record's notes (a finished record too)."""
        with self._tx() as db:
            db.execute("UPDATE deploys SET notes = CASE WHEN notes IS NULL OR notes = ''"
                       " THEN ? ELSE notes || '; ' || ? END WHERE id=?",
                       (note, note, deploy_id))

    def set_phases(self, deploy_id: int, phases: list[PhaseRecord]) -> None:
        with self._tx() as db:
            db.execute("UPDATE deploys SET phases=? WHERE id=?",
                       (json.dumps([asdict(p) for p in phases]), deploy_id))

    def finish(self, deploy_id: int, outcome: str, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE deploys SET outcome=?, error=?, finished_at=? WHERE id=?",
                       (outcome, error, time.time(), deploy_id))

    def history(self, app: str, limit: int = 20) -> list[DeployRecord]:
        rows = self._db.execute(
            "SELECT * FROM deploys WHERE app=? ORDER BY id DESC LIMIT ?", (app, limit)
        ).fetchall()
        return [self._record(r) for r in rows]

    def history_since(self, app: str, after_id: int) -> list[DeployRecord]:
        """``app``'s records newer than ``after_id``, oldest first (metrics follow these)."""
        rows = self._db.execute(
            "SELECT * FROM deploys WHERE app=? AND id>? ORDER BY id", (app, after_id)
        ).fetchall()
        return [self._record(r) for r in rows]

    def get(self, deploy_id: int) -> DeployRecord | None:
        row = self._db.execute("SELECT * FROM deploys WHERE id=?", (deploy_id,)).fetchone()
        return self._record(row) if row else None

    def last_success_of(self, app: str, version: str) -> DeployRecord | None:
        row = self._db.execute(
            "SELECT * FROM deploys WHERE app=? AND version=? AND outcome='succeeded'"
            " AND image_id IS NOT NULL ORDER BY id DESC LIMIT 1",
            (app, version),
        ).fetchone()
        return self._record(row) if row else None

    @staticmethod
    def _record(row: sqlite3.Row) -> DeployRecord:
        d = dict(row)
        phases = [PhaseRecord(**p) for p in json.loads(d.pop("phases") or "[]")]
        return DeployRecord(**d, phases=phases)

    # --- current state ------------------------------------------------------------------

    def state(self, app: str) -> AppState:
        row = self._db.execute("SELECT * FROM app_state WHERE app=?", (app,)).fetchone()
        if row is None:
            return AppState(app, None, "idle", None, None, 0.0)
        return AppState(**dict(row))

    def set_state(self, app: str, *, phase: str, live_slot: str | None,
                  deploy_id: int | None = None, candidate_slot: str | None = None,
                  candidate_kind: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO app_state(app, live_slot, phase, deploy_id, candidate_slot,"
                " updated_at, candidate_kind) VALUES (?,?,?,?,?,?,?) ON CONFLICT(app) DO"
                " UPDATE SET live_slot=excluded.live_slot, phase=excluded.phase,"
                " deploy_id=excluded.deploy_id, candidate_slot=excluded.candidate_slot,"
                " updated_at=excluded.updated_at, candidate_kind=excluded.candidate_kind",
                (app, live_slot, phase, deploy_id, candidate_slot, time.time(),
                 candidate_kind),
            )


    # --- a running canary ---------------------------------------------------------------

    def canary(self, app: str) -> CanaryState | None:
        row = self._db.execute("SELECT * FROM canary WHERE app=?", (app,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["steps"] = json.loads(d["steps"])
        d["figures"] = json.loads(d["figures"] or "{}")
        return CanaryState(**d)

    def set_canary(self, state: CanaryState) -> None:
        d = state.to_dict()
        d["steps"] = json.dumps(d["steps"])
        d["figures"] = json.dumps(d["figures"])
        cols = ", ".join(d)
        with self._tx() as db:
            db.execute(f"INSERT OR REPLACE INTO canary({cols}) VALUES "
                       f"({', '.join('?' for _ in d)})", tuple(d.values()))

    def clear_canary(self, app: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM canary WHERE app=?", (app,))


def read_history(state_dir: Path, app: str, limit: int) -> list[dict[str, Any]]:
    """``app``'s newest ``limit`` records as JSON-ready dicts (the CLI and the daemon)."""
    with Store(state_dir) as store:
        return [r.to_dict() for r in store.history(app, limit)]
