"""Sliding windows, quantiles and the judge: pure logic of zdagent.traffic."""

from __future__ import annotations

import dataclasses
import random

import pytest

from zdagent.config import DEFAULT_ANALYSIS
from zdagent.traffic.analysis import AfterSwitch, judge
from zdagent.traffic.windows import BOUNDS, Figures, SlotWindow, TrafficWindows

T0 = 1_700_000_000.0
POLICY = dataclasses.replace(DEFAULT_ANALYSIS, min_requests=20, max_error_rate=0.05,
                             max_p99=0.5, baseline_factor=3.0, failures=3, window=30)


def figures(requests: int, errors: int, p99: float | None = 0.01) -> Figures:
    return Figures(requests, errors, 0.005 if requests else None, p99 if requests else None, 10)


# --- windows -------------------------------------------------------------------------------

def test_window_counts_requests_errors_and_quantiles():
    w = SlotWindow(60)
    for i in range(100):
        w.add(T0 + i * 0.1, 500 if i % 5 == 0 else 200, 0.010 if i < 99 else 0.400)
    f = w.figures(T0 + 10)
    assert (f.requests, f.errors) == (100, 20)
    assert f.error_rate == pytest.approx(0.2)
    assert 0.010 <= f.p50 <= 0.0125  # a bucket bound at most 25 % above the true value
    assert 0.010 <= f.p99 <= 0.0125  # 99th of 100 is still the fast ones
    w.add(T0 + 10, 200, 0.400)
    assert w.figures(T0 + 10).p99 == pytest.approx(0.4)  # capped by the slowest seen


def test_window_forgets_old_seconds_and_honours_since():
    w = SlotWindow(10)
    w.add(T0, 500, 0.01)
    w.add(T0 + 5, 200, 0.01)
    assert w.figures(T0 + 5).requests == 2
    assert w.figures(T0 + 5, since=T0 + 1).requests == 1
    assert w.figures(T0 + 12).requests == 1  # T0's second left the window
    w.add(T0 + 10, 200, 0.01)  # reuses T0's ring slot
    assert w.figures(T0 + 10).errors == 0
    assert not w.add(T0, 500, 0.01)  # older than what the ring slot holds: dropped


def test_memory_is_bounded_by_the_window_not_the_traffic():
    w = SlotWindow(5)
    for i in range(50_000):
        w.add(T0 + i / 1000, 200, 0.001 * (i % 700))
    assert len(w.ring) == 5
    assert all(len(b.hist) == len(BOUNDS) + 1 for b in w.ring)
    f = w.figures(T0 + 49.999)
    assert f.requests == 5000 and f.seconds == 5


def test_overflow_latency_reports_the_slowest():
    w = SlotWindow(5)
    w.add(T0, 200, 300.0)
    assert w.figures(T0).p99 == 300.0


def test_traffic_windows_per_slot():
    tw = TrafficWindows(30)
    tw.add("blue", T0, 200, 0.01)
    tw.add("green", T0, 502, 0.01)
    assert tw.figures("green", T0).errors == 1
    assert tw.figures("blue", T0).errors == 0
    assert tw.figures("nowhere", T0).requests == 0
    d = tw.to_dict(T0)
    assert set(d["slots"]) == {"blue", "green"} and d["slots"]["green"]["errors"] == 1


# --- judge -----------------------------------------------------------------------------------

def test_judge_needs_min_requests():
    assert judge(figures(19, 19), None, POLICY) is None


def test_judge_error_rate_reason_names_the_figures():
    reason = judge(figures(412, 88), None, POLICY)
    assert reason == "5xx 21.4% over 412 requests > 5%"


def test_judge_passes_below_threshold():
    assert judge(figures(1000, 10), figures(1000, 10), POLICY) is None  # 1 % background
    assert judge(figures(1000, 0), None, POLICY) is None


def test_judge_error_rate_needs_more_than_chance():
    assert judge(figures(20, 2), None, POLICY) is None  # 10 %, but 2 of 20 at 1 % happens
    assert judge(figures(20, 5), None, POLICY)  # 25 % of 20: no accident
    assert judge(figures(10_000, 600), None, POLICY)  # 6 % of many: above 5 %


def test_judge_p99():
    assert judge(figures(100, 0, p99=0.8), None, POLICY) == "p99 800ms over 100 requests > 500ms"
    assert judge(figures(100, 0, p99=0.8), None,
                 dataclasses.replace(POLICY, max_p99=0)) is None  # rule off


def test_judge_baseline_factor():
    loose = dataclasses.replace(POLICY, max_error_rate=0.5)
    # 5 % over 1000 requests is above 3 x 1 % beyond chance; 4 % (1.9 sigma) would not be.
    reason = judge(figures(1000, 50), figures(1000, 10), loose)
    assert reason and "3x the previous version's 1.0%" in reason
    assert judge(figures(1000, 40), figures(1000, 10), loose) is None
    assert judge(figures(1000, 25), figures(1000, 10), loose) is None  # 2.5 % < 3 %
    # A clean baseline counts as 1 %: 2 % is no regression, 4 % is.
    assert judge(figures(1000, 20), figures(1000, 0), loose) is None
    assert judge(figures(1000, 50), figures(1000, 0), loose)
    # A baseline without enough requests, or the rule off: no verdict from it.
    assert judge(figures(1000, 40), figures(5, 0), loose) is None
    assert judge(figures(1000, 40), figures(1000, 0),
                 dataclasses.replace(loose, baseline_factor=0)) is None


# --- one switch under analysis ----------------------------------------------------------------

def test_after_switch_reverts_after_failures_in_row():
    a = AfterSwitch("green", "blue", T0, None, POLICY)
    assert not a.observe(figures(100, 20), T0 + 1)
    assert not a.observe(figures(200, 1), T0 + 2)  # a good check resets the count
    assert not a.observe(figures(300, 60), T0 + 3)
    assert not a.observe(figures(400, 80), T0 + 4)
    assert a.observe(figures(500, 100), T0 + 5)
    assert a.verdict == "failed" and a.reason == "5xx 20.0% over 500 requests > 5%"
    assert a.to_dict()["figures"]["errors"] == 100
    assert not a.observe(figures(600, 120), T0 + 6)  # decided once


def test_after_switch_passes_at_the_end_of_its_window():
    a = AfterSwitch("green", "blue", T0, figures(100, 1), POLICY)
    assert not a.observe(figures(100, 1), T0 + 10)
    assert a.verdict == "watching"
    assert not a.observe(figures(3000, 30), T0 + 30)
    assert a.verdict == "passed"


def test_figures_round_trip_and_describe():
    f = Figures(412, 88, 0.012, 0.48, 10)
    assert Figures.from_dict(f.to_dict()) == f
    assert f.describe() == "412 requests, 5xx 21.4%, p50 12ms, p99 480ms"


# --- statistics: background errors at low traffic ---------------------------------------------

def _deploy_reverted(rng: random.Random, rps: int, old_rate: float, new_rate: float) -> bool:
    """One switch under the default policy: a minute of the old slot at ``old_rate`` 5xx, then
    the new slot at ``new_rate`` for the analysis window, judged once a second."""
    w = TrafficWindows()
    for s in range(60):
        for _ in range(rps):
            w.add("blue", T0 - 60 + s + 0.5, 500 if rng.random() < old_rate else 200, 0.01)
    a = AfterSwitch("green", "blue", T0, w.figures("blue", T0), DEFAULT_ANALYSIS)
    for s in range(int(DEFAULT_ANALYSIS.window)):
        for _ in range(rps):
            w.add("green", T0 + s + 0.5, 500 if rng.random() < new_rate else 200, 0.01)
        if a.observe(w.figures("green", T0 + s + 1, since=T0), T0 + s + 1):
            return True
    return False


@pytest.mark.parametrize("rps", [1, 2, 5])
def test_no_false_revert_at_one_percent_background_errors_on_a_quiet_site(rps):
    """Same version quality before and after (1 % 5xx): one unlucky error among the first
    requests must not revert (it did in ~20 % of deploys: 1 error in 20 requests is 5 %)."""
    rng = random.Random(rps)
    reverted = sum(_deploy_reverted(rng, rps, 0.01, 0.01) for _ in range(60))
    assert reverted == 0


@pytest.mark.parametrize("rps", [1, 5])
def test_a_bad_release_is_still_reverted_on_a_quiet_site(rps):
    rng = random.Random(rps)
    assert all(_deploy_reverted(rng, rps, 0.01, 0.5) for _ in range(20))


def _analysed(latencies: list[float], policy=DEFAULT_ANALYSIS) -> AfterSwitch:
    """A switch judged once a second like the daemon does, one request a second with these
    latencies (the last one repeated for the rest of the window)."""
    from zdagent.traffic.monitor import figures_since

    w = TrafficWindows()
    a = AfterSwitch("green", "blue", T0, None, policy)
    for s in range(int(policy.window)):
        w.add("green", T0 + s + 0.5, 200, latencies[min(s, len(latencies) - 1)])
        if a.observe(figures_since(w, a, T0 + s + 1), T0 + s + 1):
            break
    return a


def test_one_cold_slow_request_after_the_switch_is_no_p99_regression():
    """The first request to a fresh container is often slow (cold caches). With fewer than
    100 requests the "p99" is the slowest one: one 3 s request at 1 req/s kept it above
    max_p99 (2 s) for every check and reverted a good release."""
    a = _analysed([3.0, 0.01])
    assert a.verdict == "passed", a.to_dict()


def test_a_slow_release_is_reverted_by_its_p99_on_a_quiet_site():
    a = _analysed([3.0])
    assert a.verdict == "failed" and a.reason.startswith("p99 "), a.to_dict()


def test_window_recovers_when_the_clock_steps_back():
    """After the clock stepped back (NTP) by more than the window, every bucket held a
    "newer" second and every new request was dropped until the clock caught up."""
    w = SlotWindow(60)
    for i in range(120):
        w.add(T0 + i, 200, 0.01)
    back = T0 - 3600
    for i in range(10):
        assert w.add(back + i, 500, 0.01)
    f = w.figures(back + 10)
    assert (f.requests, f.errors) == (10, 10)
