"""The watchdog: keep probing the live slot; switch to the standby when it fails.

The decision is pure (``WatchState.observe`` and ``choose``) so every rule is unit-tested:
revert only after K consecutive failures, only to a healthy standby, never twice within the
cooldown, at most ``max_reverts`` per window; otherwise report the app degraded and restart
the live container. The loop around it (``watch``) does the I/O and never blocks another
app: probes are async, engine calls run in threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from zdagent.config import AppConfig, WatchdogConfig
from zdagent.nginx import UPSTREAM_HEADER, answering_upstream, routed_slot
from zdagent.probe import tls_context
from zdagent.slots import other


class Action(StrEnum):
    NONE = "none"
    REVERT = "revert"
    DEGRADED = "degraded"


@dataclass
class WatchState:
    """What the watchdog knows about one app (shown by `zdagent status`)."""

    status: str = "starting"  # starting|idle|healthy|failing|reverted|degraded|paused|disabled
    consecutive: int = 0
    reverts: list[float] = field(default_factory=list)
    last_reason: str | None = None
    last_change: float = field(default_factory=time.time)
    restarts: int = 0
    last_restart: float | None = None

    def set(self, status: str, reason: str | None = None) -> None:
        if status != self.status:
            self.last_change = time.time()
        self.status = status
        if reason is not None:
            self.last_reason = reason

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
                "restarts": self.restarts}


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


async def probe(client: httpx.AsyncClient, cfg: AppConfig, slot: str,
                through_nginx: bool) -> tuple[bool, str]:
    """Probe ``slot`` directly, and optionally through Nginx (which must name that slot)."""
    url = f"http://127.0.0.1:{cfg.slot_port(slot)}{cfg.health.path}"
    try:
        r = await client.get(url, timeout=cfg.health.timeout)
    except httpx.HTTPError as e:
        return False, f"{slot} direct: {type(e).__name__}"
    if r.status_code not in cfg.health.statuses:
        return False, f"{slot} direct: HTTP {r.status_code}"
    if not through_nginx:
        return True, "ok"
    try:
        r = await client.get(cfg.verify_url, timeout=cfg.health.timeout)
    except httpx.HTTPError as e:
        return False, f"through Nginx: {type(e).__name__}"
    if r.status_code not in cfg.health.statuses:
        return False, f"through Nginx: HTTP {r.status_code}"
    answered = answering_upstream(r.headers.get(UPSTREAM_HEADER, ""))
    if answered != f"127.0.0.1:{cfg.slot_port(slot)}":
        return False, f"through Nginx: answered by {answered or 'nobody'}, not {slot}"
    return True, "ok"


@dataclass
class WatchHooks:
    """What the loop needs from the daemon: is a deploy running, and the two actions."""

    busy: Callable[[], bool]
    revert: Callable[[str], Awaitable[None]]
    restart: Callable[[str], Awaitable[None]]
    log: Callable[[str], None]


def async_client() -> httpx.AsyncClient:
    """The one client every app's watchdog shares (fresh connections, shared TLS context)."""
    return httpx.AsyncClient(headers={"Connection": "close", "User-Agent": "zdagent-watchdog"},
                             verify=tls_context())


async def watch(cfg: AppConfig, state: WatchState, hooks: WatchHooks, stop: asyncio.Event,
                client: httpx.AsyncClient) -> None:
    """Probe the live slot every interval until ``stop``; act per ``choose``."""
    policy = cfg.watchdog
    if not policy.enabled:
        state.set("disabled")
        return
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=policy.interval)
            return
        except TimeoutError:
            pass
        await _tick(cfg, state, hooks, client)


async def _tick(cfg: AppConfig, state: WatchState, hooks: WatchHooks,
                client: httpx.AsyncClient) -> None:
    policy = cfg.watchdog
    if hooks.busy():
        state.consecutive = 0
        state.set("paused", "a deploy is running")
        return
    live = routed_slot(cfg)
    if live is None:
        state.set("idle", "nothing deployed yet")
        return
    ok, detail = await probe(client, cfg, live, through_nginx=True)
    if not state.observe(ok, policy):
        if ok and state.status not in ("healthy", "reverted"):
            hooks.log(f"{cfg.name}: {live} is healthy")
            state.set("healthy")
        elif ok and state.status == "reverted" and time.time() - state.last_change > \
                policy.cooldown:
            state.set("healthy")
        elif not ok and state.status != "degraded":  # degraded stays until a probe passes
            state.set("failing", f"{detail} ({state.consecutive}/{policy.failures})")
        return
    standby = other(live)
    standby_ok, standby_detail = await probe(client, cfg, standby, through_nginx=False)
    action, why = choose(state, time.time(), policy, standby_ok)
    reason = f"{live} failed {state.consecutive} probes in a row (last: {detail})"
    state.consecutive = 0
    if action is Action.REVERT:
        hooks.log(f"{cfg.name}: {reason}; reverting to the standby {standby}")
        await hooks.revert(reason)
        state.reverts.append(time.time())
        state.set("reverted", f"reverted to {standby}: {reason}")
        return
    why = why if standby_ok else f"{why} ({standby_detail})"
    state.set("degraded", f"{reason}; {why}")
    now = time.time()
    if state.last_restart is not None and now - state.last_restart < policy.cooldown:
        return  # one restart per cooldown: a crash-looping app is not restarted in a loop
    hooks.log(f"{cfg.name}: degraded: {reason}; {why}; restarting {live}")
    state.restarts += 1
    state.last_restart = now
    await hooks.restart(f"degraded: {reason}; {why}")
