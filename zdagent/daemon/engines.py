"""The daemon's side of the engine: an Engine per call, run in the daemon's threads.

Each Engine opens its own Docker client and closes it when done. A long-lived client shared
by every call was tried: in the soak the daemon's descriptors grew with each operation
(7 -> 16 fds over 20 operations), because a streamed Docker response left unread keeps one
of the shared client's pooled connections open for the daemon's lifetime. A client per call
costs a connection, and nothing leaks. Docker being down is found by the Engine as it
connects and answered as the usual environment error (exit 3), exactly as the CLI without a
daemon would.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from typing import Any

from zdagent.config import AppConfig
from zdagent.deploy import Engine
from zdagent.errors import ZdError, as_known
from zdagent.events import Emit, Event
from zdagent.store import Store, read_history

WATCHDOG_PERFORMER = "zdagentd (watchdog)"


class Engines:
    """Makes Engines for the daemon, with the caller as performer."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    @staticmethod
    def engine(cfg: AppConfig, emit: Emit, performer: str | None = None) -> Engine:
        """A fresh Engine with its own Docker client (closed on exit): see the module doc."""
        return Engine(cfg, emit, performer=performer)

    def journal(self, cfg: AppConfig) -> Emit:
        return lambda e: self.log(f"{cfg.name}: {e.message}")

    def recover(self, cfg: AppConfig) -> None:
        """Reconcile a crashed run before the app is served; log, never raise."""
        try:
            with self.engine(cfg, self.journal(cfg), "zdagentd") as engine:
                engine.recover()
        except ZdError as e:
            self.log(f"{cfg.name}: recovery failed: {e.message}")
        except Exception:
            self.log(f"{cfg.name}: recovery failed:\n{traceback.format_exc().rstrip()}")

    def operate(self, cfg: AppConfig, emit: Emit, what: str, args: dict[str, Any],
                performer: str) -> dict[str, Any]:
        """Run a deploy, canary or rollback; its outcome as an API item, never raised."""
        wait = not args.get("no_wait", False)
        try:
            with self.engine(cfg, emit, performer) as engine:
                if what == "deploy":
                    result = engine.deploy(args["version"], wait=wait)
                elif what == "canary":
                    result = engine.canary(args["version"], args["control"], args["figures"],
                                           wait=wait)
                else:
                    result = engine.rollback(to=args["to"], wait=wait)
            return {"result": result.to_dict()}
        except Exception as e:  # report, never kill the daemon
            known = as_known(e)  # ours, or a full disk: the operator's to fix
            if known is not None:
                return {"error": {"message": known.message, "hint": known.hint,
                                  "exit_code": known.exit_code}}
            self.log(f"{cfg.name}: {what} failed unexpectedly:\n"
                     + traceback.format_exc().rstrip())
            return {"error": {"message": f"unexpected error: {type(e).__name__}: {e}",
                              "hint": "this is a bug; see the daemon's log",
                              "exit_code": 70}}

    def watchdog_action(self, cfg: AppConfig, method: str, reason: str,
                        expected_live: str | None) -> str | None:
        """``auto_revert`` / ``restart_live`` for the watchdog: None when done, else why not.

        The caller holds the app's queue lock. ``expected_live`` is what the watchdog saw
        live when it decided; if another slot is live now, nothing is done.
        """
        try:
            with self.engine(cfg, self.journal(cfg), WATCHDOG_PERFORMER) as engine:
                action = getattr(engine, method)
                if expected_live is None:
                    action(reason)
                elif "expected_live" in inspect.signature(action).parameters:
                    action(reason, expected_live=expected_live)
                else:  # an engine without the re-check: do it here, under the lock
                    live = engine.live_slot()
                    if live != expected_live:
                        return (f"the live slot is now {live or 'none'}, not {expected_live}: "
                                "nothing done")
                    action(reason)
            return None
        except ZdError as e:
            return e.message
        except Exception as e:
            self.log(f"{cfg.name}: {method} failed unexpectedly:\n"
                     + traceback.format_exc().rstrip())
            return f"unexpected error: {type(e).__name__}: {e}"

    def record_cancelled(self, cfg: AppConfig, what: str, version: str | None,
                         performer: str, why: str) -> None:
        """A history row for an operation that never started."""
        with Store(cfg.state_dir) as store:
            did = store.begin(cfg.name, what, version, None, None, user=performer)
            store.finish(did, "cancelled", why)

    def maintenance(self, cfg: AppConfig, on: bool, message: str, retry_after: int,
                    performer: str) -> dict[str, Any] | None:
        """Turn maintenance on or off (verified through Nginx); the state now."""
        with self.engine(cfg, self.journal(cfg), performer) as engine:
            return engine.maintenance(on, message, retry_after)

    def status(self, cfg: AppConfig) -> dict[str, Any]:
        from zdagent.status import collect

        with self.engine(cfg, _discard) as engine:
            return collect(engine)

    @staticmethod
    def history(cfg: AppConfig, limit: int) -> list[dict[str, Any]]:
        return read_history(cfg.state_dir, cfg.name, limit)


def _discard(_event: Event) -> None:
    pass
