"""The daemon's worker threads: one pool per kind of engine call, so none starves another.

``asyncio.to_thread`` shares the default executor (min(32, cpus + 4) threads: 6 on a 2-core
host), so six long deploys would keep a seventh app's auto-revert and every ``status`` waiting.
Here operations (deploys, rollbacks, recovery) get a pool as large as the number of apps (each
app runs one at a time), watchdog actions another of the same size (one per app at a time,
under the app's lock), and reads a small one of their own: a burst of ``status`` requests
never delays a revert. Notifications have one thread of their own (a slow receiver delays
only other notifications). Threads are made on demand; the pools grow when a reload adds apps.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

MIN_OPERATIONS = 4
MIN_WATCHDOG = 2
READS = 4
WEB = 2  # the status page's and /metrics' looks at the slots: never a control read's thread


class Pools:
    """``operations``, ``watchdog``, ``reads`` and ``notify`` executors; ``fit`` grows the
    first two."""

    def __init__(self, apps: int = 0) -> None:
        self.reads = ThreadPoolExecutor(READS, thread_name_prefix="zd-read")
        self.web = ThreadPoolExecutor(WEB, thread_name_prefix="zd-web")
        self.notify = ThreadPoolExecutor(1, thread_name_prefix="zd-notify")
        self.operations = self._make("op", MIN_OPERATIONS, apps)
        self.watchdog = self._make("watch", MIN_WATCHDOG, apps)
        self._old: list[ThreadPoolExecutor] = []

    @staticmethod
    def _make(kind: str, least: int, apps: int) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max(least, apps), thread_name_prefix=f"zd-{kind}")

    @staticmethod
    def size(pool: ThreadPoolExecutor) -> int:
        return pool._max_workers

    def fit(self, apps: int) -> None:
        """Grow to ``apps`` workers (never shrink); calls already running finish where they
        are (the old pool is shut down without waiting)."""
        if apps > self.size(self.operations):
            self._old.append(self.operations)
            self.operations.shutdown(wait=False)
            self.operations = self._make("op", MIN_OPERATIONS, apps)
        if apps > self.size(self.watchdog):
            self._old.append(self.watchdog)
            self.watchdog.shutdown(wait=False)
            self.watchdog = self._make("watch", MIN_WATCHDOG, apps)

    def submit(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any
               ) -> asyncio.Future[T]:
        """``fn(*args)`` in ``pool``, as an asyncio future of the running loop."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(pool, functools.partial(fn, *args))

    async def run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(pool, fn, *args)

    def shutdown(self) -> None:
        """No new work; threads still running end on their own (joined at exit)."""
        for pool in (self.operations, self.watchdog, self.reads, self.web, self.notify,
                     *self._old):
            pool.shutdown(wait=False)

