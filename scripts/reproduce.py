#!/usr/bin/env python3
"""Reproduce every figure of the source documents beside what inkind computes.

    python scripts/reproduce.py              # table + plots in ./out/
    python scripts/reproduce.py --json       # a JSON list of rows on stdout
    python scripts/reproduce.py --no-plots --quick

Each row: the figure, where it is printed (document and slide or equation), the
document's value, the engine's value, whether they agree and under which tolerance.
Disagreements are explained in README.md ("Where the documents and the engine
disagree"). Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.mechanism import figures, grid
from coordinator.mechanism.market import slides_market


def plot_welfare(path: Path, say: object) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from coordinator.mechanism import equal_contribution as ec
    from coordinator.mechanism.optimal import first_best, second_best
    from coordinator.mechanism.posted_fee import posted_fee

    ns = np.unique(np.round(np.logspace(np.log10(2), 3, 16)).astype(int))
    curves: dict[str, list[float]] = {k: [] for k in (
        "first best", "second best", "second best, no exclusion", "posted fee (P̂(n))",
        "equal share, post Q", "equal share, post φ")}
    for n in ns:
        print(f"  plot: n = {n}", file=sys.stderr)
        m = slides_market(int(n))
        loc = m.locations[0]
        curves["first best"].append(first_best(m).result.welfare / n)
        curves["second best"].append(second_best(m).result.welfare / n)
        curves["second best, no exclusion"].append(
            second_best(m, exclusion=False).result.welfare / n)
        curves["posted fee (P̂(n))"].append(posted_fee(m).result.welfare / n)
        e = ec.Economy(loc.dist, int(n), loc.utility, loc.cost)
        curves["equal share, post Q"].append(ec.post_size_share_cost(e).result.welfare / n)
        curves["equal share, post φ"].append(ec.post_fee_build_largest(e).result.welfare / n)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, ys in curves.items():
        axes[0].plot(ns, ys, marker="o", ms=3, label=name)
        axes[1].plot(ns, np.array(ys) / np.array(curves["first best"]), marker="o", ms=3,
                     label=name)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("number of agents n")
    axes[0].set_ylabel("expected welfare per agent (money units)")
    axes[0].set_title("u(Q) = (2/3)√Q, c(Q) = Q, θ ~ U[0,1]")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("number of agents n")
    axes[1].set_ylabel("welfare / first-best welfare")
    axes[1].set_title("share of the first best achieved")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grid(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = grid.solve_grid_tariff()
    a = np.linspace(0.0, 1.0, 401)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    ax.plot(a, g.p(a), "r-", label="p(a): payment")
    ax.plot(a, g.y(a), "r--", label="y(a): resource received")
    ax.plot(a, g.x1(a), "b-", label="x1(a): net benefit")
    ax.plot(a, a**2 / 4, "g-", label="a²/4: stand-alone net benefit")
    ax.axvline(g.threshold, color="grey", lw=0.8, ls=":")
    ax.text(g.threshold, ax.get_ylim()[1] * 0.9, f" t* = {g.threshold:.4f}", fontsize=8)
    ax.set_xlabel("usage frequency a")
    ax.set_ylabel("units of resource / money")
    ax.set_title(f"grid tariff menu, u(y) = √y: welfare {g.welfare:.4f} per agent "
                 f"(planner {g.first_best_welfare:.3f})", fontsize=9)
    ax.legend(fontsize=8)
    prices = np.linspace(0.0, g.p_max, 200)
    axes[1].plot(prices, g.y_of_p(prices), "k-")
    axes[1].set_xlabel("price p")
    axes[1].set_ylabel("resource y(p) offered for p")
    axes[1].set_title("the tariff y(p)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    p.add_argument("--out", default="out", help="directory for the PNG plots (default: out)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--quick", action="store_true",
                   help="skip the large-n coefficient fits (n up to 16,000)")
    args = p.parse_args(argv)
    t0 = time.time()

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f} s] {msg}", file=sys.stderr)

    rows = list(figures.rows(include_fits=not args.quick, progress=say))
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        print(f"{'figure':<72}{'n':>6}{'document':>16}{'computed':>18}  agrees")
        for r in rows:
            n = "" if r.n is None else str(r.n)
            mark = "yes" if r.agrees else "NO"
            print(f"{r.figure[:71]:<72}{n:>6}{r.document_value:>16.8g}{r.computed:>18.10g}  {mark}")
        bad = [r for r in rows if not r.agrees]
        print(f"\n{len(rows)} figures, {len(rows) - len(bad)} agree, {len(bad)} disagree "
              "(see README: 'Where the documents and the engine disagree').")
    if not args.no_plots:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        say("plotting welfare per agent against n")
        plot_welfare(out / "welfare_vs_n.png", say)
        say("plotting the grid-computing tariffs")
        plot_grid(out / "grid_tariffs.png")
        print(f"plots written: {out / 'welfare_vs_n.png'}, {out / 'grid_tariffs.png'}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
