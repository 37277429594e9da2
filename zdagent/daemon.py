"""``zdagent daemon``: one process for every app in the config directory.

At start it reconciles every app (a crashed deploy is repaired before anything else), opens
the control socket, tells systemd READY=1, then runs one watchdog per app and pings systemd's
watchdog from its main loop while that loop is alive. Deploys of one app run one after the
other, in arrival order; apps are independent. On SIGTERM it stops accepting work, lets the
running deploy finish its phases (so Nginx never points at a dead slot), and exits.

Signal handlers only set an event; the loop does the work. Blocking engine calls run in
threads, one fresh Engine per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zdagent import __version__, api
from zdagent.config import AppConfig, check_version, load_config
from zdagent.deploy import Engine
from zdagent.errors import ConfigError, LockBusy, ZdError
from zdagent.events import Event
from zdagent.gitsource import check_ref
from zdagent.notify import Notifier
from zdagent.watchdog import WatchHooks, WatchState, async_client, watch


@dataclass
class AppRuntime:
    cfg: AppConfig
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: WatchState = field(default_factory=WatchState)
    queued: int = 0


def log(message: str) -> None:
    """One line to stderr: the journal under systemd."""
    print(f"zdagent: {message}", file=sys.stderr, flush=True)


def load_apps(config_dir: Path) -> dict[str, AppConfig]:
    apps: dict[str, AppConfig] = {}
    for path in sorted(config_dir.glob("*.toml")):
        cfg = load_config(path)
        if cfg.name != path.stem:
            raise ConfigError(f"{path}: app.name is {cfg.name!r} but the file is named "
                              f"{path.name}", hint=f"rename it to {cfg.name}.toml")
        apps[cfg.name] = cfg
    return apps


class Daemon:
    def __init__(self, config_dir: Path, socket_path: Path, socket_group: str | None) -> None:
        self.config_dir = config_dir
        self.socket_path = socket_path
        self.socket_group = socket_group
        self.apps: dict[str, AppRuntime] = {}
        self.stop = asyncio.Event()
        self.started = time.time()
        self.notifier = Notifier()

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.apps = {name: AppRuntime(cfg) for name, cfg in load_apps(self.config_dir).items()}
        log(f"{len(self.apps)} app(s) in {self.config_dir}: {', '.join(self.apps) or 'none'}")
        for rt in self.apps.values():
            await asyncio.to_thread(self._engine_call, rt.cfg, "recover")
        server = await self._listen()
        self.notifier.ready(self.summary())
        log(f"ready; control socket {self.socket_path}")
        client = async_client()
        watchers = [asyncio.create_task(watch(rt.cfg, rt.state, self._hooks(rt), self.stop,
                                              client))
                    for rt in self.apps.values()]
        await self._main_loop()
        self.notifier.stopping()
        log("stopping: no new work; waiting for running deploys to finish")
        server.close()
        for rt in self.apps.values():
            async with rt.lock:  # a running deploy finishes its phases first
                pass
        await asyncio.gather(*watchers, return_exceptions=True)
        await client.aclose()
        self.socket_path.unlink(missing_ok=True)
        log("stopped")

    async def _main_loop(self) -> None:
        ping = self.notifier.watchdog_interval or 5.0
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=min(ping, 5.0))
            # The loop being here proves it is not hung: only then feed systemd's watchdog.
            self.notifier.watchdog()
            self.notifier.status(self.summary())

    async def _listen(self) -> asyncio.AbstractServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        old = os.umask(0o117)  # the socket is created 0660: never world-writable
        try:
            server = await asyncio.start_unix_server(
                lambda r, w: api.serve_connection(r, w, self.handle), path=str(self.socket_path))
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o660)
        if self.socket_group:
            os.chown(self.socket_path, -1, grp.getgrnam(self.socket_group).gr_gid)
        return server

    def summary(self) -> str:
        bad = [f"app {n} {rt.state.status}" for n, rt in self.apps.items()
               if rt.state.status in ("degraded", "failing")]
        return f"{len(self.apps)} apps, " + ("; ".join(bad) if bad else "all healthy")

    # --- watchdog hooks -----------------------------------------------------------------

    def _hooks(self, rt: AppRuntime) -> WatchHooks:
        async def act(method: str, reason: str, expected_live: str) -> str | None:
            if rt.lock.locked():
                return "a deploy or rollback holds the app's lock"
            async with rt.lock:
                return await asyncio.to_thread(self._engine_call, rt.cfg, method, reason,
                                               expected_live=expected_live)

        async def revert(reason: str, expected_live: str) -> str | None:
            return await act("auto_revert", reason, expected_live)

        async def restart(reason: str, expected_live: str) -> str | None:
            return await act("restart_live", reason, expected_live)

        return WatchHooks(busy=rt.lock.locked, revert=revert, restart=restart, log=log)

    def _engine_call(self, cfg: AppConfig, method: str, *args: Any, **kw: Any) -> str | None:
        """Run one engine operation in a worker thread (fresh Engine): None when done, else
        why not (logged, never raised)."""
        try:
            with Engine(cfg, lambda e: log(f"{cfg.name}: {e.message}")) as engine:
                getattr(engine, method)(*args, **kw)
            return None
        except LockBusy:
            why = "a deploy holds the app's lock"
        except ZdError as e:
            why = e.message
        except Exception as e:  # a bug: report it as a reason, keep the daemon alive
            why = f"unexpected error: {type(e).__name__}: {e}"
        log(f"{cfg.name}: {method} did not happen: {why}")
        return why

    # --- the API ------------------------------------------------------------------------

    async def handle(self, req: api.Request) -> api.Reply:
        if req.path == "/v1/status" and req.method == "GET":
            return self.status()
        m = api.ROUTE.match(req.path)
        if not m:
            raise api.ApiError(404, f"no such endpoint: {req.method} {req.path}")
        name, what = m.groups()
        rt = self.apps.get(name)
        if rt is None:
            raise api.ApiError(404, f"unknown app {name!r}")
        if what in ("status", "history") and req.method == "GET":
            return await asyncio.to_thread(self._read, rt, what, req.query)
        if what in ("deploy", "rollback") and req.method == "POST":
            if self.stop.is_set():
                raise api.ApiError(503, "the daemon is stopping", exit_code=3)
            args = self._validate(rt.cfg, what, req.body)
            if req.body.get("no_wait") is True and rt.lock.locked():
                raise api.ApiError(409, f"{name} is busy: another operation is running",
                                   exit_code=1)
            return self._operate(rt, what, args)
        raise api.ApiError(405, f"{req.method} not allowed on {req.path}")

    def status(self) -> dict[str, Any]:
        return {"daemon": {"pid": os.getpid(), "version": __version__, "since": self.started,
                           "socket": str(self.socket_path), "summary": self.summary()},
                "apps": {n: {**rt.state.to_dict(), "config": str(rt.cfg.path),
                             "busy": rt.lock.locked(), "queued": rt.queued}
                         for n, rt in self.apps.items()}}

    @staticmethod
    def _validate(cfg: AppConfig, what: str, body: dict[str, Any]) -> dict[str, Any]:
        from zdagent.config import GitSource

        try:
            if what == "deploy":
                version = body.get("version")
                if not isinstance(version, str):
                    raise api.ApiError(400, "deploy needs a string 'version'")
                (check_ref if isinstance(cfg.source, GitSource) else check_version)(version)
                return {"version": version}
            to = body.get("to")
            if to is not None and not isinstance(to, str):
                raise api.ApiError(400, "'to' must be a string or null")
            if to is not None:
                check_version(to)
            return {"to": to}
        except ConfigError as e:
            raise api.ApiError(400, e.message) from None

    def _read(self, rt: AppRuntime, what: str, query: dict[str, list[str]]) -> dict[str, Any]:
        from zdagent.status import collect
        from zdagent.store import Store

        if what == "history":
            limit = query.get("limit", ["20"])[0]
            n = int(limit) if limit.isdigit() and 0 < int(limit) <= 10000 else 20
            store = Store(rt.cfg.state_dir)
            try:
                return {"history": [r.to_dict() for r in store.history(rt.cfg.name, n)]}
            finally:
                store.close()
        with Engine(rt.cfg, lambda e: None) as engine:
            data = collect(engine)
        data["watchdog"] = rt.state.to_dict()
        data["daemon"] = self.status()["daemon"]
        return data

    def _operate(self, rt: AppRuntime, what: str, args: dict[str, Any]
                       ) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def emit(ev: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, {"event": ev.to_dict()})

        def work() -> dict[str, Any]:
            try:
                with Engine(rt.cfg, emit) as engine:
                    if what == "deploy":
                        result = engine.deploy(args["version"])
                    else:
                        result = engine.rollback(to=args["to"])
                return {"result": result.to_dict()}
            except ZdError as e:
                return {"error": {"message": e.message, "hint": e.hint,
                                  "exit_code": e.exit_code}}
            except Exception as e:  # report, never kill the daemon
                return {"error": {"message": f"unexpected error: {type(e).__name__}: {e}",
                                  "hint": "this is a bug; see the daemon's log",
                                  "exit_code": 70}}

        async def stream() -> AsyncIterator[dict[str, Any]]:
            if rt.lock.locked():
                yield {"event": Event("info", f"queued: another operation on {rt.cfg.name} "
                                              "is running").to_dict()}
            rt.queued += 1
            acquired = False
            try:
                async with rt.lock:
                    rt.queued -= 1
                    acquired = True
                    if self.stop.is_set():
                        yield {"error": {"message": "the daemon is stopping; not started",
                                         "hint": "retry once it is back", "exit_code": 3}}
                        return
                    task = asyncio.ensure_future(asyncio.to_thread(work))
                    while not task.done() or not queue.empty():
                        getter = asyncio.ensure_future(queue.get())
                        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                        if getter.done():
                            yield getter.result()
                        else:
                            getter.cancel()
                    outcome = task.result()
                    log(f"{rt.cfg.name}: {what} "
                        + ("succeeded" if "result" in outcome else
                           f"failed: {outcome['error']['message']}"))
                    yield outcome
            finally:
                if not acquired:
                    rt.queued -= 1

        return stream()


def run(config_dir: Path, socket_path: Path, socket_group: str | None) -> None:
    asyncio.run(Daemon(config_dir, socket_path, socket_group).run())


def main(argv: list[str] | None = None) -> None:
    """``zdagentd``: the daemon without the CLI's UI libraries (what systemd runs)."""
    import argparse

    from zdagent.config import CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR

    ap = argparse.ArgumentParser(prog="zdagentd", description="zdagent's daemon: watchdog "
                                 "and control socket for every app in the config directory.")
    ap.add_argument("--config-dir", type=Path,
                    default=Path(os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR))
    ap.add_argument("--socket", type=Path,
                    default=Path(os.environ.get("ZDAGENT_SOCKET") or api.DEFAULT_SOCKET))
    ap.add_argument("--socket-group", default=None,
                    help="group owning the control socket (mode 0660)")
    args = ap.parse_args(argv)
    try:
        run(args.config_dir, args.socket, args.socket_group)
    except ZdError as e:
        print(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
