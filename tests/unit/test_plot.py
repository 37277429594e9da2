"""The benchmark timeline: bucketing is exact, and the picture is a real PNG."""

from __future__ import annotations

import math

from benchmarks.plot import Marker, Sample, plot_timeline, timeline


def recorded() -> list[Sample]:
    """Two clients at 10 req/s for 3 s; the raw client fails twice right after 1.5 s."""
    out = []
    for i in range(30):
        t = 1000.0 + i * 0.1
        out.append(Sample(t, 0.002, "close", True))
        out.append(Sample(t + 0.01, 0.004, "raw", not (15 <= i <= 16)))
    return out


def test_timeline_buckets_counts_failures_and_latency():
    tl = timeline(recorded(), bucket_s=1.0)
    assert tl.clients == ["close", "raw"]
    assert tl.starts == [0.0, 1.0, 2.0]
    assert tl.rps["close"] == [10.0, 10.0, 10.0]
    assert tl.failed["raw"] == [0, 2, 0] and tl.total_failed == {"close": 0, "raw": 2}
    assert tl.p50_ms[0] == 2.0 and tl.p99_ms[0] == 4.0
    assert math.isnan(timeline([Sample(0, 1, "a", False)]).p50_ms[0])  # nothing ok


def test_plot_writes_a_png_with_markers(tmp_path):
    import matplotlib.image

    out = plot_timeline(tmp_path / "docs" / "t.png", recorded(),
                        [Marker(1001.5, "deploy v2", start=1001.0),
                         Marker(1002.5, "revert", "revert")],
                        title="test run", bucket_s=0.5)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    height, width = matplotlib.image.imread(out).shape[:2]
    assert (width, height) == (1100, 750)
