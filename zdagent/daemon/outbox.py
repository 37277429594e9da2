"""The daemon's side of notifications: the delivery loop and the watchdog's alerts.

One supervised task drains every app's outbox each ``INTERVAL`` in the daemon's notification
thread (``Pools.notify``), so a slow receiver never holds up the event loop, a deploy or a
read. The watchdog's state changes become ``degraded`` / ``recovered`` events (one per
transition, see ``HealthAlerts``), queued from the same thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from zdagent.config import AppConfig
from zdagent.notifications import outbox
from zdagent.notifications.deliver import drain
from zdagent.notifications.events import BAD_STATES, HealthAlerts
from zdagent.store import Store

INTERVAL = 1.0  # a queued event waits at most this long for its first try
ROUND_SECONDS = 20.0  # one app's drain round, at most (each send is bounded too)
TIDY_EVERY = 60.0  # removed channels' deliveries given up, old events deleted


class Delivery:
    """Drains the outboxes of the daemon's apps; remembers what it logged, to log changes."""

    def __init__(self, apps: Callable[[], list[AppConfig]], executor: Callable[[], Executor],
                 stop: asyncio.Event, log: Callable[[str], None]) -> None:
        self.apps = apps
        self.executor = executor
        self.stop = stop
        self.log = log
        self.alerts: dict[str, HealthAlerts] = {}
        self._logged: dict[tuple[str, str], str] = {}
        self._tidied: dict[str, float] = {}

    async def run(self) -> None:
        """The supervised loop: a round per app, then wait ``INTERVAL`` (or stop)."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            await asyncio.gather(*(loop.run_in_executor(self.executor(), self._round, cfg)
                                   for cfg in self.apps() if cfg.notify))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), INTERVAL)

    def _round(self, cfg: AppConfig) -> None:
        now = time.time()
        tidy = now - self._tidied.get(cfg.name, 0.0) >= TIDY_EVERY
        try:  # one app's unusable store must not hold up the other apps' notifications
            with Store(cfg.state_dir) as store:
                done = drain(store, cfg, now + ROUND_SECONDS, tidy=tidy)
        except Exception as e:
            self._log_once((cfg.name, ""), f"{cfg.name}: notifications: {type(e).__name__}: {e}")
            return
        self._logged.pop((cfg.name, ""), None)
        if tidy:
            self._tidied[cfg.name] = now
        for channel in cfg.notify:
            key = (cfg.name, channel.name)
            error = done.failed.get(channel.name)
            if error:
                self._log_once(key, f"{cfg.name}: notification to {channel.name} failed "
                                    f"(retrying with backoff): {error}")
            elif key in self._logged and channel.name in done.reached:
                self.log(f"{cfg.name}: notifications to {channel.name} are delivered again")
                del self._logged[key]

    def _log_once(self, key: tuple[str, str], line: str) -> None:
        """Log ``line`` unless it is what was last logged for ``key`` (no line per retry)."""
        if self._logged.get(key) != line:
            self.log(line)
            self._logged[key] = line

    def watch_changes(self, name: str, cfg: Callable[[], AppConfig],
                      reason: Callable[[], str | None]) -> Callable[[str, str], None]:
        """A WatchState.on_change for app ``name``: queues degraded / recovered. Decided in
        the notification thread (in order: it is one thread), which starts from the last
        such event in the store: a restarted daemon still tells the app's recovery."""
        def changed(old: str, new: str) -> None:
            if (new not in BAD_STATES and new != "healthy") or not cfg().notify:
                return  # transient states change nothing (see HealthAlerts)
            fields = {"state": new, "previous": old, "reason": reason()}
            try:  # called inside the watchdog's tick: never raise into it
                self.executor().submit(self._changed, name, cfg(), fields)
            except RuntimeError as e:  # the pool is shut down: the daemon is stopping
                self.log(f"{name}: health notification not queued: {e}")

        return changed

    def _changed(self, name: str, cfg: AppConfig, fields: dict[str, Any]) -> None:
        try:
            with Store(cfg.state_dir) as store:
                alerts = self.alerts.get(name)
                if alerts is None:  # this daemon's first change: what did the last one say?
                    last = outbox.last_health_event(store, cfg.name)
                    alerts = self.alerts[name] = HealthAlerts(down=last == "degraded")
                event = alerts.transition(fields["state"])
                if event is not None:
                    outbox.queue(store, cfg, event, fields)
        except Exception as e:
            self.log(f"{cfg.name}: could not queue the {fields['state']} notification: "
                     f"{type(e).__name__}: {e}")
