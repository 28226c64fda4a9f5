"""The front ends (scripts/solve.py, reproduce.py, bench.py) as a user runs them.

Every ``--json`` output is parsed strictly (no NaN or Infinity: plain JSON that any
program reads) and checked for what it claims; small inputs keep them fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.mechanism import claims

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"not plain JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)


# -- the claims table -----------------------------------------------------------------------


def test_claim_rows_are_plain_json_even_from_numpy_values() -> None:
    row = claims._row("f", "src", np.float64(1.0), np.float64(np.nan), claims._relative(1e-6),
                      n=np.int64(3), why="typo", explained=bool(np.bool_(True)))
    d = row.as_dict()
    text = json.dumps(d, allow_nan=False)
    back = _strict_json(text)
    assert back["computed"] is None and back["agrees"] is False and back["n"] == 3
    assert back["why"] == "typo" and back["tolerance"]["kind"] == "relative"


def test_a_disagreement_whose_reason_does_not_check_out_is_unexplained() -> None:
    tol = claims._absolute(0.1)
    assert claims._row("f", "s", 1.0, 1.05, tol, why="typo").why == ""
    assert claims._row("f", "s", 1.0, 2.0, tol, why="typo", explained=True).why == "typo"
    assert claims._row("f", "s", 1.0, 2.0, tol, why="typo",
                       explained=False).why == "unexplained"


# -- reproduce.py -----------------------------------------------------------------------------


@pytest.mark.slow
def test_reproduce_json_is_plain_and_judges_each_figure_under_its_convention(
        tmp_path: Path) -> None:
    out = tmp_path / "plots"
    proc = _run(str(SCRIPTS / "reproduce.py"), "--json", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _strict_json(proc.stdout)
    assert isinstance(rows, list) and len(rows) > 50
    keys = {"figure", "source", "n", "document_value", "computed", "agrees", "tolerance",
            "why", "note", "convention", "alternatives"}
    for r in rows:
        assert keys <= set(r)
        assert isinstance(r["agrees"], bool)
        assert r["tolerance"]["text"] and r["tolerance"]["kind"] in (
            "relative", "absolute", "printed", "property")
        # Every disagreement says why, with evidence; none is unexplained.
        assert (r["why"] == "") == r["agrees"], r
        assert r["why"] != "unexplained", r
        if not r["agrees"]:
            assert r["note"], r
    ec_rows = [r for r in rows if r["figure"].startswith("equal contribution, post Q:")
               or r["figure"].startswith("equal contribution, post φ:")]
    assert ec_rows
    for r in ec_rows:  # the slides' figures, judged in the slides' convention
        assert r["convention"] == "slides" and r["agrees"], r
        assert [a["convention"] for a in r["alternatives"]] == ["bayes"]
    at_1000 = [r for r in ec_rows if r["n"] == 1000]
    # ... and at n = 1000 the Bayes-consistent count is visibly a different number.
    assert at_1000 and all(not r["alternatives"][0]["agrees"] for r in at_1000)
    for name in ("welfare_vs_n.png", "grid_tariffs.png"):
        assert (out / name).stat().st_size > 10_000


# -- solve.py ---------------------------------------------------------------------------------


SPEC = """
[market]
payment = "money"
exclusion = true

[[locations]]
name = "town"
n = 12
type = { dist = "uniform", low = 0.0, high = 1.0 }
utility = { kind = "power", A = 0.6666666666666666, alpha = 0.5 }
cost = { kind = "power", B = 1.0, delta = 0.0, beta = 1.0 }
"""


@pytest.mark.parametrize("mechanism", ["optimal", "posted_fee", "equal_share_post_fee"])
def test_solve_json_gives_expected_q_and_fee_with_units(tmp_path: Path, mechanism: str
                                                        ) -> None:
    spec = tmp_path / "town.toml"
    spec.write_text(SPEC)
    proc = _run(str(SCRIPTS / "solve.py"), str(spec), "-m", mechanism, "--json",
                "--draws", "400")
    assert proc.returncode == 0, proc.stderr
    out = _strict_json(proc.stdout)
    assert out["units"]["Q"] and out["units"]["fee"] == "money units"
    (loc,) = out["locations"]
    q, fee = loc["expected_Q"], loc["expected_fee"]
    assert q["value"] > 0 and fee["value"] > 0
    if mechanism == "optimal":  # Q depends on the declared types: estimated
        assert q["source"] == "monte carlo" and q["se"] > 0
        # The expected payments the solver reports exactly, per included agent.
        n, theta = 12, loc["threshold"]
        exact_fee = out["details"]["expected_payments"][0] / (n * (1 - theta))
        assert abs(fee["value"] - exact_fee) < 4 * fee["se"] + 1e-9
    else:
        assert q["source"] == "exact" and q["se"] == 0


def test_solve_table_marks_expectations_and_units(tmp_path: Path) -> None:
    spec = tmp_path / "town.toml"
    spec.write_text(SPEC)
    proc = _run(str(SCRIPTS / "solve.py"), str(spec), "-m", "optimal", "--draws", "200")
    assert proc.returncode == 0, proc.stderr
    assert "E[Q]" in proc.stdout and "E[fee | included]" in proc.stdout
    assert "money units" in proc.stdout and "±" in proc.stdout


def test_solve_bad_spec_exits_2(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.replace("n = 12", "n = 0"))
    proc = _run(str(SCRIPTS / "solve.py"), str(spec), "--json")
    assert proc.returncode == 2 and "error" in proc.stderr and proc.stdout == ""


# -- bench.py ---------------------------------------------------------------------------------


def test_bench_help_describes_and_runs_nothing() -> None:
    t = time.perf_counter()
    proc = _run(str(SCRIPTS / "bench.py"), "--help", timeout=30)
    assert proc.returncode == 0 and "--check" in proc.stdout and "--json" in proc.stdout
    assert proc.stderr == ""  # no benchmark progress
    assert time.perf_counter() - t < 20


@pytest.mark.slow
def test_bench_quick_json_and_check_agree() -> None:
    proc = _run(str(SCRIPTS / "bench.py"), "--quick", "--json", "--check")
    figs = _strict_json(proc.stdout)
    assert isinstance(figs, list) and len(figs) >= 9
    for f in figs:
        # The shape every benchmark prints, plus bench.py's two other limits.
        assert set(f) == {"figure", "value", "unit", "ceiling", "ratio", "goal", "met",
                          "reference", "target"}
        limits = [f[k] for k in ("ceiling", "reference", "target") if f[k] is not None]
        assert limits and f["goal"]  # every figure is judged against something, named
        assert f["met"] == all(f["value"] <= bound for bound in limits)
        if f["ceiling"] is None:
            assert f["ratio"] is None
        else:
            assert f["ratio"] == pytest.approx(f["value"] / f["ceiling"])
    assert any("equal share" in f["figure"] for f in figs)
    assert proc.returncode == (0 if all(f["met"] for f in figs) else 1)


def test_solve_convention_selects_the_participant_count(tmp_path: Path) -> None:
    from coordinator.mechanism import equal_contribution as ec

    spec = tmp_path / "town.toml"
    spec.write_text(SPEC)
    out = {}
    for conv in ("bayes", "slides"):
        proc = _run(str(SCRIPTS / "solve.py"), str(spec), "-m", "equal_share_post_size",
                    "--convention", conv, "--json")
        assert proc.returncode == 0, proc.stderr
        out[conv] = _strict_json(proc.stdout)
        assert out[conv]["details"]["convention"] == conv
        assert out[conv]["welfare"] == pytest.approx(
            ec.post_size_share_cost(ec.slides_economy(12, conv)).result.welfare, rel=1e-9)
    assert out["slides"]["welfare"] < out["bayes"]["welfare"]
    proc = _run(str(SCRIPTS / "solve.py"), str(spec), "-m", "optimal", "--convention",
                "slides")
    assert proc.returncode == 2 and "--convention applies" in proc.stderr


# -- inkind-coordinator's files ---------------------------------------------------------------


def test_coordinator_files_go_to_its_data_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.cli import build_parser, default_data_dir, in_data_dir

    args = build_parser().parse_args(["--spec", "s.toml", "--data-dir", str(tmp_path / "d")])
    assert in_data_dir(args.db, args.data_dir) == tmp_path / "d" / "coordinator.db"
    assert in_data_dir(args.key, args.data_dir) == tmp_path / "d" / "coordinator.pem"
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    assert in_data_dir(tmp_path / "x.db", tmp_path / "elsewhere") == tmp_path / "x.db"
    assert not (tmp_path / "elsewhere").exists()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "inkind" / "coordinator"
