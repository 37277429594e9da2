"""Sliding traffic windows per slot: requests, 5xx, latency quantiles of the last N seconds.

Pure and bounded: each slot keeps one bucket per second for the last ``seconds`` seconds (a
ring, reused as time moves on), and each bucket holds counts and a fixed latency histogram,
so memory does not grow with traffic. Quantiles are read from the histogram: the answer is
the upper bound of the bucket the quantile falls in (bounds grow by 25 %, so a p99 is at most
25 % above the true one), which is exact enough to judge a release and cheap to merge.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

WINDOW_SECONDS = 60  # what `status` shows and the longest span analysis can judge


def _bounds() -> tuple[float, ...]:
    """Latency bucket upper bounds in seconds: 1 ms x 1.25^k up to 120 s."""
    out, b = [], 0.001
    while b < 120:
        out.append(round(b, 6))
        b *= 1.25
    return tuple(out)


BOUNDS = _bounds()  # the last histogram slot counts everything above BOUNDS[-1]


@dataclass(frozen=True)
class Figures:
    """One slot's traffic over a span: what analysis judges and `status` shows."""

    requests: int
    errors: int  # answers with status >= 500
    p50: float | None  # seconds; None without requests
    p99: float | None
    seconds: int = 0  # the span covered
    slow: int | None = None  # requests slower than the ``slow_above`` asked for, if any

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 6), "p50": self.p50, "p99": self.p99,
                "seconds": self.seconds, **({} if self.slow is None else {"slow": self.slow})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figures:
        return cls(int(d["requests"]), int(d["errors"]), d.get("p50"), d.get("p99"),
                   int(d.get("seconds", 0)), d.get("slow"))

    def describe(self) -> str:
        """``412 requests, 5xx 21.3%, p50 12ms, p99 480ms`` for logs and history."""
        if not self.requests:
            return "no requests"
        return (f"{self.requests} requests, 5xx {self.error_rate:.1%}, "
                f"p50 {ms(self.p50)}, p99 {ms(self.p99)}")


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


class _Bucket:
    __slots__ = ("errors", "hist", "requests", "second", "top")

    def __init__(self) -> None:
        self.second = -1
        self.requests = 0
        self.errors = 0
        self.hist = [0] * (len(BOUNDS) + 1)
        self.top = 0.0  # the slowest request: the answer for the overflow slot

    def reset(self, second: int) -> None:
        self.second = second
        self.requests = self.errors = 0
        self.hist = [0] * (len(BOUNDS) + 1)
        self.top = 0.0


class SlotWindow:
    """One slot's ring of per-second buckets."""

    def __init__(self, seconds: int = WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self.ring = [_Bucket() for _ in range(seconds)]

    def add(self, when: float, status: int, latency: float) -> bool:
        """Count one request that ended at ``when`` (epoch s); False if it is too old."""
        second = int(when)
        bucket = self.ring[second % self.seconds]
        if bucket.second != second:
            # The slot holds a newer second: this one is gone, unless that second is two
            # windows or more ahead: the clock stepped back (Nginx logs in time order).
            if second < bucket.second < second + 2 * self.seconds:
                return False
            bucket.reset(second)
        bucket.requests += 1
        bucket.errors += status >= 500
        bucket.hist[bisect.bisect_left(BOUNDS, latency)] += 1
        bucket.top = max(bucket.top, latency)
        return True

    def figures(self, now: float, since: float | None = None,
                slow_above: float | None = None) -> Figures:
        """The requests of the last ``seconds`` up to ``now``; only those at or after
        ``since`` if given (e.g. a switch); with ``slow_above``, how many were slower (by
        the histogram's bounds, as the quantiles are read)."""
        last = int(now)
        first = last - self.seconds + 1
        if since is not None:
            first = max(first, int(since))
        requests = errors = 0
        hist = [0] * (len(BOUNDS) + 1)
        top = 0.0
        for b in self.ring:
            if first <= b.second <= last and b.requests:
                requests += b.requests
                errors += b.errors
                for i, n in enumerate(b.hist):
                    if n:
                        hist[i] += n
                top = max(top, b.top)
        slow = None if slow_above is None else sum(hist[bisect.bisect_right(BOUNDS,
                                                                            slow_above):])
        return Figures(requests, errors, _quantile(hist, requests, 0.5, top),
                       _quantile(hist, requests, 0.99, top), max(0, last - first + 1), slow)


def _quantile(hist: list[int], total: int, q: float, top: float) -> float | None:
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return min(BOUNDS[i], top) if i < len(BOUNDS) else top
    return top


class TrafficWindows:
    """Every slot's window of one app, plus what could not be attributed to a slot."""

    def __init__(self, seconds: int = WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self.slots: dict[str, SlotWindow] = {}
        self.unrouted = 0  # answered without a slot of ours (e.g. Nginx's own 502)
        self.bad_lines = 0  # not JSON, or missing fields: counted and skipped
        self.lines = 0
        self.own = 0  # zdagent's own requests (watchdog probes, switch checks): left out

    def add(self, slot: str, when: float, status: int, latency: float) -> None:
        window = self.slots.get(slot)
        if window is None:
            window = self.slots[slot] = SlotWindow(self.seconds)
        window.add(when, status, latency)

    def figures(self, slot: str, now: float, since: float | None = None,
                slow_above: float | None = None) -> Figures:
        window = self.slots.get(slot)
        if window is None:
            return Figures(0, 0, None, None, 0, None if slow_above is None else 0)
        return window.figures(now, since, slow_above)

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"window_seconds": self.seconds, "lines": self.lines,
                "bad_lines": self.bad_lines, "unrouted": self.unrouted,
                "own_requests": self.own,
                "slots": {s: w.figures(now).to_dict() for s, w in sorted(self.slots.items())}}
