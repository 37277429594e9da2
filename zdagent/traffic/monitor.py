"""The daemon's traffic task of one app: follow the access log, analyse every switch.

Every tick (``analysis.interval`` while a switch is analysed, else ``IDLE_TICK``) the task
reads what Nginx appended to the app's JSON access log into the per-slot windows, and looks
(one stat) at the slot Nginx's files route to. When that slot changes and the newest history
record is a deploy or rollback to it, the new slot is under analysis for ``analysis.window``
seconds from the routing file's change, with the previous slot's last minute as the
baseline. ``failures`` failed checks in a row revert to the standby through the daemon's
hook: the watchdog's verified ``auto_revert`` under the app's lock, which refuses a standby
that is not running and healthy. The reason recorded in history carries the figures.
Reverts by the watchdog (or by analysis itself) start no analysis; an analysis revert is
never repeated within ``analysis.cooldown``.

The task is cheap when idle: one ``pread`` and two ``stat`` per tick (three for swarm
task-ports apps, whose task ports it learns from the upstream file), no thread.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from zdagent.config import AppConfig
from zdagent.traffic.analysis import AfterSwitch
from zdagent.traffic.follow import LogFollower, feed
from zdagent.traffic.ports import SlotOfPort
from zdagent.traffic.windows import Figures, TrafficWindows
from zdagent.watchdog import RoutedSlot

ANALYSED_KINDS = ("deploy", "rollback", "canary")  # switches people made (a canary: its
# promotion), not the automatic reverts
# Seconds between ticks while no switch is under analysis: figures in `status` lag by at most
# this, and a switch is seen this late (analysis dates it by the routing file's mtime, so no
# request is missed). Keeps 100 idle apps within the daemon's CPU budget.
IDLE_TICK = 2.0


@dataclass
class TrafficHooks:
    """What the task needs from the daemon.

    ``revert(reason, expected_live)``: None when reverted, else why not. ``last_switch()``:
    (kind, target slot) of the app's newest history record, or None.
    """

    revert: Callable[[str, str], Awaitable[str | None]]
    last_switch: Callable[[], Awaitable[tuple[str, str | None] | None]]
    log: Callable[[str], None]


@dataclass
class TrafficState:
    """One app's figures and analysis, as `status` shows them."""

    windows: TrafficWindows = field(default_factory=TrafficWindows)
    access_log: str = ""
    following: bool = False
    rotations: int = 0
    routed: str | None = None
    analysis: AfterSwitch | None = None  # the switch under analysis, else the last one
    reverts: int = 0
    cooldown_until: float = 0.0
    error: str | None = None
    refused: str | None = None  # the last refusal of an analysis revert

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {**self.windows.to_dict(now), "access_log": self.access_log,
                "following": self.following, "rotations": self.rotations,
                "analysis": self.analysis.to_dict() if self.analysis else None,
                "analysis_reverts": self.reverts, "cooldown_until": self.cooldown_until or None,
                "error": self.error}


async def monitor(cfg: AppConfig, state: TrafficState, hooks: TrafficHooks,
                  stop: asyncio.Event) -> None:
    """Follow and analyse until ``stop``."""
    policy = cfg.policy
    assert cfg.nginx.access_log is not None
    follower = LogFollower(cfg.nginx.access_log)
    state.access_log = str(cfg.nginx.access_log)
    routed = RoutedSlot(cfg)
    state.routed = routed.get()
    ports = SlotOfPort(cfg)
    stopped = asyncio.ensure_future(stop.wait())
    last_error: str | None = None
    try:
        while not stop.is_set():
            watching = state.analysis is not None and state.analysis.verdict == "watching"
            await asyncio.wait((stopped,), timeout=policy.interval if watching else IDLE_TICK)
            if stop.is_set():
                return
            try:
                await tick(cfg, state, hooks, follower, routed, ports)
                last_error = None
            except Exception as e:  # a bug or a bad value must not end the app's figures
                text = f"{type(e).__name__}: {e}"
                if text != last_error:
                    hooks.log(f"{cfg.name}: traffic check failed: {text}\n"
                              + traceback.format_exc().rstrip())
                last_error = state.error = text
    finally:
        stopped.cancel()
        follower.close()


async def tick(cfg: AppConfig, state: TrafficState, hooks: TrafficHooks,
               follower: LogFollower, routed: RoutedSlot, ports: SlotOfPort) -> None:
    feed(state.windows, follower.read(), ports.get())
    state.following = follower.fd is not None
    state.rotations = follower.rotations
    state.error = None if state.following else (
        f"no access log at {follower.path} yet (install the site from `zdagent nginx render "
        "--site` and reload Nginx)")
    now = time.time()
    slot = routed.get()
    if slot != state.routed:
        previous, state.routed = state.routed, slot
        await _switched(cfg, state, hooks, routed, previous, slot, now)
    a = state.analysis
    if a is not None and a.verdict == "watching" and a.observe(
            figures_since(state.windows, a, now), now):
        await _revert(cfg, state, hooks, a, now)


def figures_since(windows: TrafficWindows, a: AfterSwitch, now: float) -> Figures:
    """The new slot's figures since its switch, with how many were slower than max_p99."""
    return windows.figures(a.slot, now, since=a.switched_at,
                           slow_above=a.policy.max_p99 or None)


async def _switched(cfg: AppConfig, state: TrafficState, hooks: TrafficHooks,
                    routed: RoutedSlot, previous: str | None, slot: str | None,
                    now: float) -> None:
    """The routed slot changed: analyse it if people switched to it, else stop analysing."""
    a = state.analysis
    if a is not None and a.verdict == "watching":
        a.verdict = "superseded"
    if slot is None or previous is None or not cfg.policy.enabled:
        return
    last = await hooks.last_switch()
    if last is None or last[0] not in ANALYSED_KINDS or last[1] != slot:
        return
    switched_at = min(now, routed.changed_at() or now)  # the tick may have come late
    baseline = state.windows.figures(previous, switched_at)
    state.analysis = AfterSwitch(slot, previous, switched_at, baseline, cfg.policy)
    hooks.log(f"{cfg.name}: analysing {slot} for {cfg.policy.window:g}s after the "
              f"{last[0]} (baseline {previous}: {baseline.describe()})")


async def _revert(cfg: AppConfig, state: TrafficState, hooks: TrafficHooks, a: AfterSwitch,
                  now: float) -> None:
    figures = a.figures or Figures(0, 0, None, None)
    reason = (f"analysis: {a.reason} ({a.slot} since the switch: {figures.describe()}; "
              f"previous {a.standby}: "
              f"{a.baseline.describe() if a.baseline else 'no figures'})")
    if now < state.cooldown_until:
        a.verdict = "failed"
        hooks.log(f"{cfg.name}: {reason}; not reverted: an analysis revert happened less "
                  f"than {cfg.policy.cooldown:g}s ago")
        return
    why_not = await hooks.revert(reason, a.slot)
    if why_not is None:
        a.verdict = "reverted"
        state.reverts += 1
        state.cooldown_until = time.time() + cfg.policy.cooldown
        hooks.log(f"{cfg.name}: reverted to {a.standby}: {reason}")
        return
    # Refused (lock busy, standby unhealthy): the next failure retries while the window lasts.
    a.verdict = "watching" if now < a.until else "not-reverted"
    a.reason = f"{a.reason}; revert refused: {why_not}"
    if why_not != state.refused:  # once per distinct refusal, not every interval
        hooks.log(f"{cfg.name}: {reason}; revert refused: {why_not}")
    state.refused = why_not
