#!/usr/bin/env python3
"""Speed of the mechanism engine, each figure beside what it is judged against.

    python scripts/bench.py              # the table
    python scripts/bench.py --quick      # fewer repeats, no whole reproduce.py run (< 1 min)
    python scripts/bench.py --json       # one JSON list of figures on stdout
    python scripts/bench.py --check      # exit status 1 if any figure misses its goal

Three yardsticks, never mixed up:

* ceiling (measured in this run): the same computation through the engine's general
  path at the same accuracy -- the optimal mechanism by per-location moment laws
  (``method="moment-laws"``) instead of the vectorised moment method, the posted fee
  with the uniform priors given as generic scipy distributions (quadrature and root
  finding instead of closed forms). ``ratio`` = figure / ceiling. Figures with no honest
  general path to time have no ceiling (null in --json, "not measured" in the table).
* reference (published, other machine): the independent reference implementation's
  figures quoted in issue 8 (posted fee, 100 locations: 8 ms money, 166 ms in kind;
  the optimal mechanism, one location, n = 10,000: 0.6 ms). Not measured here.
* target: a constant from an issue (allocate under 10 ms, grid menu under 5 s, each
  equal-contribution scheme under 0.1 s, reproduce.py under 30 s).

A figure meets its goal when it is at most its ceiling, its reference and its target,
whichever it has. Every time is the best of several wall-clock runs, each on a freshly
built market (no cache survives from one run to the next). The machine's load slows
every figure; the load average goes to stderr with the progress. BLAS runs on one
thread (see below) unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The engine's linear algebra is small (at most L × L = 100 × 100), where OpenBLAS's
# threads only contend for 2 loaded cores: an in-kind posted fee took 1.2-2.6 s with two
# BLAS threads against 0.25 s with one (load average 14). So one thread, set before numpy
# loads, unless the caller chose otherwise; a coordinator process should do the same.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.mechanism import equal_contribution as ec  # noqa: E402
from coordinator.mechanism import grid  # noqa: E402
from coordinator.mechanism.distributions import TypeDistribution  # noqa: E402
from coordinator.mechanism.market import (  # noqa: E402
    Location,
    Market,
    PowerCost,
    PowerUtility,
    slides_market,
)
from coordinator.mechanism.optimal import second_best  # noqa: E402
from coordinator.mechanism.posted_fee import posted_fee  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Issue 8's figures for the independent reference implementation, on its machine.
REFERENCE_POSTED_FEE_MONEY_S = 8e-3
REFERENCE_POSTED_FEE_IN_KIND_S = 166e-3
REFERENCE_OPTIMAL_N10000_S = 0.6e-3
REFERENCE = "reference (published, other machine)"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure and its yardsticks (module docstring); all in ``unit``."""

    figure: str
    value: float
    unit: str
    ceiling: float | None = None  # measured in this run
    ceiling_is: str = ""
    reference: float | None = None  # published, other machine
    target: float | None = None  # a constant from an issue
    target_is: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.ceiling is None else self.value / self.ceiling

    @property
    def met(self) -> bool:
        return all(self.value <= bound for bound in (self.ceiling, self.reference, self.target)
                   if bound is not None)

    @property
    def goal(self) -> str:
        parts = []
        if self.ceiling is not None:
            parts.append(f"<= ceiling: {self.ceiling_is}, measured in this run")
        if self.reference is not None:
            parts.append(f"<= {self.reference:g} {self.unit}, {REFERENCE}")
        if self.target is not None:
            parts.append(f"<= {self.target:g} {self.unit}, target of {self.target_is} "
                         "(a constant, not a measurement)")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"figure": self.figure, "value": self.value, "unit": self.unit,
                "ceiling": self.ceiling, "ratio": self.ratio, "goal": self.goal,
                "met": self.met, "reference": self.reference, "target": self.target}


def best_of(make: Callable[[], Any], run: Callable[[Any], Any],
            repeat: int) -> tuple[float, Any]:
    """(fastest wall-clock seconds of ``run(make())`` over ``repeat`` runs, the last
    result); ``make`` (not timed) builds a fresh input each time so no cache carries
    over between runs."""
    best, out = float("inf"), None
    for _ in range(repeat):
        arg = make()
        t = time.perf_counter()
        out = run(arg)
        best = min(best, time.perf_counter() - t)
    return best, out


# The two paths timed must compute the same thing: to rounding, or, where a KKT search
# finds several multipliers (in kind), to its stopping rule (coordinator.mechanism.multipliers).
AGREE_RTOL = 1e-9
AGREE_KKT_RTOL = 1e-7


def _agree(what: str, fast: float, general: float, rtol: float = AGREE_RTOL) -> None:
    if not abs(fast - general) <= rtol * abs(general):
        raise RuntimeError(f"{what}: the fast path gives {fast!r}, the general path "
                           f"{general!r}")


def hundred_locations(payment: str, *, generic_priors: bool = False) -> Market:
    """100 locations of 5-49 agents, θ ~ U[0, 1], u = (2/3)√Q, c = Q, W = 0.2 + 0.8 I.

    ``generic_priors``: the same U[0, 1] as a generic scipy distribution, which the
    engine integrates by quadrature and root finding instead of its closed forms."""
    rng = np.random.default_rng(0)
    U = (TypeDistribution.from_scipy("uniform", 0.0, 1.0) if generic_priors
         else TypeDistribution.uniform())
    locs = tuple(Location(f"l{i}", int(rng.integers(5, 50)), U, PowerUtility(2 / 3, 0.5),
                          PowerCost(1.0, 1.0)) for i in range(100))
    return Market(locs, 0.2 + 0.8 * np.eye(100), payment, True)  # type: ignore[arg-type]


def measure(*, quick: bool, say: Callable[[str], None]) -> list[Figure]:
    """Run every benchmark; ``quick`` repeats less and skips the whole reproduce.py run."""
    rep = 1 if quick else 3
    figs: list[Figure] = []
    for payment, ref in (("money", REFERENCE_POSTED_FEE_MONEY_S),
                         ("in_kind", REFERENCE_POSTED_FEE_IN_KIND_S)):
        say(f"posted fee, 100 locations, {payment}")
        fast, a = best_of(lambda p=payment: hundred_locations(p), posted_fee, 3 * rep + 2)
        general, b = best_of(lambda p=payment: hundred_locations(p, generic_priors=True),
                             posted_fee, rep + 1)
        _agree(f"posted fee, {payment}", a.result.welfare, b.result.welfare,
               AGREE_KKT_RTOL if payment == "in_kind" else AGREE_RTOL)
        figs.append(Figure(
            f"posted fee, L = 100 locations, {payment}: solve", fast * 1e3, "ms",
            general * 1e3, "the same solve with the priors as generic scipy uniforms",
            ref * 1e3))
    say("optimal mechanism, n = 10,000")
    fast, fast_mech = best_of(lambda: slides_market(10_000), second_best, 30 * rep)
    general, slow_mech = best_of(lambda: slides_market(10_000),
                                 lambda m: second_best(m, method="moment-laws"), 5 * rep)
    _agree("optimal mechanism", fast_mech.result.welfare, slow_mech.result.welfare)
    figs.append(Figure(
        "optimal mechanism, one location, n = 10,000: solve", fast * 1e3, "ms",
        general * 1e3, "the general path (per-location moment laws by quadrature)",
        REFERENCE_OPTIMAL_N10000_S * 1e3))
    types = slides_market(10_000).sample_types(np.random.default_rng(1))
    fast, x = best_of(lambda: types, fast_mech.allocate, 5 * rep + 5)
    general, y = best_of(lambda: types, slow_mech.allocate, 5 * rep + 5)
    _agree("allocate", float(x.payments.sum()), float(y.payments.sum()))
    figs.append(Figure(
        "optimal mechanism, n = 10,000: allocate 10,000 declared types", fast * 1e3, "ms",
        general * 1e3, "the general path's mechanism (spline tables) allocating them",
        target=10.0, target_is="the engine issue"))
    say("grid-computing tariff menu")
    t, _ = best_of(lambda: None, lambda _: grid.solve_grid_tariff(), rep)
    figs.append(Figure("grid-computing tariff menu (u = √y), to 1e-12", t, "s",
                       target=5.0, target_is="the engine issue"))
    schemes = (("(a) post Q", ec.post_size_share_cost),
               ("(b) post φ", ec.post_fee_build_largest),
               ("(c) post φ and Q", ec.post_fee_and_size))
    for conv in ("bayes", "slides"):
        for name, fn in schemes:
            if fn is ec.post_fee_and_size and conv == "slides":
                continue  # no X in its rule: the same computation as under "bayes"
            say(f"equal contribution, {name}, {conv} count")
            t, _ = best_of(lambda conv=conv: ec.slides_economy(1000, conv),  # type: ignore[arg-type]
                           fn, rep + 2)
            figs.append(Figure(f"equal share {name}, {conv} count, n = 1000: solve",
                               t, "s", target=0.1, target_is="issue 9 item 6"))
    if not quick:
        say("scripts/reproduce.py, whole run")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"),
                               "--out", str(ROOT / "out" / "bench-reproduce")],
                              capture_output=True, text=True, check=False)
        t = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"reproduce.py failed: {proc.stderr[-2000:]}")
        figs.append(Figure("scripts/reproduce.py, whole run with plots", t, "s",
                           target=30.0, target_is="issue 9 item 6 (2 cores)"))
    return figs


def _num(x: float | None, unit: str) -> str:
    return "not measured" if x is None else f"{x:.4g} {unit}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="repeat each figure less and skip the whole reproduce.py run "
                        "(under a minute)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON list of {figure, value, unit, ceiling, ratio, goal, "
                        "met, reference, target} instead of a table")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 when any figure misses its goal")
    args = p.parse_args(argv)

    def say(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    say(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figs = measure(quick=args.quick, say=say)
    say(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        print(json.dumps([f.as_dict() for f in figs], ensure_ascii=False, allow_nan=False))
    else:
        print(f"{'benchmark':<62}{'figure':>13}{'ceiling':>15}{'ratio':>7}"
              f"{'reference':>12}{'target':>10}  met")
        for f in figs:
            ratio = "" if f.ratio is None else f"{f.ratio:.3f}"
            print(f"{f.figure:<62}{_num(f.value, f.unit):>13}{_num(f.ceiling, f.unit):>15}"
                  f"{ratio:>7}{'' if f.reference is None else _num(f.reference, f.unit):>12}"
                  f"{'' if f.target is None else _num(f.target, f.unit):>10}"
                  f"  {'yes' if f.met else 'NO'}")
        missed = [f for f in figs if not f.met]
        print(f"\nceiling: measured in this run; reference: {REFERENCE} (issue 8); "
              "target: a constant from an issue.\n"
              f"{len(figs)} figures, {len(figs) - len(missed)} meet their goal"
              + (f", {len(missed)} miss it: " + "; ".join(f.figure for f in missed)
                 if missed else ""))
    return 1 if args.check and any(not f.met for f in figs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
