"""Supervised tasks: a long-running coroutine that is restarted when it fails.

An unexpected exception is logged with its traceback, kept for ``status``, and the coroutine
is started again after a backoff that doubles per consecutive failure (capped), so a bug that
fails at once does not spin. While a task waits out its backoff it is not *alive* (status
shows it) but it is still *supervised*: its restart is scheduled at most ``MAX_BACKOFF`` away.
The server feeds systemd's watchdog while every task is supervised, so one app's failing
task never gets the whole daemon (and the other apps' deploys) killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a run this long resets the backoff


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1-based)."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, failures - 1))


@dataclass
class Supervised:
    """One supervised coroutine: its state as ``status`` shows it."""

    name: str
    factory: Callable[[], Awaitable[None]]
    log: Callable[[str], None]
    on_failure: Callable[[str, float], None] = lambda _error, _delay: None
    state: str = "starting"  # running | backoff | finished | stopped
    restarts: int = 0
    failures_in_row: int = 0
    last_error: str | None = None
    last_failure: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=self.name)

    @property
    def alive(self) -> bool:
        """Running (or returned normally); False while crashed and waiting to restart."""
        if self.state == "finished":
            return True
        return self.state == "running" and self.task is not None and not self.task.done()

    @property
    def supervised(self) -> bool:
        """Alive, or waiting out a bounded backoff before its restart; False once the task
        ended without finishing (stopped, or dead through a bug in this class)."""
        if self.state == "finished":
            return True
        return self.state in ("running", "backoff") and self.task is not None \
            and not self.task.done()

    async def _run(self) -> None:
        while True:
            self.state = "running"
            started = time.monotonic()
            try:
                await self.factory()
                self.state = "finished"
                return
            except asyncio.CancelledError:
                self.state = "stopped"
                raise
            except Exception as e:
                if time.monotonic() - started >= STABLE_AFTER:
                    self.failures_in_row = 0
                self.failures_in_row += 1
                self.restarts += 1
                self.last_failure = time.time()
                self.last_error = f"{type(e).__name__}: {e}"
                delay = backoff(self.failures_in_row)
                self.state = "backoff"
                self.log(f"{self.name} failed (restart {self.restarts} in {delay:g}s): "
                         f"{self.last_error}\n{traceback.format_exc().rstrip()}")
                with contextlib.suppress(Exception):
                    self.on_failure(self.last_error, delay)
                await asyncio.sleep(delay)

    async def stop(self, timeout: float, after_cancel: float = 1.0) -> None:
        """Wait up to ``timeout`` for the task to end by itself, then cancel it and wait up
        to ``after_cancel`` more. A task that holds on (it waits for an engine thread to end
        before it lets go of the app's lock) is left to end on its own: ``task`` is still
        there for the caller to await."""
        if self.task is None:
            return
        if self.state != "backoff":  # a task waiting out its backoff has nothing to finish
            await asyncio.wait({self.task}, timeout=timeout)
        if not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=after_cancel)
        if self.task.done() and not self.task.cancelled():
            self.task.exception()  # retrieved: never "exception was never retrieved"
        if self.state != "finished":
            self.state = "stopped"

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "alive": self.alive, "restarts": self.restarts,
                "last_error": self.last_error, "last_failure": self.last_failure}
