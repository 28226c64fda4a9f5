"""The report's statistics helpers."""

from __future__ import annotations

import math

from coordinator.testbed.report import latency, percentile, wilson


def test_wilson_interval() -> None:
    assert wilson(0, 0) is None
    lo, hi = wilson(50, 100) or (0, 0)
    assert lo < 0.5 < hi and math.isclose(lo + hi, 1.0)
    lo, hi = wilson(0, 20) or (1, 1)
    assert lo == 0.0 and 0 < hi < 0.2
    lo, hi = wilson(20, 20) or (0, 0)
    assert hi == 1.0 and lo > 0.8


def test_percentiles() -> None:
    xs = [float(x) for x in range(1, 101)]
    assert percentile(xs, 50) == 50.5
    assert percentile([], 50) is None
    assert math.isclose(percentile(xs, 99) or 0, 99.01)
    assert latency([]) == {"n": 0, "p50": None, "p99": None}
