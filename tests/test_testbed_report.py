"""The report's statistics helpers and what a verdict means."""

from __future__ import annotations

import math
from pathlib import Path

from coordinator.testbed.checks import Check, Verdict, verdict_text
from coordinator.testbed.records import Options
from coordinator.testbed.report import build_report, latency, percentile, wilson
from coordinator.testbed.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "scripts" / "scenarios"


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


def test_wilson_matches_the_closed_form() -> None:
    """scipy's Wilson interval is the textbook one: centre and half-width by hand."""
    z = 1.959963984540054
    for k, n in ((3, 10), (0, 7), (19, 20), (500, 1000)):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        lo, hi = wilson(k, n) or (0, 0)
        assert math.isclose(lo, max(0.0, centre - half), abs_tol=1e-9)
        assert math.isclose(hi, min(1.0, centre + half), abs_tol=1e-9)


def _check(name: str, checked: int, failures: tuple[str, ...] = ()) -> Check:
    status = "failed" if failures else ("ok" if checked else "not_checked")
    return Check(name=name, status=status, checked=checked, of=max(checked, 1),  # type: ignore[arg-type]
                 unit="items", why="" if checked else "nothing to look at", failures=failures)


def test_not_checked_is_not_a_pass() -> None:
    some = (_check("excluded_never_granted", 5), _check("service_consistent", 0))
    assert Verdict(checks=some, about=()).ok
    about = Verdict(checks=some, about=("service_consistent",))
    assert not about.ok and about.missing == ("service_consistent",)
    assert "did not check" in about.summary()
    nothing = Verdict(checks=(_check("excluded_never_granted", 0),), about=())
    assert not nothing.ok and "checked nothing" in nothing.summary()
    failed = Verdict(checks=(_check("excluded_never_granted", 3, ("a granted",)),), about=())
    assert not failed.ok and failed.summary().startswith("FAILED")
    assert verdict_text(_check("service_consistent", 0).as_dict()) == (
        "not checked: nothing to look at")
    assert verdict_text(_check("service_consistent", 12).as_dict()) == "ok (12 of 12 items)"


def test_a_run_with_no_epoch_checks_nothing(tmp_path: Path) -> None:
    """An interrupted run before any epoch: every check is 'not checked', none 'ok'."""
    sc = load_scenario(SCENARIOS / "commuters.toml")
    report = build_report(sc, Options(out=tmp_path, seed=sc.seed), [], wall_s=0.0,
                          interrupted=True)
    assert {c["status"] for c in report["summary"]["checks"]} == {"not_checked"}
    assert report["summary"]["ok"] is False
    assert all(c["why"] for c in report["summary"]["checks"])
