#!/usr/bin/env python3
"""Solve one mechanism for a market spec and print it.

    python scripts/solve.py scripts/specs/slides.toml --mechanism optimal
    python scripts/solve.py scripts/specs/three-towns.toml --mechanism posted_fee --json

The spec format (TOML or JSON) is documented in README.md. Units: welfare in the
spec's money units (in kind: resource units); Q_l in resource units of location l; a
fee or payment in money units, or in kind in resource units of the payer's own
location; thresholds θ* are types (no unit).

For every mechanism and location the table gives the expected size E[Q_l] and the
expected fee of a participant E[payment | included], both expectations over the
agents' types. They are exact where the mechanism's solution gives them (posted fee,
equal-contribution schemes); where Q and the payments depend on the declared types
(first best, optimal) they are estimated from a seeded Monte Carlo of the
mechanism's own ``allocate`` (``--draws`` type profiles) and printed with their
standard error. Exit status: 0 solved, 1 the solver reports failure, 2 a bad spec.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.mechanism import ALIASES, SOLVERS, Mechanism, canonical, load_market, solve
from coordinator.mechanism import equal_contribution as ec
from coordinator.mechanism.expectations import expected_size_and_fee

DEFAULT_DRAWS = 2000


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _plain(x: Any) -> Any:
    """Plain JSON: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return _plain(x.item())
    if isinstance(x, float):
        return _finite(x)
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return str(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="market spec file (.toml or .json)")
    p.add_argument("--mechanism", "-m", default="optimal",
                   choices=sorted(SOLVERS) + sorted(ALIASES),
                   help="which mechanism to solve (default: optimal). "
                   + "; ".join(f"{k}: {v[1]}" for k, v in SOLVERS.items())
                   + "; former names: " + ", ".join(f"{k} = {v}" for k, v in ALIASES.items()))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--convention", choices=sorted(ec.CONVENTIONS), default="bayes",
                   help="participant count of the equal-contribution schemes: "
                   + "; ".join(f"{k}: {v}" for k, v in ec.CONVENTIONS.items())
                   + " (default bayes)")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help="type profiles for the Monte Carlo of E[Q] and the expected fee "
                        f"where no exact value exists (default {DEFAULT_DRAWS}; 0: skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of that Monte Carlo (default 0)")
    args = p.parse_args(argv)
    if args.draws < 0:
        p.error("--draws must be >= 0")
    try:
        market = load_market(args.spec)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read spec {args.spec}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.convention != "bayes":
            if canonical(args.mechanism) not in ec.SCHEMES:
                raise ValueError(f"--convention applies to the equal-contribution schemes "
                                 f"{sorted(ec.SCHEMES)}, not {args.mechanism}")
            mech: Mechanism = ec.solve_scheme(market, canonical(args.mechanism),
                                              args.convention)
        else:
            mech = solve(market, args.mechanism)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    r = mech.result
    eq, efee = expected_size_and_fee(mech, market, draws=args.draws,
                                     rng=np.random.default_rng(args.seed))
    money = market.payment == "money"
    units = {
        "welfare": "money units" if money else "resource units (in kind)",
        "Q": "resource units of the location",
        "fee": "money units" if money else "resource units of the payer's own location",
        "threshold": "type θ (no unit)",
    }
    if args.json:
        out = _plain(r.as_dict())
        out["units"] = units
        out["expectations"] = (f"expected_Q and expected_fee are expectations over types; "
                               f"monte carlo ones use {args.draws} profiles, seed {args.seed}")
        out["locations"] = [
            {"name": loc.name, "n": loc.n,
             "threshold": None if r.thresholds is None else _finite(r.thresholds[k]),
             "expected_Q": eq[k].as_dict(), "expected_fee": efee[k].as_dict()}
            for k, loc in enumerate(market.locations)]
        print(json.dumps(out, ensure_ascii=False, allow_nan=False))
        return 0 if r.success else 1
    print(f"mechanism       {r.mechanism}  ({SOLVERS[canonical(args.mechanism)][1]})")
    print(f"status          {'ok' if r.success else 'FAILED'}: {r.status}")
    se = f" ± {r.welfare_se:.3g} (Monte Carlo s.e.)" if r.welfare_se else " (exact/quadrature)"
    print(f"welfare         {r.welfare:.10g} {units['welfare']}, expected{se}")
    err = r.details.get("relative_error_estimate")
    if err is not None:
        print(f"error estimate  {float(err):.2g} (relative)")
    if "convention" in r.details:
        print(f"convention      {r.details['convention']}: "
              f"{ec.CONVENTIONS[r.details['convention']]}")
    excl = "allowed" if market.exclusion else "not allowed"
    print(f"payment         {market.payment}; exclusion {excl}")
    if r.lambdas is not None:
        print(f"lambda          {np.array2string(np.asarray(r.lambdas), precision=8)}")
    print(f"{'location':<14}{'n':>8}{'threshold θ*':>16}{'E[Q]':>24}{'E[fee | included]':>24}")
    for k, loc in enumerate(market.locations):
        th = "" if r.thresholds is None else f"{r.thresholds[k]:.8g}"
        print(f"{loc.name:<14}{loc.n:>8}{th:>16}{eq[k].text():>24}{efee[k].text():>24}")
    sources = {e.source for e in eq + efee}
    print(f"E[Q] in {units['Q']}; E[fee | included] in {units['fee']}: expectations over "
          "the agents' types"
          + (f"; '±' marks a Monte Carlo of allocate over {args.draws} type profiles "
             f"(seed {args.seed}) with its standard error" if "monte carlo" in sources else "")
          + ("; '—' where none exists (no payments, or nobody included)"
             if "none" in sources else ""))
    return 0 if r.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
