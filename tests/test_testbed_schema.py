"""report.json is a validated, typed structure (coordinator/testbed/schema.py): what the
launcher builds is validated before it is written, readers validate what they load, and
the JSON shape the dashboard and the tests read is kept."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from coordinator.testbed.records import AttemptResult, EpochRecord, Options, RunRecord
from coordinator.testbed.report import build_report, write_report
from coordinator.testbed.scenario import population, scenario_from_dict
from coordinator.testbed.schema import Mechanism, Report, ReportError, load_report, validate_report
from protocol.messages import MECHANISMS

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _tiny(payment: str) -> str:
    """The report of one synthetic posted-fee epoch (no processes): every field filled.
    Cached as JSON text (its Monte Carlo takes seconds), so each caller gets its own copy."""
    sc = scenario_from_dict({
        "scenario": {"name": "t", "epochs": 1, "seed": 3},
        "market": {"payment": payment},
        "locations": [{"name": "a", "nodes": 3}, {"name": "b", "nodes": 2}]})
    plans = population(sc, 3)
    names = [p.name for p in plans]
    rec = EpochRecord(index=0, run=0, mechanism="posted_fee", epoch=0,
                      declared={n: p.theta for n, p in zip(names, plans, strict=True)},
                      declarations=5, q=[500_000, 400_000], included=names[:4],
                      owed={n: 100_000 for n in names[:4]}, expected_welfare=1_200_000,
                      commitments=4, expected_commitments=4,
                      attempts=[AttemptResult(roamer="a-0", location=1, included=True,
                                              host="b-0", reason="granted", amount=10_000,
                                              latency_ms=3.5),
                                AttemptResult(roamer="b-1", location=0, included=False,
                                              host="a-1", reason="not_included",
                                              latency_ms=2.0)],
                      durations={"roam": 0.1})
    cut = EpochRecord(index=1, run=0, mechanism="posted_fee", epoch=1, cutoff=True)
    run = RunRecord(run=0, mechanism="posted_fee", epochs=[rec, cut], startup_s=0.5, wall_s=1.0)
    # build_report writes nothing: out is never touched
    return json.dumps(build_report(sc, Options(out=Path("unused"), seed=3, mode="inproc"),
                                   [run], wall_s=1.0))


def tiny_report(tmp_path: Path, *, payment: str = "in_kind") -> dict[str, Any]:
    out: dict[str, Any] = json.loads(_tiny(payment))
    return out


@pytest.mark.parametrize("payment", ["in_kind", "money"])
def test_a_built_report_is_a_valid_typed_report_and_round_trips(tmp_path: Path,
                                                                payment: str) -> None:
    report = tiny_report(tmp_path, payment=payment)
    typed = validate_report(report)
    assert isinstance(typed, Report) and typed.epochs[0].locations[1].name == "b"
    write_report(report, tmp_path, plots=False)
    assert load_report(tmp_path / "report.json") == typed
    assert json.loads((tmp_path / "report.json").read_text()) == report


def test_the_json_shape_readers_rely_on_is_kept(tmp_path: Path) -> None:
    report = tiny_report(tmp_path)
    assert set(report) == {"scenario", "seed", "mode", "interrupted", "wall_s", "startup_s",
                           "epochs", "summary", "reproducibility", "unit"}
    assert {"checks", "checks_about", "ok", "verdict", "by_mechanism", "free_riders",
            "free_riders_detected", "latency_ms", "grants_to_excluded"} <= set(report["summary"])
    c = report["summary"]["checks"][0]
    assert set(c) == {"name", "status", "checked", "of", "unit", "why", "title", "failures"}
    e = report["epochs"][0]
    assert {"epoch", "mechanism", "run", "locations", "budget", "welfare_expected",
            "welfare_sd", "welfare_realised", "welfare_z", "excluded_nodes"} <= set(e)
    assert isinstance(e["locations"][1]["service_rate_ci95"], list)  # a JSON array


def _broken(report: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(report))
    target = out
    for k in path[:-1]:
        target = target[k]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@pytest.mark.parametrize(("path", "value", "words"), [
    (("summary", "checks", 0, "status"), "passed", "status"),
    (("summary", "checks", 0, "name"), "looks_fine", "looks_fine"),
    (("epochs", 0, "welfare_sd"), float("nan"), "welfare_sd"),
    (("epochs", 0, "locations", 0, "attempts_included"), -1, "attempts_included"),
    (("epochs", 0, "locations", 0, "coverage_planned"), 1.5, "coverage_planned"),
    (("epochs", 0, "surprise"), 1, "surprise"),
    (("summary", "ok"), KeyError, "ok"),
    (("mode",), "threads", "mode"),
    (("scenario", "kind"), "spectrum", "spectrum"),
    (("reproducibility", "nodes"), "abc", "nodes"),
])
def test_what_is_not_a_report_is_refused_naming_the_field(tmp_path: Path, path: tuple[Any, ...],
                                                          value: Any, words: str) -> None:
    bad = _broken(tiny_report(tmp_path), path, value)
    with pytest.raises(ReportError, match=words):
        validate_report(bad)


def test_loading_refuses_files_that_are_not_reports(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text('{"scenario": {}}')
    for name, words in (("a.json", "not JSON"), ("b.json", "not a testbed report"),
                        ("missing.json", "missing.json")):
        with pytest.raises(ReportError, match=words):
            load_report(tmp_path / name)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "dashboard.py"),
                          str(tmp_path / "b.json")], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2 and "not a testbed report" in out.stderr


def test_the_report_names_the_protocols_mechanisms() -> None:
    assert set(typing.get_args(Mechanism)) == set(MECHANISMS)


def test_a_run_without_plots_leaves_no_plots_of_an_earlier_run(tmp_path: Path) -> None:
    for name in ("service.png", "access.png", "welfare_budget.png"):
        (tmp_path / name).write_bytes(b"an earlier run's plot")
    written = write_report(tiny_report(tmp_path), tmp_path, plots=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    assert [p.name for p in written] == ["report.json", "report.md"]
