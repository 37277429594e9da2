"""The daemon's side of the engine: one long-lived Docker client, engine calls in threads.

Every Engine the daemon makes borrows the same Docker client (the Engine never closes a client
it was given), so a status read costs no new connection to Docker. A dead engine is found by
one ping per operation and answered as the usual environment error (exit 3), exactly as the
CLI without a daemon would.
"""

from __future__ import annotations

import inspect
import threading
import traceback
from collections.abc import Callable
from typing import Any

from zdagent.config import AppConfig
from zdagent.deploy import Engine
from zdagent.errors import EnvironmentProblem, ZdError
from zdagent.events import Emit, Event
from zdagent.store import Store

WATCHDOG_PERFORMER = "zdagentd (watchdog)"
POOL_SIZE = 2
SHARE_CLIENT = False  # True: status reads borrow the daemon's one Docker client


class DockerHandle:
    """Connects on first use, then hands out the same client (pinged first)."""

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        from zdagent.slots import connect

        with self._lock:
            if self._client is None:
                import docker

                try:  # few kept connections: the daemon's descriptors stay flat
                    client = docker.from_env(max_pool_size=POOL_SIZE)
                    client.ping()
                except Exception:
                    client = connect()  # raises the usual EnvironmentProblem (exit 3)
                self._client = client
                return self._client
        try:
            self._client.ping()
        except Exception as e:  # requests' connection errors as well as Docker's own
            raise EnvironmentProblem(
                f"cannot reach the Docker engine: {type(e).__name__}",
                hint="is dockerd running (`systemctl start docker`)?") from None
        return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class Engines:
    """Makes Engines for the daemon: shared Docker client, the caller as performer."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.docker = DockerHandle()
        self.log = log

    def engine(self, cfg: AppConfig, emit: Emit, performer: str | None = None,
               *, shared: bool = False) -> Engine:
        """``shared``: borrow the long-lived client (reads). Operations get their own client,
        closed after: a streamed Docker response left unclosed (slots.py) would otherwise
        keep a connection of the shared client open for the daemon's lifetime."""
        if shared:
            return Engine(cfg, emit, docker_client=self.docker.get(), performer=performer)
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
        """Run a deploy or rollback; its outcome as an API item, never raised."""
        wait = not args.get("no_wait", False)
        try:
            with self.engine(cfg, emit, performer) as engine:
                if what == "deploy":
                    result = engine.deploy(args["version"], wait=wait)
                else:
                    result = engine.rollback(to=args["to"], wait=wait)
            return {"result": result.to_dict()}
        except ZdError as e:
            return {"error": {"message": e.message, "hint": e.hint, "exit_code": e.exit_code}}
        except Exception as e:  # report, never kill the daemon
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
        store = Store(cfg.state_dir)
        try:
            did = store.begin(cfg.name, what, version, None, None, user=performer)
            store.finish(did, "cancelled", why)
        finally:
            store.close()

    def status(self, cfg: AppConfig) -> dict[str, Any]:
        from zdagent.status import collect

        # Not shared yet: with one long-lived client the soak saw the daemon's Docker
        # connections grow (7 -> 16 fds over 20 operations); see the integrator's note.
        with self.engine(cfg, _discard, shared=SHARE_CLIENT) as engine:
            return collect(engine)

    @staticmethod
    def history(cfg: AppConfig, limit: int) -> list[dict[str, Any]]:
        store = Store(cfg.state_dir)
        try:
            return [r.to_dict() for r in store.history(cfg.name, limit)]
        finally:
            store.close()


def _discard(_event: Event) -> None:
    pass
