#!/usr/bin/env python3
"""Solve one mechanism for a market spec and print it.

    python scripts/solve.py scripts/specs/slides.toml --mechanism optimal
    python scripts/solve.py scripts/specs/three-towns.toml --mechanism posted_fee --json

The spec format (TOML or JSON) is documented in README.md. Welfare and payments are in
the spec's money units (or, for payments in kind, in resource units of the payer's own
location); thresholds are types θ; Q is each location's size.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.mechanism import ALIASES, SOLVERS, canonical, load_market, solve


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
    args = p.parse_args(argv)
    try:
        market = load_market(args.spec)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read spec {args.spec}: {exc}", file=sys.stderr)
        return 2
    try:
        mech = solve(market, args.mechanism)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    r = mech.result
    q = r.Q
    if q is None:
        # Mechanisms whose Q depends on the declared types: report its expectation.
        cost = r.details.get("expected_cost")
        q_note = "E[Q] not tabulated (Q depends on the declared types)" if cost is None else None
    else:
        q_note = None
    if args.json:
        out = r.as_dict()
        out["locations"] = [loc.name for loc in market.locations]
        print(json.dumps(out, default=lambda x: None if isinstance(x, float) and
                         not math.isfinite(x) else str(x)))
        return 0 if r.success else 1
    print(f"mechanism       {r.mechanism}  ({SOLVERS[canonical(args.mechanism)][1]})")
    print(f"status          {'ok' if r.success else 'FAILED'}: {r.status}")
    se = f" ± {r.welfare_se:.3g} (Monte Carlo s.e.)" if r.welfare_se else " (exact/quadrature)"
    unit = "money units" if market.payment == "money" else "resource units (in kind)"
    print(f"welfare         {r.welfare:.10g} {unit}, expected{se}")
    excl = "allowed" if market.exclusion else "not allowed"
    print(f"payment         {market.payment}; exclusion {excl}")
    if r.lambdas is not None:
        print(f"lambda          {np.array2string(np.asarray(r.lambdas), precision=8)}")
    header = f"{'location':<14}{'n':>8}{'threshold θ*':>16}{'Q':>16}{'fee':>16}"
    print(header)
    for k, loc in enumerate(market.locations):
        th = "" if r.thresholds is None else f"{r.thresholds[k]:.8g}"
        qq = "" if r.Q is None else f"{r.Q[k]:.8g}"
        fee = "" if r.fees is None or k >= len(r.fees) else f"{r.fees[k]:.8g}"
        print(f"{loc.name:<14}{loc.n:>8}{th:>16}{qq:>16}{fee:>16}")
    if q_note:
        print(q_note)
    return 0 if r.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
