#!/usr/bin/env python3
"""How far the local testbed scales on this machine: start-up time, memory, epoch time.

For each node count N and node mode (``process``: one forked process per node;
``inproc``: all nodes in one node runner process; ``exec``: one ``python -m node`` each),
a two-location WLAN-coverage scenario with N nodes is started (coordinator + nodes, up
to every node registered), one epoch is played (declare, close, provide, N roaming
attempts, audit: the epoch time), and everything is stopped. Memory is the proportional
set size (PSS, shared pages split between the processes sharing them, read with psutil)
of the node processes (for ``inproc``, the one runner's), in all and per node. Each run is
a fresh Python process (``--one MODE N``); one table row per run, with its phases.

    python scripts/bench_testbed.py                  # inproc up to 10,000, 200 processes
    python scripts/bench_testbed.py --quick          # a smaller ladder, under a minute
    python scripts/bench_testbed.py --json --rows rows.json   # figures on stdout
    python scripts/bench_testbed.py --mode process --nodes 50 200 800

Figures (issue 8 items 3 and 5), each beside a ceiling measured in the same run:

* the epoch time exponent b: least squares of log(epoch s) on log(N) over the inproc
  ladder (its points are printed), judged against 1 (a linear epoch), goal b <= 1.2;
* the epoch of the largest inproc N, judged against the smallest run scaled linearly
  (t(N_min) * N / N_min: what it would take if every node cost what it did in the smallest
  run); at 10,000 nodes the goal is under 120 s;
* the epoch of N nodes as processes (200 by default), judged against the inproc epoch of
  the same N in this run (or the fit's a * N^b); the goal: every node declared, and every
  included honest node committed;
* the epoch's CPU seconds in all the run's processes (driver, coordinator, nodes) and
  their exponent: what the machine's load changes little, unlike wall time;
* start-up and memory per node (context, no ceiling).

The ratio is ceiling / value (above 1: better than the ceiling; for the exponent,
1 / b). ``--json`` prints the figures to stdout as a list of objects with ``figure``,
``value``, ``unit``, ``ceiling``, ``ratio``, ``goal`` and ``met`` (the table goes to
stderr); ``--rows FILE`` writes the per-run rows; ``--check`` exits 1 if a goal is missed.
The machine is shared: say the load average (printed) when quoting a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from coordinator.testbed.driver import Options, Player
from coordinator.testbed.scenario import scenario_from_dict

DEFAULT = {"inproc": [500, 1000, 2500, 5000, 10_000], "process": [200],
           "exec": [10, 25, 50]}
QUICK = {"inproc": [100, 200, 400], "process": [25], "exec": [10]}
#: Issue 8 item 3: 10,000 nodes in one process through an epoch in under 2 minutes, an
#: epoch time growing at most as N^1.2, and 200 nodes as processes.
GOAL_NODES, GOAL_SECONDS, GOAL_EXPONENT, GOAL_PROCESSES = 10_000, 120.0, 1.2, 200


def pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages split among sharers), KiB."""
    try:
        return int(psutil.Process(pid).memory_full_info().pss) // 1024
    except (psutil.Error, AttributeError):
        return 0


def scenario(n: int) -> Any:
    half = n // 2
    return scenario_from_dict({
        "scenario": {"name": f"bench-{n}", "epochs": 1, "seed": 1, "mechanism": "posted_fee"},
        "market": {"payment": "in_kind"},
        "locations": [{"name": "a", "nodes": half, "area": half * 2.0},
                      {"name": "b", "nodes": n - half, "area": (n - half) * 2.0}],
        "mobility": {"trips": 1.0, "attempts": 1},
    })


def cpu_s(pids: set[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far (gone ones: 0)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


async def one(n: int, mode: str, workdir: Path) -> dict[str, Any]:
    sc = scenario(n)
    out = workdir / f"{mode}-{n}"
    options = Options(out=out, seed=1, mode=mode)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as session:
        player = Player(sc, "posted_fee", options, 0, out / "run", session)
        t0 = time.monotonic()
        try:
            await player.start()
            startup = time.monotonic() - t0
            # in process: every node shares the runner's pid, counted once
            pids = {h.pid for h in player.fleet.nodes.values() if h.pid}
            nodes_kb = sum(pss_kb(p) for p in pids)
            coord = player.coordinator.proc
            coord_kb = pss_kb(coord.pid) if coord is not None else 0
            # The epoch's CPU in every process of the run (this driver, the coordinator,
            # the nodes): what the machine's load does not change, unlike the wall time.
            procs = {os.getpid(), *pids} | ({coord.pid} if coord is not None else set())
            runner = getattr(player.fleet, "proc", None)
            if runner is not None:
                procs.add(runner.pid)
            cpu0 = cpu_s(procs)
            t1 = time.monotonic()
            rec = await player.play_epoch(0)
            epoch_s = time.monotonic() - t1
            epoch_cpu = cpu_s(procs) - cpu0
        finally:
            await player.stop()
    grants = sum(a.reason == "granted" for a in rec.attempts)
    return {"mode": mode, "nodes": n, "startup_s": round(startup, 2),
            "epoch_s": round(epoch_s, 2), "epoch_cpu_s": round(epoch_cpu, 2),
            "nodes_mb": round(nodes_kb / 1024, 1),
            "per_node_mb": round(nodes_kb / 1024 / n, 2),
            "coordinator_mb": round(coord_kb / 1024, 1),
            "attempts": len(rec.attempts), "grants": grants, "included": len(rec.included),
            "declarations": rec.declarations, "commitments": rec.commitments,
            "expected_commitments": rec.expected_commitments,
            "phases_s": {k: round(v, 2) for k, v in rec.durations.items()},
            "warnings": rec.warnings}


def fit_exponent(rows: list[dict[str, Any]], key: str = "epoch_s"
                 ) -> tuple[float, float] | None:
    """(a, b) of row[key] = a * N^b by least squares on log-log; None under 2 points."""
    pts = [(math.log(r["nodes"]), math.log(max(r[key], 1e-3))) for r in rows]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return math.exp(my - b * mx), b


def figure(name: str, value: float, unit: str, *, ceiling: float | None = None,
           ratio: float | None = None, goal: str | None = None,
           met: bool | None = None) -> dict[str, Any]:
    return {"figure": name, "value": value, "unit": unit, "ceiling": ceiling,
            "ratio": None if ratio is None else round(ratio, 3), "goal": goal, "met": met}


def figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The judged figures of the module docstring, from this run's rows."""
    out: list[dict[str, Any]] = []
    inproc = sorted((r for r in rows if r["mode"] == "inproc"), key=lambda r: r["nodes"])
    fit = fit_exponent(inproc) if len(inproc) >= 3 else None
    if fit is not None:
        b = fit[1]
        out.append(figure(
            f"epoch time exponent, inproc N={inproc[0]['nodes']}..{inproc[-1]['nodes']}",
            round(b, 3), "", ceiling=1.0, ratio=1.0 / b if b > 0 else None,
            goal=f"<= {GOAL_EXPONENT}", met=b <= GOAL_EXPONENT))
    cpu_fit = fit_exponent(inproc, "epoch_cpu_s") if len(inproc) >= 3 else None
    if cpu_fit is not None:
        b = cpu_fit[1]
        out.append(figure(
            f"epoch CPU exponent (all processes), inproc N={inproc[0]['nodes']}.."
            f"{inproc[-1]['nodes']}", round(b, 3), "", ceiling=1.0,
            ratio=1.0 / b if b > 0 else None, goal=f"<= {GOAL_EXPONENT}",
            met=b <= GOAL_EXPONENT))
    if inproc:
        small, big = inproc[0], inproc[-1]
        n = big["nodes"]
        at_goal = n >= GOAL_NODES
        linear = small["epoch_s"] * n / small["nodes"]
        out.append(figure(
            f"epoch, {n} nodes in one process", big["epoch_s"], "s", ceiling=round(linear, 2),
            ratio=linear / big["epoch_s"] if big["epoch_s"] > 0 else None,
            goal=f"< {GOAL_SECONDS:.0f} s at {GOAL_NODES} nodes" if at_goal else None,
            met=big["epoch_s"] < GOAL_SECONDS and complete(big) if at_goal else None))
        out.append(figure(f"epoch CPU, {n} nodes in one process (all processes)",
                          big["epoch_cpu_s"], "s", ceiling=round(
                              small["epoch_cpu_s"] * n / small["nodes"], 2),
                          ratio=small["epoch_cpu_s"] * n / small["nodes"] / big["epoch_cpu_s"]
                          if big["epoch_cpu_s"] > 0 else None))
        out.append(figure(f"start-up, {n} nodes in one process", big["startup_s"], "s"))
        out.append(figure(f"memory per node, {n} in one process",
                          round(1024 * big["per_node_mb"], 1), "KiB"))
    for r in (r for r in rows if r["mode"] != "inproc"):
        n = r["nodes"]
        same = next((x for x in inproc if x["nodes"] == n), None)
        ceiling = (same["epoch_s"] if same is not None
                   else None if fit is None else fit[0] * n ** fit[1])
        goal = r["mode"] == "process" and n >= GOAL_PROCESSES
        out.append(figure(
            f"epoch, {n} nodes as {r['mode']}", r["epoch_s"], "s",
            ceiling=None if ceiling is None else round(ceiling, 2),
            ratio=None if ceiling is None or r["epoch_s"] <= 0 else ceiling / r["epoch_s"],
            goal="every node declared, every included honest node committed" if goal
            else None, met=complete(r) if goal else None))
    return out


def complete(row: dict[str, Any]) -> bool:
    """Every node declared and every included honest node committed, no warning."""
    return (row["declarations"] == row["nodes"] and not row["warnings"]
            and row["commitments"] >= row["expected_commitments"] > 0)


def run_one(mode: str, n: int) -> dict[str, Any] | str:
    """One run in a fresh process: its row, or the last line of its error."""
    child = subprocess.Popen([sys.executable, __file__, "--one", mode, str(n)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        out, err = child.communicate()
    except BaseException:  # Ctrl-C: let the child stop what it started
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=120)
        raise
    if child.returncode != 0:
        return (err.strip().splitlines()[-1:] or ["?"])[0]
    row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return row


def print_figures(figs: list[dict[str, Any]], file: Any) -> None:
    print(f"\n{'figure':56} {'value':>9} {'unit':4} {'ceiling':>9} {'ratio':>6}  goal / met",
          file=file)
    for f in figs:
        goal = "-" if f["goal"] is None else (
            f"{f['goal']}: {'yes' if f['met'] else 'NO'}")
        ceiling = "-" if f["ceiling"] is None else f"{f['ceiling']:g}"
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}"
        print(f"{f['figure']:56} {f['value']:>9g} {f['unit']:4} {ceiling:>9} {ratio:>6}  "
              f"{goal}", file=file)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(DEFAULT), action="append",
                    help="node mode(s) to measure (default: inproc and process)")
    ap.add_argument("--nodes", type=int, nargs="+", help="node counts (default: a ladder)")
    ap.add_argument("--quick", action="store_true", help="a smaller ladder (under a minute)")
    ap.add_argument("--json", action="store_true",
                    help="print the figures to stdout as a JSON list (the table to stderr)")
    ap.add_argument("--rows", type=Path, help="also write the per-run rows as JSON here")
    ap.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    ap.add_argument("--max-seconds", type=float, default=600.0,
                    help="stop a mode's ladder once a run takes longer (default 600)")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        async def guarded() -> dict[str, Any]:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            with tempfile.TemporaryDirectory(prefix="bench-testbed-") as tmp:
                return await one(int(args.one[1]), args.one[0], Path(tmp))

        row = asyncio.run(guarded())
        print(json.dumps(row))
        return 0
    note = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON
    ladders = QUICK if args.quick else DEFAULT
    modes = args.mode or ["inproc", "process"]
    started = time.monotonic()
    print(f"inkind testbed benchmark{' (--quick)' if args.quick else ''}: "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start",
          file=note, flush=True)
    rows: list[dict[str, Any]] = []
    failed = False
    print(f"{'mode':8} {'nodes':>6} {'start s':>8} {'epoch s':>8} {'CPU s':>7} {'nodes MB':>9} "
          f"{'MB/node':>8} {'coord MB':>9} {'attempts':>9} {'grants':>7}  phases (s)",
          file=note, flush=True)
    for mode in modes:
        for n in args.nodes or ladders[mode]:
            t = time.monotonic()
            row = run_one(mode, n)
            if isinstance(row, str):  # report and stop climbing
                print(f"{mode:8} {n:>6} failed: {row}", file=note, flush=True)
                failed = True
                break
            rows.append(row)
            print(f"{mode:8} {n:>6} {row['startup_s']:>8} {row['epoch_s']:>8} "
                  f"{row['epoch_cpu_s']:>7} "
                  f"{row['nodes_mb']:>9} {row['per_node_mb']:>8} {row['coordinator_mb']:>9} "
                  f"{row['attempts']:>9} {row['grants']:>7}  "
                  + " ".join(f"{k} {v}" for k, v in row["phases_s"].items())
                  + (f"  ({'; '.join(row['warnings'])})" if row["warnings"] else ""),
                  file=note, flush=True)
            if time.monotonic() - t > args.max_seconds:
                break
    inproc = sorted((r for r in rows if r["mode"] == "inproc"), key=lambda r: r["nodes"])
    fit = fit_exponent(inproc)
    if fit is not None:
        print(f"\nfit over the inproc ladder: epoch s = {fit[0]:.3g} * N^{fit[1]:.3f}; "
              "points (N, epoch s): "
              + ", ".join(f"({r['nodes']}, {r['epoch_s']})" for r in inproc),
              file=note, flush=True)
        cfit = fit_exponent(inproc, "epoch_cpu_s")
        assert cfit is not None
        print(f"epoch CPU s (all processes) = {cfit[0]:.3g} * N^{cfit[1]:.3f}; points: "
              + ", ".join(f"({r['nodes']}, {r['epoch_cpu_s']})" for r in inproc),
              file=note, flush=True)
    figs = figures(rows)
    print_figures(figs, note)
    print(f"\ntotal {time.monotonic() - started:.0f} s, load average "
          f"{os.getloadavg()[0]:.2f} at the end", file=note, flush=True)
    if args.rows:
        args.rows.write_text(json.dumps(rows, indent=1))
    if args.json:
        print(json.dumps(figs, indent=1))
    missed = failed or any(f["met"] is False for f in figs)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
