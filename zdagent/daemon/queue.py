"""Per-app operation queue: one operation at a time per app, in arrival order.

An operation (a deploy or a rollback asked for over the API) is an asyncio task of its own,
independent of the connection that asked for it: the connection only reads its events. While
it waits in the queue, a client that goes away cancels it (recorded in history as
``cancelled``); once started it always runs to the end, so a client that disconnects
mid-deploy never leaves a half-switched app.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from zdagent.canary import Control
from zdagent.config import AppConfig
from zdagent.events import Event
from zdagent.watchdog import WatchState

Item = dict[str, Any]
# Runs the operation in a worker thread with (cfg, emit); returns {"result"} or {"error"}.
Work = Callable[[AppConfig, Callable[[Event], None]], Item]


@dataclass
class AppRuntime:
    """One app in the daemon: its config (replaced on reload), lock, queue and watchdog."""

    cfg: AppConfig
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: WatchState = field(default_factory=WatchState)
    queued: int = 0
    canary: Control | None = None  # the running canary's promote/abort line

    def busy(self) -> bool:
        return self.lock.locked()


@dataclass
class Operation:
    """One queued or running operation and the events it has produced."""

    what: str  # deploy | canary | rollback
    version: str | None
    performer: str
    gone: asyncio.Event
    items: asyncio.Queue[Item | None] = field(default_factory=asyncio.Queue)
    state: str = "queued"  # queued | running | done | cancelled


class Queue:
    """Starts operations as tasks; tracks them so shutdown can wait for the running ones."""

    def __init__(self, stopping: Callable[[], bool],
                 cancelled: Callable[[AppConfig, Operation], None],
                 log: Callable[[str], None], executor: Executor | None = None) -> None:
        self.stopping = stopping
        self.record_cancelled = cancelled
        self.log = log
        self.executor = executor  # operations' own threads (None: asyncio's default)
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, rt: AppRuntime, op: Operation, work: Work) -> AsyncIterator[Item]:
        """Queue ``op`` on ``rt``; the returned stream yields its events then its outcome."""
        if rt.busy() or rt.queued:
            op.items.put_nowait({"event": Event(
                "info", f"queued: another operation on {rt.cfg.name} is running").to_dict()})
        rt.queued += 1  # counted at once: the next request already sees it
        task = asyncio.create_task(self._run(rt, op, work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return self._stream(op)

    @staticmethod
    async def _stream(op: Operation) -> AsyncIterator[Item]:
        while (item := await op.items.get()) is not None:
            yield item

    async def _run(self, rt: AppRuntime, op: Operation, work: Work) -> None:
        loop = asyncio.get_running_loop()

        def emit(ev: Event) -> None:
            loop.call_soon_threadsafe(op.items.put_nowait, {"event": ev.to_dict()})

        try:
            if not await self._acquire(rt, op):
                return
            try:
                if self.stopping():
                    op.items.put_nowait(_error("the daemon is stopping; not started",
                                               "retry once it is back", 3))
                    return
                op.state = "running"
                cfg = rt.cfg  # a reload after this point does not change a running operation
                outcome = await loop.run_in_executor(self.executor, work, cfg, emit)
                # Events emitted from the thread are scheduled before this line runs.
                await asyncio.sleep(0)
                self.log(f"{cfg.name}: {op.what} by {op.performer} "
                         + ("succeeded" if "result" in outcome else
                            f"failed: {outcome['error']['message']}"))
                op.items.put_nowait(outcome)
            finally:
                rt.lock.release()
        finally:
            if op.state != "cancelled":
                op.state = "done"
            op.items.put_nowait(None)

    async def _acquire(self, rt: AppRuntime, op: Operation) -> bool:
        """Wait for the app's lock, unless the client goes away first (then: cancelled)."""
        acquire = asyncio.ensure_future(rt.lock.acquire())
        gone = asyncio.ensure_future(op.gone.wait())
        try:
            await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            rt.queued -= 1
            gone.cancel()
        if not op.gone.is_set():
            return True
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            if await acquire:
                rt.lock.release()
        op.state = "cancelled"
        self.log(f"{rt.cfg.name}: queued {op.what} {op.version or ''} by {op.performer} "
                 "cancelled: the client went away")
        try:
            await asyncio.to_thread(self.record_cancelled, rt.cfg, op)
        except Exception as e:  # the cancel stands even if the record fails
            self.log(f"{rt.cfg.name}: could not record the cancelled {op.what}: {e}")
        return False

    async def drain(self) -> None:
        """Wait for every operation task (queued ones see the stop and end at once)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def _error(message: str, hint: str, exit_code: int) -> Item:
    return {"error": {"message": message, "hint": hint, "exit_code": exit_code}}
