"""Timeline pictures of a benchmark run: what the load saw, second by second, with each
switch (or revert) marked — the picture to look at before trusting "0 failed".

General on purpose: any benchmark passes its requests as ``Sample`` (start time, duration,
client kind, ok) and its operations as ``Marker`` (time, label, kind), e.g.::

    from benchmarks.plot import Marker, Sample, plot_timeline
    plot_timeline(Path("docs/bad-release-timeline.png"),
                  [Sample(r.t, r.dt, r.kind, r.ok) for r in records],
                  [Marker(t_revert, "revert", "revert", start=t_bad)], title="bad release")

matplotlib is a benchmark-only dependency (the ``bench`` extra), imported here only.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple


class Sample(NamedTuple):
    t: float  # wall-clock start of the request
    dt: float  # seconds it took (failed ones too)
    client: str  # the client kind it is counted under
    ok: bool


class Marker(NamedTuple):
    t: float  # the moment itself (a line): e.g. the switch
    label: str
    kind: str = "switch"  # switch | rollback | revert | anything: picks the line style
    start: float | None = None  # the operation's start: shaded from here to ``t``


MARKER_STYLE = {"switch": ("tab:green", "-"), "rollback": ("tab:blue", "--"),
                "revert": ("tab:red", "-."), "deploy": ("tab:green", "-")}


@dataclass
class Timeline:
    """Requests bucketed by start time: counts per client and latency percentiles."""

    t0: float
    bucket_s: float
    clients: list[str]
    starts: list[float] = field(default_factory=list)  # seconds since t0, one per bucket
    rps: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, list[int]] = field(default_factory=dict)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)

    @property
    def total_failed(self) -> dict[str, int]:
        return {c: sum(v) for c, v in self.failed.items()}



def plots_dir(ap: argparse.ArgumentParser, value: Path) -> Path | None:
    """The benchmarks' ``--plots DIR`` ('' for none); exits with the parser's usage error
    when matplotlib (the ``bench`` extra) is missing, before any work is done."""
    if str(value) in ("", "."):
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        ap.error("--plots needs matplotlib: pip install '.[bench]' (or --plots '')")
    return value

def timeline(samples: Iterable[Sample], bucket_s: float = 0.5,
             t0: float | None = None) -> Timeline:
    """Bucket the samples (pure: unit-tested). Latency percentiles are over the bucket's
    successful requests (nan for a bucket without any)."""
    samples = sorted(samples)
    if not samples:
        raise ValueError("no samples to plot")
    start = samples[0].t if t0 is None else t0
    n = int((samples[-1].t - start) // bucket_s) + 1
    clients = sorted({s.client for s in samples})
    count = {c: [0] * n for c in clients}
    failed = {c: [0] * n for c in clients}
    latency: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        i = int((s.t - start) // bucket_s)
        if not 0 <= i < n:
            continue
        count[s.client][i] += 1
        if s.ok:
            latency[i].append(s.dt * 1000)
        else:
            failed[s.client][i] += 1
    out = Timeline(start, bucket_s, clients, starts=[i * bucket_s for i in range(n)],
                   rps={c: [x / bucket_s for x in v] for c, v in count.items()},
                   failed=failed)
    for i in range(n):
        values = sorted(latency.get(i, []))
        out.p50_ms.append(_pct(values, 50))
        out.p99_ms.append(_pct(values, 99))
    return out


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def plot_timeline(out: Path, samples: Sequence[Sample], markers: Sequence[Marker], *,
                  title: str, bucket_s: float = 0.5, labels: dict[str, str] | None = None
                  ) -> Path:
    """Write a PNG: requests/s per client, failed requests per client, latency p50/p99;
    every marker as a vertical line across all three panels (its operation shaded)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    tl = timeline(samples, bucket_s)
    labels = labels or {}
    fig, (ax_rps, ax_fail, ax_lat) = plt.subplots(
        3, 1, figsize=(11, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 2]})
    order = [c for c in labels if c in tl.clients] + [c for c in tl.clients if c not in labels]
    colors = {c: f"C{i}" for i, c in enumerate(order)}
    for c in order:
        ax_rps.plot(tl.starts, tl.rps[c], lw=1, color=colors[c], label=labels.get(c, c))
    ax_rps.set_ylabel("requests / s")
    ax_rps.set_ylim(bottom=0)
    ax_rps.legend(loc="lower left", fontsize=8, ncol=3, title="requests / s per client",
                  title_fontsize=8)

    width = bucket_s / max(1, len(order))
    for k, c in enumerate(order):
        ax_fail.bar([x + k * width for x in tl.starts], tl.failed[c], width=width,
                    align="edge", color=colors[c],
                    label=f"{labels.get(c, c)}: {tl.total_failed[c]}")
    ax_fail.set_ylabel(f"failed per {bucket_s:g} s")
    # Headroom above the bars for the legend (the totals): it must never hide a bar.
    ax_fail.set_ylim(bottom=0, top=max(1, *(max(v) for v in tl.failed.values())) * 2)
    ax_fail.legend(loc="upper center", fontsize=8, ncol=3, title="failed requests in total",
                   title_fontsize=8)

    ax_lat.plot(tl.starts, tl.p50_ms, lw=1, label="p50")
    ax_lat.plot(tl.starts, tl.p99_ms, lw=1, label="p99")
    ax_lat.set_ylabel("latency ms (ok requests)")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel(f"seconds since the first request (buckets of {bucket_s:g} s)")
    ax_lat.legend(loc="upper left", fontsize=8)

    for m in markers:
        color, style = MARKER_STYLE.get(m.kind, ("tab:gray", ":"))
        x = m.t - tl.t0
        for ax in (ax_rps, ax_fail, ax_lat):
            ax.axvline(x, color=color, ls=style, lw=0.9, alpha=0.8)
            if m.start is not None:
                ax.axvspan(m.start - tl.t0, x, color=color, alpha=0.08, lw=0)
        ax_rps.annotate(m.label, (x, 1), xycoords=("data", "axes fraction"), rotation=90,
                        fontsize=7, va="top", ha="right", color=color)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
