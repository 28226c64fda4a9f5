#!/usr/bin/env python3
"""Reproduce every figure of the source documents beside what inkind computes.

    python scripts/reproduce.py              # table + plots in ./out/
    python scripts/reproduce.py --json       # one JSON list of rows on stdout
    python scripts/reproduce.py --no-plots --quick

Each row: the figure, where it is printed, the document's value, the engine's value,
the tolerance it is judged by, whether they agree and, if not, why (typo, upper bound,
convention, weak inequality; "unexplained" would be a possible engine error). The
equal-contribution figures are judged under the slides' own convention (a participant
takes X ~ Bin(n, p)) with the engine's Bayes-consistent value (X = 1 + Bin(n − 1, p))
beside them. README.md, "Where the documents and the engine disagree", gives the
evidence. Progress goes to stderr, results to stdout. Exit status: 0 when every
disagreement is explained, 1 when one is not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.mechanism import claims, grid
from coordinator.mechanism import equal_contribution as ec
from coordinator.mechanism.market import slides_market

PLOT_NS = (2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
QUICK_PLOT_NS = (2, 5, 10, 100, 1000)
EXPENSIVE = {"second best, no exclusion"}
"""Mechanisms plotted only at the table's n (claims.NS), whose values the rows computed."""
CURVES = (
    "first best", "second best", "second best, no exclusion", "posted fee",
    "equal share, post Q (Bayes count)", "equal share, post Q (slides' count)",
    "equal share, post φ (Bayes count)", "equal share, post φ (slides' count)",
    "equal share, post φ and Q",
)


def _welfare(name: str, n: int) -> float:
    """Expected welfare (money units) of mechanism ``name`` in the slides' example."""
    from coordinator.mechanism.optimal import first_best, second_best
    from coordinator.mechanism.posted_fee import posted_fee

    m = slides_market(n)
    loc = m.locations[0]
    if name == "first best":
        return first_best(m).result.welfare
    if name == "second best":
        return second_best(m).result.welfare
    if name == "second best, no exclusion":
        return second_best(m, exclusion=False).result.welfare
    if name == "posted fee":
        return posted_fee(m).result.welfare
    conv: ec.Convention = "slides" if "slides'" in name else "bayes"
    e = ec.Economy(loc.dist, n, loc.utility, loc.cost, convention=conv)
    if "post Q" in name:
        return ec.post_size_share_cost(e).result.welfare
    if "post φ and Q" in name:
        return ec.post_fee_and_size(e).result.welfare
    return ec.post_fee_build_largest(e).result.welfare


def welfare_curves(ns: tuple[int, ...], record: claims.Record, say: Callable[[str], None]
                   ) -> dict[str, tuple[list[int], list[float]]]:
    """(n, expected welfare per agent) of every mechanism; values the table's rows
    already computed (``record``) are reused, expensive mechanisms only at those n."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for name in CURVES:
        xs = sorted({n for (k, n) in record if k == name} if name in EXPENSIVE
                    else set(ns) | {n for (k, n) in record if k == name and n <= max(ns)})
        say(f"plot: {name} at {len(xs)} n")
        ys = [(record[name, n] if (name, n) in record else _welfare(name, n)) / n for n in xs]
        curves[name] = (xs, ys)
    return curves


def plot_welfare(path: Path, curves: dict[str, tuple[list[int], list[float]]]) -> None:
    """Two panels: welfare per agent, and the share of the first best; one line per
    mechanism (each its own series, never joined to another), markers where computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    styles = ["o-", "s-", "v-", "D-", "^--", "^:", "x--", "x:", "+-"]
    fb_n, fb_y = curves["first best"]
    first = dict(zip(fb_n, fb_y, strict=True))
    for (name, (xs, ys)), style in zip(curves.items(), styles, strict=True):
        axes[0].plot(xs, ys, style, ms=4, lw=1.2, label=name)
        share = [(x, y / first[x]) for x, y in zip(xs, ys, strict=True) if x in first]
        axes[1].plot([x for x, _ in share], [r for _, r in share], style, ms=4, lw=1.2,
                     label=name)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("number of agents n (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("expected welfare per agent (money units, log scale)")
    axes[0].set_title("u(Q) = (2/3)√Q, c(Q) = Q, θ ~ U[0, 1]", fontsize=10)
    axes[1].set_ylabel("welfare / first-best welfare (ratio, no unit)")
    axes[1].set_title("share of the first best achieved", fontsize=10)
    # One legend under both panels, where it hides no line.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0.0, 0.1, 1.0, 1.0))
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
    ax.plot(a, g.p(a), "r-", label="p(a): payment (money units)")
    ax.plot(a, g.y(a), "r--", label="y(a): resource received (resource units)")
    ax.plot(a, g.x1(a), "b-", label="x1(a): net benefit (money units)")
    ax.plot(a, a**2 / 4, "g-", label="a²/4: stand-alone net benefit (money units)")
    ax.axvline(g.threshold, color="grey", lw=0.8, ls=":")
    ax.text(g.threshold, ax.get_ylim()[1] * 0.9, f" t* = {g.threshold:.4f}", fontsize=8)
    ax.set_xlabel("usage frequency a (type, no unit)")
    ax.set_ylabel("money units / resource units")
    ax.set_title(f"grid tariff menu, u(y) = √y: welfare {g.welfare:.4f} per agent "
                 f"(planner {g.first_best_welfare:.3f})", fontsize=9)
    ax.legend(fontsize=8)
    prices = np.linspace(0.0, g.p_max, 200)
    axes[1].plot(prices, g.y_of_p(prices), "k-")
    axes[1].set_xlabel("price p (money units)")
    axes[1].set_ylabel("resource y(p) offered for p (resource units)")
    axes[1].set_title("the tariff y(p)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(rows: list[claims.Row]) -> None:
    print(f"{'figure':<62}{'n':>6}{'document':>15}{'computed':>17}  {'tolerance':<16}"
          f"{'agrees':<7}why")
    notes: list[str] = []
    for r in rows:
        n = "" if r.n is None else str(r.n)
        mark = "yes" if r.agrees else "NO"
        why = r.why
        if r.why:
            notes.append(f"[{len(notes) + 1}] {r.figure}"
                         + (f" (n = {r.n})" if r.n is not None else "") + f": {r.note}")
            why = f"{r.why} [{len(notes)}]"
        print(f"{r.figure[:61]:<62}{n:>6}{r.document_value:>15.8g}{r.computed:>17.10g}  "
              f"{r.tolerance.text:<16}{mark:<7}{why}")
    side = [r for r in rows if r.alternatives]
    if side:
        print("\nEqual contribution under both conventions (welfare in money units; the "
              "document is judged under the slides' count):")
        print(f"{'figure':<56}{'n':>6}{'document':>15}{'slides X~Bin(n,p)':>19}"
              f"{'Bayes X=1+Bin(n-1,p)':>22}")
        for r in side:
            alt = r.alternatives[0]
            n = "" if r.n is None else str(r.n)
            print(f"{r.figure[:55]:<56}{n:>6}{r.document_value:>15.8g}"
                  f"{r.computed:>15.10g} {'ok' if r.agrees else 'NO':<3}"
                  f"{alt.computed:>18.10g} {'ok' if alt.agrees else 'NO':<3}")
    if notes:
        print("\nWhy rows disagree:")
        for line in notes:
            print(f"  {line}")
    bad = [r for r in rows if not r.agrees]
    reasons = Counter(r.why for r in bad)
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    print(f"\n{len(rows)} figures, {len(rows) - len(bad)} agree, {len(bad)} disagree"
          + (f" ({detail})" if detail else "")
          + ". Evidence: README, 'Where the documents and the engine disagree'.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    p.add_argument("--out", default="out", help="directory for the PNG plots (default: out)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--jobs", type=int, default=2,
                   help="processes for the slowest figures (the optimal mechanism without "
                        "exclusion), computed beside the rest (default 2; 1: in line)")
    p.add_argument("--quick", action="store_true",
                   help="skip the large-n coefficient fits (n up to 16,000) and plot "
                        "fewer n")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    t0 = time.time()

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    record: claims.Record = {}
    if args.jobs > 1:
        # The no-exclusion figures take most of the time: start them at once in other
        # processes, the largest n first (the slowest), then the others in the order the
        # rows need them, and let the rows pick them up when they get there.
        order = [max(claims.NS), *sorted(claims.NS)[:-1]]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {n: pool.submit(claims.no_exclusion_welfare, n) for n in order}
            rows = list(claims.rows(include_fits=not args.quick, progress=say, record=record,
                                    no_exclusion=lambda n: futures[n].result()))
    else:
        rows = list(claims.rows(include_fits=not args.quick, progress=say, record=record))
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1, ensure_ascii=False,
                         allow_nan=False))
    else:
        print_table(rows)
    if not args.no_plots:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        ns = QUICK_PLOT_NS if args.quick else PLOT_NS
        say("plotting welfare per agent against n")
        plot_welfare(out / "welfare_vs_n.png", welfare_curves(ns, record, say))
        say("plotting the grid-computing tariffs")
        plot_grid(out / "grid_tariffs.png")
        say(f"plots written: {out / 'welfare_vs_n.png'}, {out / 'grid_tariffs.png'}")
    say("done")
    return 1 if any(r.why == "unexplained" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
