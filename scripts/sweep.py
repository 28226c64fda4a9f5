#!/usr/bin/env python3
"""Run a sweep (a grid of market specs × mechanisms) on Dask, resumably.

    python scripts/sweep.py scripts/sweeps/welfare-vs-n.toml
    python scripts/sweep.py SWEEP.toml --out DIR --workers 2
    python scripts/sweep.py SWEEP.toml --scheduler tcp://HOST:8786   # a running cluster

The sweep file format is in coordinator/sweep.py and README.md ("Sweeps"). Without
``--scheduler`` a local Dask cluster of ``--workers`` processes (one thread each) is
started and stopped; with it, the tasks go to that scheduler, whose workers must have
inkind installed. Each finished row is appended to DIR/results.csv at once (one row per
spec and mechanism: the grid point, welfare and welfare per agent, λ, thresholds,
E[Q] and the expected fee with their standard errors, the error estimate, seconds),
keyed by a stable hash of spec and mechanism: run the same command again after an
interruption and only the missing rows are computed. Then DIR/welfare.png is drawn
(one panel per combination of the axes other than ``[plot] x``; one line per
mechanism). Progress goes to stderr. Exit status: 0 done, 2 a bad sweep file or
results file, 130 interrupted (the rows written so far are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.sweep import (
    Sweep,
    SweepError,
    Task,
    append_row,
    load_sweep,
    pending,
    read_rows,
    run_task,
)


def _label(value: Any) -> str:
    """Short text for an axis value: a type table as its distribution, numbers as %g."""
    if isinstance(value, dict):
        dist = value.get("dist")
        if dist == "uniform":
            return f"U[{_label(value.get('low', 0.0))}, {_label(value.get('high', 1.0))}]"
        if dist == "beta":
            return f"Beta({_label(value.get('a'))}, {_label(value.get('b'))})"
        if dist == "scipy":
            params = value.get("params", {})
            inner = ", ".join(f"{k}={_label(v)}" for k, v in params.items())
            return f"{value.get('name')}({inner})"
        return ", ".join(f"{k}={_label(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def plot(sweep: Sweep, rows: list[dict[str, str]], path: Path) -> str:
    """Welfare (per agent) against the x axis, one panel per combination of the other
    axes, one line per mechanism (never joined across mechanisms). Returns a note."""
    if sweep.plot_x is None:
        return "no plot: the sweep names no [plot] x axis"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [p for p, _ in sweep.axes if p != sweep.plot_x]
    panels: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    units = {r["welfare_unit"] for r in rows if r["welfare_unit"]}
    refused = 0
    for r in rows:
        if r["success"] != "true" or not r["welfare"]:
            refused += 1
            continue
        x = json.loads(r[sweep.plot_x])
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return f"no plot: plot.x values must be numbers, got {x!r}"
        y = float(r["welfare_per_agent" if sweep.per_agent else "welfare"])
        panel = "; ".join(f"{p.split('.')[-1]} = {_label(json.loads(r[p]))}" for p in others)
        panels[panel][r["mechanism"]].append((float(x), y))
    if not panels:
        return "no plot: no solved rows"
    keys = sorted(panels)[:12]
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.2 * nrows), squeeze=False)
    unit = " / ".join(sorted(units)) or "money units"
    ylabel = ("expected welfare per agent" if sweep.per_agent else "expected welfare") + \
        f" ({unit})"
    xname = sweep.plot_x.split(".")[-1]
    xlabel = ("number of agents n per location" if xname == "n" else xname)
    markers = "osvD^x+<>p*h"
    for ax, key in zip(axes.ravel(), keys, strict=False):
        for k, mech in enumerate(sweep.mechanisms):
            pts = sorted(panels[key].get(mech, []))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], f"{markers[k % 12]}-",
                        ms=4, lw=1.1, label=mech)
        if all(x > 0 for m in panels[key].values() for x, _ in m):
            ax.set_xscale("log")
            xlabel_used = f"{xlabel} (log scale)"
        else:
            xlabel_used = xlabel
        ax.set_xlabel(xlabel_used)
        if all(y > 0 for m in panels[key].values() for _, y in m):
            ax.set_yscale("log")
            ax.set_ylabel(f"{ylabel}, log scale")
        else:
            ax.set_ylabel(ylabel)
        ax.set_title(key or sweep.name, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"sweep {sweep.name}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    more = f"; {len(panels) - len(keys)} more panels not drawn" if len(panels) > 12 else ""
    return f"plot written: {path}" + (f" ({refused} unsolved rows left out)" if refused else "") \
        + more


def run(sweep: Sweep, todo: list[Task], results: Path, columns: tuple[str, ...],
        scheduler: str | None, workers: int, say: Any) -> int:
    """Compute ``todo`` on Dask, appending each row as it finishes; rows written."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        say(f"connecting to the Dask scheduler at {scheduler}")
        client = Client(scheduler, timeout="30s")
    else:
        say(f"starting a local Dask cluster: {workers} worker processes, 1 thread each")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    written = 0
    t0 = time.perf_counter()
    try:
        futures = [client.submit(run_task, t, key=f"inkind-sweep-{t.key}", pure=False)
                   for t in todo]
        for fut in as_completed(futures):
            row = fut.result()
            append_row(results, columns, row)
            written += 1
            el = time.perf_counter() - t0
            eta = el / written * (len(todo) - written)
            point = ", ".join(f"{p.split('.')[-1]}={_label(json.loads(row[p]))}"
                              for p, _ in sweep.axes)
            ok = "" if row["success"] == "true" else f" FAILED: {row['status'][:60]}"
            say(f"[{written}/{len(todo)}] {row['mechanism']} {point}: welfare/agent "
                f"{float(row['welfare_per_agent'] or 'nan'):.6g} "
                f"({float(row['seconds']):.2f} s){ok}; "
                f"ETA {eta:.0f} s")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep file (.toml)")
    p.add_argument("--out", help="output directory (default: out/sweeps/NAME)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler "
                                       "(default: start a local cluster)")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes of the local cluster (default 2)")
    p.add_argument("--no-plots", action="store_true", help="skip the plot")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    try:
        sweep = load_sweep(args.sweep)
        out = Path(args.out or Path("out") / "sweeps" / sweep.name)
        out.mkdir(parents=True, exist_ok=True)
        results = out / "results.csv"
        columns = sweep.columns
        done = read_rows(results, columns)
    except (OSError, SweepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    todo = pending(sweep, done)
    total = len(done) + len(todo)
    say(f"sweep {sweep.name}: {total} rows ({len(sweep.mechanisms)} mechanisms), "
        f"{len(done)} already in {results}, {len(todo)} to compute")
    if todo:
        try:
            run(sweep, todo, results, columns, args.scheduler, args.workers, say)
        except KeyboardInterrupt:
            kept = len(read_rows(results, columns))
            print(f"interrupted: {kept} of {total} rows are in {results}; run the same "
                  "command again to compute the rest", file=sys.stderr)
            return 130
    rows = read_rows(results, columns)
    failed = sum(r["success"] != "true" for r in rows)
    say(f"{len(rows)} rows in {results}" + (f", {failed} not solved (see status)"
                                            if failed else ""))
    if not args.no_plots:
        say(plot(sweep, rows, out / "welfare.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
