"""One deploy per app at a time: an flock on ``<state_dir>/<app>.lock``.

The kernel drops an flock when its holder dies, so a crashed deploy never wedges the app. The
file also records who holds it (user, PID, time, what) so a waiter can say whom it waits for,
and a taker can say it took over from a dead process.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from zdagent.errors import LockBusy
from zdagent.events import Emit, Event
from zdagent.runbook import with_link
from zdagent.store import current_user


@dataclass(frozen=True)
class LockOwner:
    pid: int
    user: str
    since: float
    what: str

    def describe(self) -> str:
        started = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"{self.what} by {self.user} (pid {self.pid}, since {started})"


def _read_owner(fd: int) -> LockOwner | None:
    try:
        raw = os.pread(fd, 4096, 0)
        return LockOwner(**json.loads(raw)) if raw.strip() else None
    except (OSError, ValueError, TypeError):
        return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def app_lock(state_dir: Path, app: str, what: str, emit: Emit, *, wait: bool = True,
             timeout: float = 3600.0) -> Iterator[None]:
    """Hold the app's deploy lock for the duration of the block."""
    path = state_dir / f"{app}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        if not _try_lock(fd):
            owner = _read_owner(fd)
            who = owner.describe() if owner else "another process"
            if not wait:
                raise LockBusy(f"{app} is busy: {who}",
                               hint=with_link("retry later, or drop --no-wait to queue "
                                              "behind it", "lock-held"))
            emit(Event("info", f"waiting for the lock: {who}"))
            deadline = time.monotonic() + timeout
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise LockBusy(f"gave up waiting for {app}'s lock after {timeout:.0f}s: "
                                   f"{who}", hint=with_link("check whether that process "
                                                            "is stuck", "lock-held"))
                time.sleep(0.2)
        previous = _read_owner(fd)
        if previous and previous.pid != os.getpid() and not psutil.pid_exists(previous.pid):
            emit(Event("warn", f"took over a stale lock left by dead process {previous.pid} "
                               f"({previous.what} by {previous.user})"))
        me = LockOwner(pid=os.getpid(), user=current_user(), since=time.time(), what=what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode(), 0)
        os.fsync(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
