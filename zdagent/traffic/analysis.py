"""Judging a release by its real traffic: pure decisions, no I/O.

``judge`` is the one rule set (after Flagger's built-in checks: request success rate and p99
per interval), used after every switch (``AfterSwitch``) and by the canary for each step with
the stable slot as the baseline. A check without enough requests gives no verdict: a quiet
site is never reverted on a handful of requests. An error-rate rule fails only when the rate
is above its limit beyond chance (``surely_above``): one unlucky 5xx among the first 20
requests of a site with 1 % background errors is 5 %, but no regression. A revert needs
``failures`` failed checks in a row, so one bad second does not move traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from zdagent.config import AnalysisConfig
from zdagent.traffic.windows import Figures, ms

# A baseline error rate below this counts as this in the baseline rule: against a clean
# previous version (0 %), a single 5xx would otherwise be an infinite regression.
BASELINE_FLOOR = 0.01
# One-sided 99 % confidence: an error-rate rule fails only when even the low end of the rate's
# Wilson interval is above the limit. Checks repeat on cumulative figures, so a plain "rate >
# limit" reverted ~20 % of good releases at 1-5 req/s with 1 % background errors.
CONFIDENCE_Z = 2.33
# The latency rule judges the share of requests slower than max_p99 (Figures.slow) the same
# way: under 100 requests a "p99" is the slowest one, e.g. a cold first request after a switch.
P99 = 0.99


def surely_above(errors: int, requests: int, limit: float, z: float = CONFIDENCE_Z) -> bool:
    """True when ``errors`` of ``requests`` show a rate above ``limit`` beyond chance."""
    if not requests:
        return False
    p, z2 = errors / requests, z * z
    low = (p + z2 / (2 * requests) - z * math.sqrt(p * (1 - p) / requests
                                                   + z2 / (4 * requests * requests)))
    return low / (1 + z2 / requests) > limit


def judge(new: Figures, baseline: Figures | None, policy: AnalysisConfig) -> str | None:
    """Why ``new`` fails the policy (a one-line reason with the figures), or None.

    ``baseline``: the previous (or stable) version's figures; its rule applies only when it
    has ``min_requests`` itself and ``policy.baseline_factor`` is not 0.
    """
    if new.requests < policy.min_requests:
        return None
    rate = new.error_rate
    if surely_above(new.errors, new.requests, policy.max_error_rate):
        return (f"5xx {rate:.1%} over {new.requests} requests > "
                f"{policy.max_error_rate * 100:g}%")
    if (policy.max_p99 and new.p99 is not None and new.p99 > policy.max_p99
            and (new.slow is None or surely_above(new.slow, new.requests, 1 - P99))):
        return (f"p99 {ms(new.p99)} over {new.requests} requests > "
                f"{ms(policy.max_p99)}")
    if (policy.baseline_factor and baseline is not None
            and baseline.requests >= policy.min_requests):
        limit = policy.baseline_factor * max(baseline.error_rate, BASELINE_FLOOR)
        if surely_above(new.errors, new.requests, limit):
            return (f"5xx {rate:.1%} over {new.requests} requests > "
                    f"{policy.baseline_factor:g}x the previous version's "
                    f"{baseline.error_rate:.1%} ({baseline.requests} requests)")
    return None


@dataclass
class AfterSwitch:
    """One switch under analysis: the new slot is judged until ``until``.

    ``observe`` takes each check's figures and says when to revert (``failures`` failed
    checks in a row); the figures and reason of the last failed check are kept for history.
    """

    slot: str  # the new live slot
    standby: str | None  # the slot a revert goes back to
    switched_at: float  # epoch seconds
    baseline: Figures | None
    policy: AnalysisConfig
    failed_in_row: int = 0
    checks: int = 0
    reason: str | None = None
    figures: Figures | None = None
    verdict: str = "watching"  # watching | passed | failed | reverted | not-reverted

    @property
    def until(self) -> float:
        return self.switched_at + self.policy.window

    def observe(self, figures: Figures, now: float) -> bool:
        """One check; True when the release must be reverted now."""
        if self.verdict != "watching":
            return False
        self.checks += 1
        self.figures = figures
        reason = judge(figures, self.baseline, self.policy)
        if reason is None:
            self.failed_in_row = 0
            if now >= self.until:
                self.verdict = "passed"
            return False
        self.failed_in_row += 1
        self.reason = reason
        if self.failed_in_row >= self.policy.failures:
            self.verdict = "failed"
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "standby": self.standby, "switched_at": self.switched_at,
                "until": self.until, "verdict": self.verdict, "checks": self.checks,
                "failed_in_row": self.failed_in_row, "reason": self.reason,
                "figures": self.figures.to_dict() if self.figures else None,
                "baseline": self.baseline.to_dict() if self.baseline else None}
