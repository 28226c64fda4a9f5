"""Sweeps (coordinator/sweep.py, scripts/sweep.py): validation, stable keys, resume."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.mechanism import market_from_dict, solve
from coordinator.sweep import (
    SweepError,
    append_row,
    load_sweep,
    parse_sweep,
    pending,
    read_rows,
    run_task,
    tasks,
)

ROOT = Path(__file__).resolve().parent.parent

BASE: dict[str, Any] = {
    "market": {"payment": "money", "exclusion": True},
    "locations": [{
        "name": "town", "n": 4,
        "type": {"dist": "uniform", "low": 0.0, "high": 1.0},
        "utility": {"kind": "power", "A": 2 / 3, "alpha": 0.5},
        "cost": {"kind": "power", "B": 1.0, "delta": 0.0, "beta": 1.0},
    }],
}


def _data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sweep": {"name": "tiny", "mechanisms": ["posted_fee", "equal_share_post_size"],
                  "draws": 20},
        "base": copy.deepcopy(BASE),
        "grid": {"locations.*.n": [2, 6]},
        "plot": {"x": "locations.*.n"},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        elif value is None:
            del data[section]
        else:
            data[section] = value
    return data


@pytest.mark.parametrize(("changes", "message"), [
    ({"extra": {}}, "unknown top-level keys"),
    ({"sweep__mechanisms": []}, "non-empty list"),
    ({"sweep__mechanisms": ["posted_fee", "bogus"]}, "unknown mechanism 'bogus'"),
    ({"sweep__mechanisms": ["optimal", "second_best"]}, "twice"),
    ({"sweep__draws": -1}, "draws"),
    ({"sweep__speed": 3}, "unknown keys in [sweep]"),
    ({"sweep__tol": 0}, "sweep.tol"),
    ({"sweep__tol": 1.5}, "sweep.tol"),
    ({"sweep__tol": "1e-4"}, "sweep.tol"),
    ({"sweep__tol": True}, "sweep.tol"),
    ({"base": None}, "[base]"),
    ({"grid": {"locations.*.size": [1, 2]}}, "has no 'size'"),
    ({"grid": {"locations.3.n": [1, 2]}}, "not an index"),
    ({"grid": {"locations.*.n": []}}, "non-empty list"),
    ({"grid": {"locations.*.n": [2, 2]}}, "repeats"),
    ({"grid": {"locations.*.n": [2, 0]}}, "grid point {'locations.*.n': 0}"),
    ({"grid": {"market.payment": ["money", "barter"]}, "plot": {}}, "barter"),
    ({"plot": {"x": "market.payment"}}, "not a grid axis"),
])
def test_bad_sweeps_are_refused_before_anything_is_solved(changes: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(SweepError) as info:
        parse_sweep(_data(**changes))
    assert message in str(info.value)


def test_tasks_cover_the_grid_with_stable_distinct_keys() -> None:
    sweep = parse_sweep(_data(grid={"locations.*.n": [2, 6, 9],
                                    "market.payment": ["money", "in_kind"]}))
    assert sweep.columns[:2] == ("locations.*.n", "market.payment")
    ts = list(tasks(sweep))
    assert len(ts) == 3 * 2 * 2
    assert len({t.key for t in ts}) == len(ts)
    assert [t.key for t in tasks(parse_sweep(_data(grid={
        "locations.*.n": [2, 6, 9], "market.payment": ["money", "in_kind"]})))] == [
        t.key for t in ts]
    first = ts[0]
    assert first.spec["locations"][0]["n"] == 2 and first.spec["market"]["payment"] == "money"
    # The key follows the spec, not the position: the same point in another sweep
    # (different axes order or values around it) has the same key.
    other = parse_sweep(_data(grid={"locations.*.n": [6, 2]}))
    keys = {t.key for t in tasks(other)}
    same = [t for t in ts if t.spec["market"]["payment"] == "money"
            and t.spec["locations"][0]["n"] in (2, 6)]
    assert {t.key for t in same} == keys


def test_the_sweeps_tolerance_reaches_the_solver_and_keys_its_rows() -> None:
    loose = parse_sweep(_data(sweep__tol=1e-3, sweep__mechanisms=["optimal_no_exclusion"],
                              grid={"locations.*.n": [3]}))
    tight = parse_sweep(_data(sweep__mechanisms=["optimal_no_exclusion"],
                              grid={"locations.*.n": [3]}))
    (t_loose,), (t_tight,) = tasks(loose), tasks(tight)
    assert (t_loose.tol, t_tight.tol) == (1e-3, 1e-6) and t_loose.key != t_tight.key
    row = run_task(t_loose)
    assert row["success"] == "true" and float(row["error_estimate"]) <= 1e-3
    market = market_from_dict(copy.deepcopy(BASE))
    assert solve(market, "optimal_no_exclusion", tol=1e-3).result.details["tolerance"] == 1e-3
    with pytest.raises(ValueError, match="tol"):
        solve(market, "optimal", tol=0.0)


def test_run_task_row_and_unsolvable_mechanism_row() -> None:
    sweep = parse_sweep(_data())
    row = run_task(next(tasks(sweep)))
    assert row["mechanism"] == "posted_fee" and row["success"] == "true"
    assert float(row["welfare_per_agent"]) == pytest.approx(3 * 2 / 128)
    assert row["expectation_source"] == "exact" and row["locations.*.n"] == "2"
    two = copy.deepcopy(BASE)
    two["locations"].append(dict(two["locations"][0], name="other"))
    bad = parse_sweep(_data(base=two, sweep__mechanisms=["equal_share_post_size"]))
    row = run_task(next(tasks(bad)))
    assert row["success"] == "false" and "one location" in row["status"]


def test_results_file_drops_a_cut_row_and_refuses_another_sweeps_file(tmp_path: Path
                                                                     ) -> None:
    sweep = parse_sweep(_data())
    path = tmp_path / "results.csv"
    ts = list(tasks(sweep))
    rows = [run_task(t) for t in ts[:2]]
    for r in rows:
        append_row(path, sweep.columns, r)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(rows[0]["key"][:5] + ",posted_f")  # interrupted mid-row
    kept = read_rows(path, sweep.columns)
    assert [r["key"] for r in kept] == [r["key"] for r in rows]
    assert path.read_text().endswith("\n")
    assert [t.key for t in pending(sweep, kept)] == [t.key for t in ts[2:]]
    other = parse_sweep(_data(grid={"market.exclusion": [True, False]}, plot={}))
    with pytest.raises(SweepError, match="different sweep"):
        read_rows(path, other.columns)


def test_the_shipped_example_sweep_is_valid() -> None:
    sweep = load_sweep(ROOT / "scripts" / "sweeps" / "welfare-vs-n.toml")
    assert len(sweep.mechanisms) == 7 and sweep.plot_x == "locations.*.n"
    assert len(list(tasks(sweep))) == 7 * 8 * 3


def test_sweep_script_refuses_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nmechanisms = ["bogus"]\n[base]\n')
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(bad),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "error:" in proc.stderr and "bogus" in proc.stderr


TINY = """
[sweep]
name = "tiny"
mechanisms = ["posted_fee", "equal_share_post_fee", "optimal"]
draws = 20

[base.market]
payment = "money"
exclusion = true

[[base.locations]]
name = "town"
n = 3
type = { dist = "uniform", low = 0.0, high = 1.0 }
utility = { kind = "power", A = 0.6666666666666666, alpha = 0.5 }
cost = { kind = "power", B = 1.0, delta = 0.0, beta = 1.0 }

[grid]
"locations.*.n" = [2, 4]

[plot]
x = "locations.*.n"
"""


def _sweep(spec: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(spec),
                           "--out", str(out), "--workers", "2"],
                          capture_output=True, text=True, timeout=180, check=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_sweep_runs_on_a_local_dask_cluster_and_resumes(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    out = tmp_path / "out"
    proc = _sweep(spec, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "local Dask cluster" in proc.stderr and "[6/6]" in proc.stderr
    rows = _rows(out / "results.csv")
    assert len(rows) == 6 and all(r["success"] == "true" for r in rows)
    assert {r["mechanism"] for r in rows} == {"posted_fee", "equal_share_post_fee", "optimal"}
    for r in rows:
        assert float(r["seconds"]) > 0 and r["expected_Q"].startswith("[")
    assert (out / "welfare.png").stat().st_size > 10_000
    # Nothing left: a second run computes nothing and leaves the file as it was.
    before = (out / "results.csv").read_text()
    proc = _sweep(spec, out)
    assert proc.returncode == 0 and "0 to compute" in proc.stderr
    assert (out / "results.csv").read_text() == before
    # Interrupted after two rows, the third cut short: only the other four are computed,
    # and the two finished rows are kept as they were (their timings prove it).
    lines = before.splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:3]) + lines[3][:20])
    proc = _sweep(spec, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 already in" in proc.stderr and "4 to compute" in proc.stderr
    again = _rows(out / "results.csv")
    assert sorted(r["key"] for r in again) == sorted(r["key"] for r in rows)
    assert again[:2] == rows[:2]
