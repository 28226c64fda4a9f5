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


def _probation_run(granted_to_probation: bool) -> tuple[Options, object, list[object]]:
    from coordinator.testbed.records import AttemptResult, EpochRecord, RunRecord
    from coordinator.testbed.scenario import population

    sc = load_scenario(SCENARIOS / "commuters.toml")
    plans = population(sc, sc.seed)
    here = [p for p in plans if p.location == 0][:3]
    away = next(p for p in plans if p.location == 1)
    newcomer = here[2].name
    rec = EpochRecord(index=0, run=0, mechanism="posted_fee", epoch=1,
                      declared={p.name: 900_000 for p in [*here, away]},
                      q=[500_000] * len(sc.locations),
                      included=sorted(p.name for p in [*here, away]),
                      owed={p.name: 100_000 for p in [*here, away]},
                      probation=[newcomer])
    rec.attempts = [
        AttemptResult(roamer=away.name, location=0, included=True, host=here[0].name,
                      reason="granted", amount=1),
        AttemptResult(roamer=newcomer, location=1, included=False, host=away.name,
                      reason="granted" if granted_to_probation else "stale_epoch",
                      probation=True),
    ]
    return Options(out=Path("."), seed=sc.seed), sc, [RunRecord(run=0, mechanism="posted_fee",
                                                               epochs=[rec])]


def test_a_node_on_probation_is_counted_apart_and_never_granted(tmp_path: Path) -> None:
    """Probation (README "Probation"): a node included without a credential is neither an
    included roamer nor an excluded one; a grant to it fails excluded_never_granted, and
    the welfare it was planned is reported apart from what was delivered."""
    options, sc, runs = _probation_run(granted_to_probation=False)
    report = build_report(sc, options, runs, wall_s=0.0)  # type: ignore[arg-type]
    e = report["epochs"][0]
    loc = {x["name"]: x for x in e["locations"]}
    first, second = (x.name for x in sc.locations[:2])
    assert loc[first]["probation"] == 1 and loc[first]["attempts_included"] == 1
    assert loc[second]["attempts_probation"] == 1 and loc[second]["attempts_excluded"] == 0
    assert loc[second]["refusals_probation"] == {"stale_epoch": 1}
    assert e["probation_nodes"] == [runs[0].epochs[0].probation[0]]  # type: ignore[attr-defined]
    assert e["welfare_probation"] > 0
    # every included roamer's covered attempt was granted (or none was made), so the
    # sizes delivered are those planned, and what the newcomer was planned is the gap
    assert math.isclose(e["welfare_delivered"] + e["welfare_probation"], e["welfare_realised"],
                        abs_tol=1e-5)
    check = {c["name"]: c for c in report["summary"]["checks"]}["excluded_never_granted"]
    assert check["status"] == "ok"
    options, sc, runs = _probation_run(granted_to_probation=True)
    report = build_report(sc, options, runs, wall_s=0.0)  # type: ignore[arg-type]
    check = {c["name"]: c for c in report["summary"]["checks"]}["excluded_never_granted"]
    assert check["status"] == "failed" and "probation" in check["failures"][0]
    assert report["summary"]["grants_to_excluded"] == 1
