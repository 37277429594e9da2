"""The watchdog: keep probing the live slot; switch to the standby when it fails.

The decisions are pure (``WatchState.observe``, ``choose``, ``classify``) so every rule is
unit-tested: revert only after K consecutive failures of the live slot's health endpoint, only
to a healthy standby, never twice within the cooldown, at most ``max_reverts`` per window;
otherwise report the app degraded and restart the live container. Nginx being down is not the
app's fault: nothing is reverted or restarted, the state says so until Nginx is back.

An action counts only when it happened: the daemon's hooks return None when done, or a
one-line reason when refused or failed (app lock busy, the engine's re-check under the lock,
an error). A refused revert uses up neither the cooldown nor the revert budget.

The loop (``watch``) does the I/O and never blocks another app: probes are asyncio GETs (one
request per healthy tick), engine calls run in the daemon's threads.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from zdagent.config import AppConfig, WatchdogConfig
from zdagent.nginx import UPSTREAM_HEADER, answering_upstream, routed_slot
from zdagent.probe import Answer, KeptAlive, aget
from zdagent.services import TaskFloor, task_floor
from zdagent.slots import other

REROUTE_RETRY = 10.0  # seconds before a failed re-render of the same task ports is retried
# How long a dead task's port may stay in the upstream while Swarm starts its replacement:
# the replacement's port and the dead one's removal then cost one reload, not two.
DEAD_PORT_GRACE = 30.0
REFUSED_WITHIN = 0.5  # seconds: a dead task's port refuses a connection at once


class Action(StrEnum):
    NONE = "none"
    REVERT = "revert"
    DEGRADED = "degraded"


# Every state the watchdog reports. ``last_reason`` always belongs to the current state.
STATES = ("starting", "idle", "healthy", "failing", "reverted", "revert-failed", "degraded",
          "paused", "disabled", "nginx-down", "restarting", "error")


@dataclass
class WatchState:
    """What the watchdog knows about one app (shown by `zdagent status`)."""

    status: str = "starting"
    consecutive: int = 0
    reverts: list[float] = field(default_factory=list)
    last_reason: str | None = None
    last_change: float = field(default_factory=time.time)
    restarts: int = 0
    last_restart: float | None = None
    failed_actions: int = 0
    checks: int = 0  # probe rounds done: tests and status see the loop advance
    # Called with (old, new) after each change of status (the daemon's notifications).
    on_change: Callable[[str, str], None] | None = field(default=None, repr=False,
                                                         compare=False)

    def set(self, status: str, reason: str | None = None) -> None:
        """Enter ``status``; the reason is replaced too, so the text is never stale."""
        old = self.status
        if status != old:
            self.last_change = time.time()
        self.status = status
        self.last_reason = reason
        if status != old and self.on_change is not None:
            self.on_change(old, status)

    def observe(self, ok: bool, policy: WatchdogConfig) -> bool:
        """Count a probe; True when K consecutive failures were reached."""
        if ok:
            self.consecutive = 0
            return False
        self.consecutive += 1
        return self.consecutive >= policy.failures

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "consecutive_failures": self.consecutive,
                "reverts": len(self.reverts), "last_revert": self.reverts[-1] if self.reverts
                else None, "last_reason": self.last_reason, "since": self.last_change,
                "restarts": self.restarts, "failed_actions": self.failed_actions,
                "checks": self.checks}


def choose(state: WatchState, now: float, policy: WatchdogConfig,
           standby_healthy: bool) -> tuple[Action, str]:
    """After K failures: revert, or why not (then the app is degraded)."""
    if state.reverts and now - state.reverts[-1] < policy.cooldown:
        return Action.DEGRADED, (f"reverted {now - state.reverts[-1]:.0f}s ago, inside the "
                                 f"{policy.cooldown:g}s cooldown: not flapping back")
    recent = [t for t in state.reverts if now - t < policy.window]
    if len(recent) >= policy.max_reverts:
        return Action.DEGRADED, (f"{len(recent)} reverts in the last {policy.window:g}s "
                                 f"(max {policy.max_reverts})")
    if not standby_healthy:
        return Action.DEGRADED, "the standby is not healthy either"
    return Action.REVERT, ""


@dataclass(frozen=True)
class Verdict:
    """One tick's finding: the app is ok, failing (counts towards K), or Nginx is down."""

    kind: str  # ok | failing | nginx-down
    detail: str = ""
    unreachable: bool = False  # failing because the slot does not answer at all


Ports = Mapping[str, tuple[int, ...]]


def slot_ports(cfg: AppConfig, slot: str, ports: Ports | None = None) -> tuple[int, ...]:
    """Where ``slot`` answers: ``ports[slot]`` (swarm task-ports: its tasks), else its port."""
    return tuple(ports[slot]) if ports and ports.get(slot) else (cfg.slot_port(slot),)


def classify(cfg: AppConfig, slot: str, master_problem: str | None, direct: Answer | None,
             through: Answer | None, ports: Ports | None = None) -> Verdict:
    """Pure: what a tick's probes mean. ``None`` = that probe was not needed.

    Nginx is down when its master is gone, or when it cannot be reached at all on
    ``public_url`` while the slot answers directly: never the app's fault. Otherwise the live
    slot fails when its health endpoint fails directly, or when Nginx answers the health URL
    with an error or from another server (the backup).
    """
    if master_problem:
        return Verdict("nginx-down", master_problem + _direct_note(cfg, slot, direct))
    if direct is not None and not _passes(cfg, direct):
        return Verdict("failing", f"{slot} direct: {_what(direct)}", direct.unreachable)
    if through is None:
        return Verdict("ok")
    if through.unreachable:
        if direct is not None:  # the slot answered directly: the edge is what is missing
            return Verdict("nginx-down", f"Nginx does not answer on {cfg.nginx.public_url} "
                                         f"({through.error})" + _direct_note(cfg, slot, direct))
        return Verdict("failing", f"through Nginx: {through.error}")
    if not _passes(cfg, through):
        return Verdict("failing", f"through Nginx: HTTP {through.status}")
    answered = answering_upstream(through.header)
    if answered not in {f"127.0.0.1:{p}" for p in slot_ports(cfg, slot, ports)}:
        return Verdict("failing", f"through Nginx: answered by {answered or 'nobody'}, "
                                  f"not {slot}")
    return Verdict("ok")


def _passes(cfg: AppConfig, a: Answer) -> bool:
    return a.status is not None and a.status in cfg.health.statuses


def _what(a: Answer) -> str:
    return a.error or f"HTTP {a.status}"


def _direct_note(cfg: AppConfig, slot: str, direct: Answer | None) -> str:
    if direct is None:
        return ""
    return f"; {slot} answers directly" if _passes(cfg, direct) else \
        f"; {slot} direct: {_what(direct)}"


def nginx_master_problem(pid_file: Path) -> str | None:
    """Why Nginx's master is not running, or None (a pid file read and a signal 0)."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return None
    except FileNotFoundError:
        return f"Nginx is not running (no pid file {pid_file})"
    except ValueError:
        return f"Nginx is not running (unreadable pid file {pid_file})"
    except ProcessLookupError:
        return f"Nginx is not running (its master in {pid_file} is gone)"
    except PermissionError:
        return None  # it exists, under another user
    except OSError as e:
        return f"Nginx's pid file {pid_file} cannot be read: {e.strerror}"


class RoutedSlot:
    """The slot Nginx's config routes to, re-read only when the file changed (stat per tick)."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        njs = cfg.nginx.switch_mode == "njs"
        self.path = cfg.nginx.active_file if njs else cfg.nginx.upstream_file
        self._key: tuple[int, int, int] | None = None
        self._slot: str | None = None

    def get(self) -> str | None:
        try:
            st = self.path.stat()
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            key = None
        if key is None or key != self._key:
            self._slot = routed_slot(self.cfg)
            self._key = key
        return self._slot

    def changed_at(self) -> float | None:
        """When the routing file last changed (epoch s), as of the last ``get``."""
        return self._key[0] / 1e9 if self._key else None


async def _no_reroute(reason: str, expected_live: str) -> str | None:
    return "this daemon cannot re-render the upstream"


@dataclass
class WatchHooks:
    """What the loop needs from the daemon: is a deploy running, and the two actions.

    ``revert``/``restart`` take (reason, expected_live) and return None when done, or a
    one-line reason when refused or failed.
    """

    busy: Callable[[], bool]
    revert: Callable[[str, str], Awaitable[str | None]]
    restart: Callable[[str, str], Awaitable[str | None]]
    log: Callable[[str], None]
    # Swarm task-ports: render the tasks' current ports into Nginx (reason, expected_live).
    reroute: Callable[[str, str], Awaitable[str | None]] = _no_reroute
    probed: Callable[[float], None] = lambda seconds: None  # a probe round's latency


async def watch(cfg: AppConfig, state: WatchState, hooks: WatchHooks,
                stop: asyncio.Event) -> None:
    """Probe the live slot every interval until ``stop``; act per ``choose``."""
    policy = cfg.watchdog
    if not policy.enabled:
        state.set("disabled")
        return
    routed = RoutedSlot(cfg)
    edge = KeptAlive(cfg.verify_url, UPSTREAM_HEADER, cfg.verify_headers.get("Host"))
    floor = task_floor(cfg)  # swarm: the live service must keep min_healthy tasks
    stopped = asyncio.ensure_future(stop.wait())  # one waiter for the whole loop, not per tick
    last_error: str | None = None
    try:
        while not stop.is_set():
            await asyncio.wait((stopped,), timeout=policy.interval)
            if stop.is_set():
                return
            edge = edge_for(cfg, edge)
            try:
                await tick(cfg, state, hooks, routed, edge, floor)
                last_error = None
            except Exception as e:  # one app's bug or bad value must not stop its loop
                last_error = _tick_failed(cfg, state, hooks, e, last_error)
    finally:
        stopped.cancel()
        edge.close()
        if floor is not None:
            floor.close()


def edge_for(cfg: AppConfig, edge: KeptAlive) -> KeptAlive:
    """The kept-alive probe of the app's current verify URL: it moves from http to https
    when the app's certificate appears ([tls]), after which plain HTTP only redirects."""
    url = cfg.verify_url
    if edge.url == url:
        return edge
    edge.close()
    return KeptAlive(url, UPSTREAM_HEADER, cfg.verify_headers.get("Host"))


def _tick_failed(cfg: AppConfig, state: WatchState, hooks: WatchHooks, e: Exception,
                 last_error: str | None) -> str:
    """Report a tick that raised as state ``error``; log it once per distinct error (a tick
    failing every interval would flood the journal). Returns the error's text."""
    text = f"{type(e).__name__}: {e}"
    if text != last_error:
        hooks.log(f"{cfg.name}: watchdog check failed: {text}\n"
                  + traceback.format_exc().rstrip())
    state.consecutive = 0
    state.set("error", f"the watchdog's check failed: {text}")
    return text


async def probe_slot(cfg: AppConfig, slot: str, ports: Ports | None = None) -> Answer:
    """The slot's health endpoint, directly on its port (task-ports: on each task's; the
    first failing answer, else the last)."""
    answer = None
    for port in slot_ports(cfg, slot, ports):
        answer = await aget(f"http://127.0.0.1:{port}{cfg.health.path}", cfg.health.timeout)
        if not _passes(cfg, answer):
            return answer
    assert answer is not None
    return answer


async def look(cfg: AppConfig, slot: str, edge: KeptAlive | None = None,
               ports: Ports | None = None) -> Verdict:
    """Probe as cheaply as the facts allow.

    Healthy tick: one GET through Nginx of the health URL (on a kept-alive connection when
    ``edge`` is given), answered by ``slot``. Only when
    that fails (or Nginx checks another path) are the slot probed directly and the master
    checked, to tell the app's failure from Nginx's.
    """
    same_path = cfg.nginx.verify_path == cfg.health.path
    direct = None if same_path else await probe_slot(cfg, slot, ports)
    if direct is not None and not _passes(cfg, direct):
        return classify(cfg, slot, nginx_master_problem(cfg.nginx.pid_file), direct, None,
                        ports)
    through = await (edge.get(cfg.health.timeout) if edge else
                     aget(cfg.verify_url, cfg.health.timeout, UPSTREAM_HEADER,
                          cfg.verify_headers.get("Host")))
    verdict = classify(cfg, slot, None, direct, through, ports)
    if verdict.kind == "ok":
        return verdict
    if direct is None:
        direct = await probe_slot(cfg, slot, ports)
    return classify(cfg, slot, nginx_master_problem(cfg.nginx.pid_file), direct, through,
                    ports)


async def tick(cfg: AppConfig, state: WatchState, hooks: WatchHooks,
               routed: RoutedSlot, edge: KeptAlive | None = None,
               floor: TaskFloor | None = None) -> None:
    """One probe round for one app, and whatever it calls for."""
    policy = cfg.watchdog
    if hooks.busy():
        state.consecutive = 0
        state.set("paused", "a deploy or rollback is running")
        return
    live = routed.get()
    if live is None:
        state.set("idle", "nothing deployed yet")
        return
    ports = await _rerouted(cfg, hooks, floor, live)
    began = time.monotonic()
    verdict = await look(cfg, live, edge, ports)
    hooks.probed(time.monotonic() - began)
    if verdict.kind == "ok" and floor is not None:
        short = await asyncio.to_thread(floor.shortfall, live)
        verdict = Verdict("failing", short) if short else verdict
    state.checks += 1
    if verdict.kind == "nginx-down":
        state.consecutive = 0
        if state.status != "nginx-down":
            hooks.log(f"{cfg.name}: {verdict.detail}: not touching the app until it is back")
        state.set("nginx-down", verdict.detail)
        return
    if state.status == "nginx-down":
        hooks.log(f"{cfg.name}: Nginx is back")
    ok = verdict.kind == "ok"
    if not state.observe(ok, policy):
        _settle(cfg, state, hooks, live, ok, verdict.detail)
        return
    await _act(cfg, state, hooks, live, verdict, ports)


async def _rerouted(cfg: AppConfig, hooks: WatchHooks, floor: TaskFloor | None,
                    live: str) -> Ports | None:
    """Swarm task-ports: the slots' running tasks' ports; when they changed since Nginx was
    last told (a task replaced or dead), re-render the upstream through the daemon."""
    if floor is None or not cfg.swarm.task_ports:
        return None
    ports = await asyncio.to_thread(floor.task_ports)
    if ports is None or ports == floor.routed or ports[live] == (cfg.slot_port(live),):
        floor.shrunk_at = None
        return ports  # unchanged, or no live task to route to (the floor decides that)
    if await _dead_ports_may_wait(floor, ports):
        return ports
    if ports == floor.failed and time.monotonic() < floor.retry_at:
        return ports  # the same re-render just failed: no reload storm
    reason = "the tasks' ports changed (" + "; ".join(
        f"{slot}: {', '.join(map(str, p))}" for slot, p in ports.items()) + ")"
    refused = await hooks.reroute(reason, live)  # the engine's event says what changed
    if refused is None:
        floor.routed, floor.failed, floor.shrunk_at = ports, None, None
    elif "lock" not in refused:  # a deploy or revert runs: look again next tick
        hooks.log(f"{cfg.name}: {reason}; the upstream was not re-rendered: {refused}")
        floor.failed, floor.retry_at = ports, time.monotonic() + REROUTE_RETRY
    return ports


def waitable_gone(ports: Ports, routed: Ports | None) -> list[int] | None:
    """Pure: the ports that left since Nginx was told, when leaving is all that changed and
    at most one per slot left (the site passes a request on once, proxy_next_upstream_tries
    2: two dead servers in a group could both be tried); else None."""
    if routed is None or ports == routed:
        return None
    gone: list[int] = []
    for slot, now in ports.items():
        before = set(routed.get(slot, ()))
        left = before - set(now)
        if not set(now) <= before or len(left) > 1:
            return None
        gone.extend(left)
    return gone or None


async def _dead_ports_may_wait(floor: TaskFloor, ports: Ports) -> bool:
    """A dead task's port left in the upstream costs nothing (Nginx's connect is refused and
    passes the request on, a POST too: it was not sent) while the re-render it would take is
    a reload, whose closed keep-alive connections can cost a request. So one removal per slot
    waits for the replacement's port, at most ``DEAD_PORT_GRACE``, and only while its port
    refuses connections (a task still stopping, or a port taken again, is re-rendered now)."""
    gone = waitable_gone(ports, floor.routed)
    if gone is None or not all([await _refuses(port) for port in gone]):
        floor.shrunk_at = None
        return False
    now = time.monotonic()
    if floor.shrunk_at is None:
        floor.shrunk_at = now
    return now - floor.shrunk_at < DEAD_PORT_GRACE


async def _refuses(port: int) -> bool:
    """Whether a connection to 127.0.0.1:``port`` is refused at once (nothing listens)."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                                 REFUSED_WITHIN)
    except ConnectionRefusedError:
        return True
    except OSError:  # TimeoutError too
        return False  # not refused at once: Nginx would wait on it too
    writer.close()
    return False


def _settle(cfg: AppConfig, state: WatchState, hooks: WatchHooks, live: str, ok: bool,
            detail: str) -> None:
    """Below K failures: report the current state (reverted/degraded stay until they end)."""
    policy = cfg.watchdog
    if ok:
        if state.status == "reverted" and time.time() - state.last_change <= policy.cooldown:
            return
        if state.status != "healthy":
            hooks.log(f"{cfg.name}: {live} is healthy")
            state.set("healthy")
        return
    if state.status not in ("degraded", "revert-failed"):  # those stay until a probe passes
        state.set("failing", f"{detail} ({state.consecutive}/{policy.failures})")


async def _act(cfg: AppConfig, state: WatchState, hooks: WatchHooks, live: str,
               verdict: Verdict, ports: Ports | None = None) -> None:
    """K failures in a row: revert to a healthy standby, or restart the live container."""
    policy, detail = cfg.watchdog, verdict.detail
    standby = other(live)
    standby_answer = await probe_slot(cfg, standby, ports)
    standby_ok = _passes(cfg, standby_answer)
    action, why = choose(state, time.time(), policy, standby_ok)
    reason = f"{live} failed {state.consecutive} probes in a row (last: {detail})"
    state.consecutive = 0
    if action is Action.REVERT:
        hooks.log(f"{cfg.name}: {reason}; reverting to the standby {standby}")
        refused = await hooks.revert(reason, live)
        if refused is None:
            state.reverts.append(time.time())
            dead = f" ({live} does not answer at all: down)" if verdict.unreachable else ""
            state.set("reverted", f"reverted from {live} to {standby}{dead}: {reason}")
            return
        state.failed_actions += 1
        hooks.log(f"{cfg.name}: the revert to {standby} did not happen: {refused}")
        state.set("revert-failed", f"could not revert to {standby}: {refused} ({reason})")
        return
    why = why if standby_ok else f"{why} ({standby} direct: {_what(standby_answer)})"
    now = time.time()
    if state.last_restart is not None and now - state.last_restart < policy.cooldown:
        # One restart per cooldown: a crash-looping app is not restarted in a loop.
        state.set("degraded", f"{reason}; {why}; restarted {now - state.last_restart:.0f}s "
                              f"ago, next restart after the {policy.cooldown:g}s cooldown")
        return
    hooks.log(f"{cfg.name}: degraded: {reason}; {why}; restarting {live}")
    refused = await hooks.restart(f"degraded: {reason}; {why}", live)
    if refused is None:
        state.restarts += 1
        state.last_restart = time.time()
        state.set("degraded", f"{reason}; {why}; restarted {live}")
        return
    state.failed_actions += 1
    hooks.log(f"{cfg.name}: the restart of {live} did not happen: {refused}")
    state.set("degraded", f"{reason}; {why}; the restart of {live} did not happen: {refused}")

