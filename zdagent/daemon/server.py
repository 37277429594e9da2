"""The daemon's lifecycle: startup, main loop, shutdown (after uvicorn's ``Server``).

Startup loads the app directory (a bad app file is reported, the others run), reconciles every
app (a crashed deploy is repaired before anything else), opens the control socket, tells
systemd READY=1 and starts one supervised watch task per app. The main loop feeds systemd's
watchdog while every task is alive or restarting after a bounded backoff, and re-reads the
app directory on SIGHUP. Shutdown
stops accepting work, lets running deploys finish their phases (so Nginx never points at a
dead slot) and exits. Signal handlers only set events; a second SIGTERM/SIGINT forces exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zdagent import __version__, api
from zdagent.canary import FigureSource
from zdagent.client import DEFAULT_SOCKET
from zdagent.config import AppConfig, load_app_dir
from zdagent.daemon.engines import Engines
from zdagent.daemon.outbox import Delivery
from zdagent.daemon.pools import Pools
from zdagent.daemon.queue import AppRuntime, Operation, Queue
from zdagent.daemon.routes import Routes
from zdagent.daemon.supervise import Supervised
from zdagent.errors import EnvironmentProblem, ZdError
from zdagent.notifications import outbox
from zdagent.notify import Notifier
from zdagent.store import Store, read_history
from zdagent.traffic.monitor import TrafficHooks, TrafficState, monitor
from zdagent.traffic.windows import Figures
from zdagent.watchdog import WatchHooks, watch

if TYPE_CHECKING:
    from zdagent.daemon.web import Listen, Web

STOP_WATCH_TIMEOUT = 10.0  # short: the main loop (and systemd's watchdog) waits meanwhile


def log(message: str) -> None:
    """One line to stderr: the journal under systemd."""
    print(f"zdagent: {message}", file=sys.stderr, flush=True)


@dataclass
class Watcher:
    """An app's watch task and the event that ends it (on reload or shutdown)."""

    task: Supervised
    stop: asyncio.Event
    traffic: Supervised | None = None  # the app's traffic figures and analysis (same stop)

    def tasks(self) -> list[Supervised]:
        return [self.task] if self.traffic is None else [self.task, self.traffic]


class Daemon:
    def __init__(self, config_dir: Path, socket_path: Path, socket_group: str | None,
                 limits: api.Limits | None = None, http: Listen | None = None) -> None:
        self.config_dir = config_dir
        self.socket_path = socket_path
        self.socket_group = socket_group
        self.limits = limits or api.Limits()
        self.apps: dict[str, AppRuntime] = {}
        self.config_errors: dict[str, str] = {}
        self.watchers: dict[str, Watcher] = {}
        self.stop = asyncio.Event()
        self.hup = asyncio.Event()
        self.started = time.time()
        self.notifier = Notifier()
        self.engines = Engines(log)
        self.pools = Pools()
        self.queue = Queue(self.stopping, self._record_cancelled, log, self.pools.operations)
        self.routes = Routes(self)
        self.api = api.Server(self.routes.handle, self.limits, log)
        self.reloads = 0
        self.background: set[asyncio.Task[None]] = set()
        self.recovering: set[str] = set()  # added on SIGHUP, not watched until recovered
        self.traffic: dict[str, TrafficState] = {}
        self.delivery = Delivery(lambda: [rt.cfg for rt in self.apps.values()],
                                 lambda: self.pools.notify, self.stop, log)
        self.deliverer = Supervised("notifications", self.delivery.run, log)
        self.web: Web | None = None  # status page and /metrics (prometheus_client: only then)
        if http:
            from zdagent.daemon.web import Web

            self.web = Web(self, http)
        self.web_server: asyncio.AbstractServer | None = None

    def stopping(self) -> bool:
        return self.stop.is_set()

    def outbox_depth(self) -> int:
        """Notifications still to deliver, for the apps with channels (one store per dir)."""
        by_dir: dict[Path, list[str]] = {}
        for rt in self.apps.values():
            if rt.cfg.notify:
                by_dir.setdefault(rt.cfg.state_dir, []).append(rt.cfg.name)
        total = 0
        for state_dir, names in by_dir.items():
            with Store(state_dir) as store:
                total += sum(outbox.outbox_depth(store, name) for name in names)
        return total

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        self._install_signals()
        try:
            server = await self.startup()
            await self.main_loop()
            await self.shutdown(server)
        finally:
            self.pools.shutdown()

    async def startup(self) -> asyncio.AbstractServer:
        # What would make the start fail is checked before recovery touches any app.
        gid = self._socket_gid()
        await self._refuse_live_socket()
        appdir = await self.pools.run(self.pools.reads, load_app_dir,
                                      self.config_dir)  # no dir: exit 2
        self._set_errors(appdir.errors)
        self.apps = {name: AppRuntime(cfg) for name, cfg in appdir.apps.items()}
        self._fit_pools()
        log(f"{len(self.apps)} app(s) in {self.config_dir}: {', '.join(self.apps) or 'none'}")
        for rt in self.apps.values():
            await self.pools.run(self.pools.operations, self.engines.recover, rt.cfg)
        server = await self._listen(gid)
        if self.web:
            self.web_server = await self.web.start()
        for name in self.apps:
            self._start_watch(name)
        self.deliverer.start()  # what a crash left in the outboxes goes out now
        self.notifier.ready(self.summary())
        log(f"ready; control socket {self.socket_path}")
        return server

    async def main_loop(self) -> None:
        ping = min(self.notifier.watchdog_interval or 5.0, 5.0)
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake(), timeout=ping)
            if self.hup.is_set() and not self.stop.is_set():
                self.hup.clear()
                await self.reload()
            # WATCHDOG=1 says "the daemon works": the loop being here proves it is not hung,
            # and every watch task must be running or restarting after a bounded backoff
            # (Supervised.supervised). A task that raises is restarted by its supervisor and
            # shows in status; it must not get systemd to kill the daemon and interrupt other
            # apps' deploys. Only a task that is gone (dead) stops the pings.
            if self.tasks_supervised():
                self.notifier.watchdog()
            self.notifier.status(self.summary())

    async def _wake(self) -> None:
        stop, hup = (asyncio.ensure_future(e.wait()) for e in (self.stop, self.hup))
        try:
            await asyncio.wait({stop, hup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            hup.cancel()

    async def shutdown(self, server: asyncio.AbstractServer) -> None:
        self.notifier.stopping()
        log("stopping: no new work; waiting for running deploys to finish")
        server.close()
        if self.web_server:
            self.web_server.close()
        for rt in self.apps.values():  # a canary would run on for minutes: back to stable
            if rt.canary is not None:
                rt.canary.request("abort", "the daemon (stopping)")
        await self.queue.drain()  # running operations finish; queued ones end unstarted
        await asyncio.gather(*self.background, return_exceptions=True)
        await asyncio.gather(*(self._stop_watch(name) for name in list(self.watchers)))
        await self.deliverer.stop(STOP_WATCH_TIMEOUT)  # a send in flight ends by its timeout
        # A watch task stopped mid-action ends once its engine call does (it holds the lock).
        await asyncio.gather(*self.background, return_exceptions=True)
        self.socket_path.unlink(missing_ok=True)
        log("stopped")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.hup.set)

    def _on_stop_signal(self) -> None:
        if self.stop.is_set():  # the second one: do not wait (recovery repairs at start)
            log("second stop signal: exiting now")
            os._exit(1)
        self.stop.set()

    def _socket_gid(self) -> int | None:
        """The ``--socket-group``'s id; an unknown group is an environment problem."""
        if not self.socket_group:
            return None
        try:
            return grp.getgrnam(self.socket_group).gr_gid
        except KeyError:
            raise EnvironmentProblem(
                f"unknown group {self.socket_group!r} for the control socket",
                hint=f"create it (`groupadd {self.socket_group}`) or change --socket-group"
            ) from None

    async def _refuse_live_socket(self) -> None:
        """Another daemon answering on our socket: refuse to start rather than take it over
        (a stale socket file, which nothing answers, is replaced)."""
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket_path)), 5)
        except (OSError, TimeoutError):
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise EnvironmentProblem(
            f"another zdagent daemon is already serving on {self.socket_path}",
            hint="stop it first (`systemctl stop zdagent`), or pass another --socket")

    async def _listen(self, gid: int | None) -> asyncio.AbstractServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        old = os.umask(0o117)  # the socket is created 0660: never world-writable
        try:
            server = await asyncio.start_unix_server(
                self.api, path=str(self.socket_path))
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o660)
        if gid is not None:
            os.chown(self.socket_path, -1, gid)
        return server

    # --- the app directory (SIGHUP) -----------------------------------------------------

    async def reload(self) -> None:
        """Re-read the app directory: added apps start, removed stop, changed take effect.

        A running operation keeps the config it started with; queued ones get the new one.
        """
        try:
            running = {name: rt.cfg for name, rt in self.apps.items()}  # they keep what they hold
            appdir = await self.pools.run(self.pools.reads, load_app_dir, self.config_dir,
                                          running)
        except ZdError as e:
            log(f"reload: {e.message}; keeping the apps as they are")
            self.reloads += 1
            return
        self._set_errors(appdir.errors)
        wanted = dict(appdir.apps)
        for name in set(self.apps) & set(appdir.errors):  # a bad edit: keep the last good one
            wanted[name] = self.apps[name].cfg
            log(f"reload: {name} keeps its previous config until its file is fixed")
        old = set(self.apps)
        for name in sorted(old - set(wanted)):
            await self._stop_watch(name)
            self.apps.pop(name)
            log(f"reload: {name} removed: no longer watched or served")
        for name, cfg in wanted.items():
            rt = self.apps.get(name)
            if rt is None:
                self.apps[name] = AppRuntime(cfg)
                self.recovering.add(name)
                self._track(self._recover_then_watch(name))
                log(f"reload: {name} added")
            elif rt.cfg != cfg and name in self.recovering:
                rt.cfg = cfg  # its watcher starts with this config once recovery is done
                log(f"reload: {name} changed while it is recovering: new config in effect")
            elif rt.cfg != cfg:
                await self._stop_watch(name)
                rt.cfg = cfg
                self._start_watch(name)
                log(f"reload: {name} changed: new config in effect"
                    + (" for the next operation" if rt.busy() else ""))
        self._fit_pools()
        self.reloads += 1  # counted once in effect: tests and operators wait for this
        log(f"reload done: {len(self.apps)} app(s)"
            + (f", {len(self.config_errors)} bad file(s)" if self.config_errors else ""))

    async def _recover_then_watch(self, name: str) -> None:
        rt = self.apps[name]
        try:
            async with rt.lock:  # an operation asked for meanwhile queues behind recovery
                await self.pools.run(self.pools.operations, self.engines.recover, rt.cfg)
        finally:
            if self.apps.get(name) is rt:
                self.recovering.discard(name)
        if self.apps.get(name) is rt and not self.stop.is_set() and name not in self.watchers:
            self._start_watch(name)

    def _fit_pools(self) -> None:
        self.pools.fit(len(self.apps))
        self.queue.executor = self.pools.operations

    def _set_errors(self, errors: dict[str, str]) -> None:
        for stem, message in errors.items():
            if self.config_errors.get(stem) != message:
                log(f"app file {stem}.toml is invalid: {message}")
        self.config_errors = dict(errors)

    # --- watch tasks --------------------------------------------------------------------

    def _start_watch(self, name: str) -> None:
        """Start ``name``'s watcher; one already registered is stopped first (never two)."""
        old = self.watchers.pop(name, None)
        if old is not None:
            old.stop.set()  # at once: it starts no new tick
            self._track(self._stop_watcher(name, old))
        rt = self.apps[name]
        stop = asyncio.Event()
        cfg = rt.cfg
        rt.state.on_change = self.delivery.watch_changes(name, lambda: rt.cfg,
                                                         lambda: rt.state.last_reason)

        def failed(error: str, delay: float) -> None:
            rt.state.set("restarting", f"watch task failed ({error}); restarting in {delay:g}s")

        task = Supervised(f"watch {name}", lambda: watch(cfg, rt.state, self._hooks(rt), stop),
                          log, failed)
        task.start()
        traffic = self.traffic[name] = TrafficState()
        follow = Supervised(f"traffic {name}",
                            lambda: monitor(cfg, traffic, self._traffic_hooks(rt), stop), log)
        follow.start()
        self.watchers[name] = Watcher(task, stop, follow)

    async def _stop_watch(self, name: str) -> None:
        watcher = self.watchers.pop(name, None)
        if watcher is not None:
            await self._stop_watcher(name, watcher)

    async def _stop_watcher(self, name: str, watcher: Watcher) -> None:
        watcher.stop.set()
        if watcher.traffic is not None:
            await watcher.traffic.stop(STOP_WATCH_TIMEOUT)
            if watcher.traffic.task is not None and not watcher.traffic.task.done():
                self._track(watcher.traffic.task)  # mid-revert: ends with its engine call
        await watcher.task.stop(STOP_WATCH_TIMEOUT)
        task = watcher.task.task
        if task is not None and not task.done():  # mid-action: it ends with its thread
            log(f"watch {name}: stopped; its running engine call finishes first")
            self._track(task)

    def _track(self, aw: Any) -> None:
        """Keep a background awaitable until it ends; shutdown waits for them all."""
        task = asyncio.ensure_future(aw)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def all_alive(self) -> bool:
        return all(t.alive for w in self.watchers.values() for t in w.tasks()) and \
            self.deliverer.alive

    def tasks_supervised(self) -> bool:
        return all(t.supervised for w in self.watchers.values() for t in w.tasks()) and \
            self.deliverer.supervised

    def _hooks(self, rt: AppRuntime) -> WatchHooks:
        async def revert(reason: str, expected_live: str | None = None) -> str | None:
            return await self._watchdog_action(rt, "auto_revert", reason, expected_live)

        async def restart(reason: str, expected_live: str | None = None) -> str | None:
            return await self._watchdog_action(rt, "restart_live", reason, expected_live)

        async def reroute(reason: str, expected_live: str) -> str | None:
            return await self._watchdog_action(rt, "reroute", reason, expected_live)

        hooks = WatchHooks(busy=rt.busy, revert=revert, restart=restart, log=log,
                           reroute=reroute)
        if self.web:
            hooks.probed = self.web.metrics.probed(rt.cfg.name)
        return hooks

    def _traffic_hooks(self, rt: AppRuntime) -> TrafficHooks:
        cfg = rt.cfg

        async def revert(reason: str, expected_live: str) -> str | None:
            return await self._watchdog_action(rt, "auto_revert", reason, expected_live)

        async def last_switch() -> tuple[str, str | None] | None:
            rows = await self.pools.run(self.pools.reads, read_history, cfg.state_dir,
                                        cfg.name, 1)
            return (rows[0]["kind"], rows[0]["slot"]) if rows else None

        return TrafficHooks(revert=revert, last_switch=last_switch, log=log)

    async def _watchdog_action(self, rt: AppRuntime, method: str, reason: str,
                               expected_live: str | None) -> str | None:
        """Take the app's lock (never wait for it), run the action; None or why not."""
        if rt.busy() or rt.queued:
            return "a deploy holds the app's lock"
        try:
            async with rt.lock:
                return await _until_done(self.pools.submit(
                    self.pools.watchdog, self.engines.watchdog_action, rt.cfg, method, reason,
                    expected_live))
        except Exception as e:  # the glue itself failing is a reason too, never a crash
            log(f"{rt.cfg.name}: {method} glue failed: {type(e).__name__}: {e}")
            return f"unexpected error: {type(e).__name__}: {e}"

    # --- what status shows ----------------------------------------------------------------

    def summary(self) -> str:
        bad = [f"app {n} {rt.state.status}" for n, rt in self.apps.items()
               if rt.state.status in ("degraded", "failing", "restarting", "revert-failed",
                                     "nginx-down", "error", "reverted")]
        bad += [f"{stem}.toml invalid" for stem in self.config_errors]
        apps = f"{len(self.apps)} app" + ("" if len(self.apps) == 1 else "s")
        return f"{apps}, " + ("; ".join(bad) if bad else "all healthy")

    def app_status(self, name: str, rt: AppRuntime) -> dict[str, Any]:
        watcher = self.watchers.get(name)
        traffic = self.traffic.get(name)
        return {**rt.state.to_dict(), "config": str(rt.cfg.path), "busy": rt.busy(),
                "queued": rt.queued, "task": watcher.task.to_dict() if watcher else None,
                "traffic": traffic.to_dict() if traffic else None,
                "traffic_task": watcher.traffic.to_dict() if watcher and watcher.traffic
                else None}

    def status(self) -> dict[str, Any]:
        return {"daemon": {"pid": os.getpid(), "version": __version__, "since": self.started,
                           "socket": str(self.socket_path), "summary": self.summary(),
                           "config_dir": str(self.config_dir),
                           "config_errors": dict(self.config_errors),
                           "reloads": self.reloads, "tasks_alive": self.all_alive(),
                           "notifications": self.deliverer.to_dict(),
                           "connections": self.api.open,
                           "http": self.web.info() if self.web else None},
                "apps": {n: self.app_status(n, rt) for n, rt in self.apps.items()},
                "config_errors": dict(self.config_errors)}

    def canary_figures(self, name: str) -> FigureSource | None:
        """The app's per-slot traffic figures for the canary's step analysis: the windows of
        its traffic task (``zdagent.traffic.monitor``), None while it has none. With how
        many were slower than ``max_p99``, as after a switch: the step is checked from its
        first requests on, and one slow cold request is no p99 regression."""
        traffic, rt = self.traffic.get(name), self.apps.get(name)
        if traffic is None or rt is None:
            return None
        slow_above = rt.cfg.policy.max_p99 or None

        def figures(slot: str, since: float) -> Figures:
            return traffic.windows.figures(slot, time.time(), since, slow_above)

        return figures

    def _record_cancelled(self, cfg: AppConfig, op: Operation) -> None:
        self.engines.record_cancelled(cfg, op.what, op.version, op.performer,
                                      "cancelled: the client went away while it was queued")


async def _until_done(fut: asyncio.Future[Any]) -> Any:
    """Await a thread's future; cancelled meanwhile, still wait for the thread to end, then
    re-raise: the caller's ``async with lock`` must not let go while the engine still works
    (a deploy would otherwise start in the middle of a revert)."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(fut)
            break
        except asyncio.CancelledError:
            if fut.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def run(config_dir: Path, socket_path: Path, socket_group: str | None,
        http: str | None = None, http_token_file: Path | None = None) -> None:
    """Run the daemon; ``http`` (ADDR:PORT) turns on the status page and /metrics."""
    from zdagent.daemon.web import parse_listen

    listen = parse_listen(http, http_token_file) if http else None
    asyncio.run(Daemon(config_dir, socket_path, socket_group, http=listen).run())


def main(argv: list[str] | None = None) -> None:
    """``zdagentd``: the daemon without the CLI's UI libraries (what systemd runs)."""
    import argparse

    from zdagent.config import CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR

    ap = argparse.ArgumentParser(prog="zdagentd", description="zdagent's daemon: watchdog "
                                 "and control socket for every app in the config directory. "
                                 "SIGHUP re-reads the directory.")
    ap.add_argument("--config-dir", type=Path,
                    default=Path(os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR))
    ap.add_argument("--socket", type=Path,
                    default=Path(os.environ.get("ZDAGENT_SOCKET") or DEFAULT_SOCKET))
    ap.add_argument("--socket-group", default=None,
                    help="group owning the control socket (mode 0660)")
    ap.add_argument("--http", metavar="ADDR:PORT", default=os.environ.get("ZDAGENT_HTTP"),
                    help="serve the status page and /metrics there (e.g. 127.0.0.1:9361; "
                         "off by default); a non-loopback address needs --http-token-file")
    ap.add_argument("--http-token-file", type=Path,
                    default=os.environ.get("ZDAGENT_HTTP_TOKEN_FILE") or None,
                    help="file with the bearer token the page's data and /metrics ask for")
    args = ap.parse_args(argv)
    try:
        run(args.config_dir, args.socket, args.socket_group, args.http, args.http_token_file)
    except ZdError as e:
        print(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        sys.exit(e.exit_code)
