"""A canary deploy's steps: the candidate gets a growing share, each step judged by traffic.

The engine starts and probes the candidate as in any deploy; then, per step of
``[canary] steps``, the split is installed (verified through Nginx), the step lasts
``step_seconds`` (or until ``promote`` / ``abort`` arrives through ``Control``), and the
candidate's figures are judged against the stable slot's with the traffic policy
(``zdagent.traffic.analysis.judge``). A pass goes on; the last step (100 %) is the ordinary
verified switch. A fail, an abort or any error puts all traffic back on stable, verified,
before the candidate is stopped (kept for its logs, never as a warm standby: the watchdog
only reverts to a running one). The store holds the step while it runs, so a daemon that
dies mid-canary is found by recovery and put back on stable (never left split).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from zdagent.errors import DeployFailed
from zdagent.events import Event
from zdagent.nginx.split import Split, cookie_name
from zdagent.runbook import with_link
from zdagent.store import CanaryState, Phase
from zdagent.traffic.analysis import judge
from zdagent.traffic.windows import Figures

if TYPE_CHECKING:
    from zdagent.deploy import Engine, _Run

ABORT_HINT = with_link("all traffic is back on the stable slot; the candidate is stopped "
                       "(its output: `zdagent logs --slot standby`)", "canary-aborted")
PROMOTE, ABORT = "promote", "abort"
# (slot, since epoch) -> the slot's figures since then; None when nothing follows traffic.
FigureSource = Callable[[str, float], Figures | None]
Seen = tuple[Figures, Figures | None]  # (the candidate's figures, the stable slot's)


class CanaryAborted(DeployFailed):
    """The canary ended before promotion: its analysis failed, or someone aborted it."""


class Control:
    """``promote`` / ``abort`` from another thread (the daemon's routes) to a running canary."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.action: str | None = None
        self.by: str | None = None

    def request(self, action: str, by: str) -> bool:
        """Ask for ``action``; False if one was already asked for (the first one wins)."""
        with self._cond:
            if self.action is not None:
                return False
            self.action, self.by = action, by
            self._cond.notify_all()
            return True

    def wait(self, timeout: float) -> str | None:
        """The action asked for, as soon as it is, or None when ``timeout`` ran out."""
        with self._cond:
            self._cond.wait_for(lambda: self.action is not None, timeout)
            return self.action


def shares(steps: tuple[int, ...]) -> list[int]:
    """The split steps: every share below 100 % (100 % is the promotion's switch)."""
    return [s for s in steps if s < 100]


def run_steps(engine: Engine, run: _Run, version: str, control: Control,
              figures: FigureSource | None) -> None:
    """Walk the split steps; return to promote, raise CanaryAborted (traffic back on
    stable, verified) to stop. The caller holds the lock and switches to 100 % after."""
    cfg, stable, candidate = engine.cfg, run.live, run.target
    assert stable is not None
    if figures is None:
        engine.emit(Event("warn", "no traffic figures (the daemon follows the access log): "
                                  "steps advance on time only"))
    started = time.time()
    try:
        for i, percent in enumerate(shares(cfg.canary.steps), start=1):
            split = Split(stable, candidate, percent, step=i,
                          cookie=cookie_name(cfg.name) if cfg.canary.sticky else None)
            with run.phase(Phase.CANARY, f"step {i}: {percent}% to {candidate}"):
                since = time.time()
                engine.store.set_canary(CanaryState(
                    cfg.name, run.deploy_id, version, stable, candidate, i,
                    list(cfg.canary.steps), percent, started, since, os.getpid()))
                engine.nginx.split(split)
                action, seen = _wait_step(engine, run, since, control, figures)
                if action == ABORT:
                    raise CanaryAborted(f"canary aborted by {control.by} at step {i} "
                                        f"({percent}%)", hint=ABORT_HINT)
                reason = None if action == PROMOTE else \
                    _judge(engine, run, i, percent, since, figures, seen)
                if reason:
                    raise CanaryAborted(f"canary failed at step {i} ({percent}% to "
                                        f"{candidate}): {reason}", hint=ABORT_HINT)
            if action == PROMOTE:
                engine.emit(Event("info", f"promoted by {control.by} at step {i}"))
                return
    except BaseException as e:
        back_to_stable(engine, stable, candidate, e)
        raise
    finally:
        engine.store.clear_canary(cfg.name)


def _wait_step(engine: Engine, run: _Run, since: float, control: Control,
               figures: FigureSource | None) -> tuple[str | None, Seen | None]:
    """Wait out the step, checking the candidate every ``analysis.interval`` meanwhile.

    A bad candidate must not serve its share for the whole ``step_seconds``: as after a
    switch, ``analysis.failures`` failed checks in a row end the step at once, with the
    figures of the last one. Returns (promote / abort / None, those figures or None)."""
    policy, end, failed = engine.cfg.policy, since + engine.cfg.canary.step_seconds, 0
    while (left := end - time.time()) > 0:
        action = control.wait(left if figures is None else min(left, policy.interval))
        if action is not None or figures is None:
            return action, None
        seen = _figures(run, since, figures)
        failed = failed + 1 if seen and judge(*seen, engine.cfg.policy) else 0
        if failed >= policy.failures:
            return None, seen
    return None, None


def _figures(run: _Run, since: float, figures: FigureSource) -> Seen | None:
    """The candidate's and the stable slot's figures since ``since`` (None: none followed)."""
    new = figures(run.target, since)
    return None if new is None else (new, figures(run.live or "", since))


def _judge(engine: Engine, run: _Run, step: int, percent: int, since: float,
           figures: FigureSource | None, seen: Seen | None = None) -> str | None:
    """The step's verdict on the candidate against the stable slot (None: it passes);
    ``seen``: figures already judged failing during the step (else read now)."""
    if figures is None:
        return None
    seen = seen or _figures(run, since, figures)
    if seen is None:
        return None
    new, base = seen
    reason = judge(new, base, engine.cfg.policy)
    said = f"{run.target}: {new.describe()}; {run.live}: {base.describe() if base else '-'}"
    state = engine.store.canary(engine.cfg.name)
    if state is not None:
        engine.store.set_canary(CanaryState(**{
            **state.to_dict(), "figures": {"candidate": new.to_dict(),
                                           "stable": base.to_dict() if base else None,
                                           "verdict": reason or "passed"}}))
    if new.requests < engine.cfg.policy.min_requests:
        engine.emit(Event("warn", f"step {step} ({percent}%): only {new.requests} request(s) "
                                  f"to {run.target}, fewer than analysis.min_requests: "
                                  "no verdict, passing on time"))
    else:
        engine.emit(Event("info", f"step {step} ({percent}%) "
                                  f"{'failed' if reason else 'passed'}: {said}"))
    return reason


def back_to_stable(engine: Engine, stable: str, candidate: str, why: BaseException) -> None:
    """All traffic to ``stable``, verified, before the candidate goes (never raises: the
    canary's own error is the one to report; a failed restore is said loudly)."""
    message = getattr(why, "message", None) or f"{type(why).__name__}: {why}"
    engine.emit(Event("warn", f"{message}: sending all traffic back to {stable}"))
    try:
        engine.nginx.switch(stable, None)  # the candidate goes next: never its backup
        engine.emit(Event("info", f"all traffic is back on {stable} (verified)"))
    except Exception as e:
        text = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        engine.emit(Event("warn", f"could NOT send all traffic back to {stable}: {text}"))
