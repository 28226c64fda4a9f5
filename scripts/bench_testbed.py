#!/usr/bin/env python3
"""How far the local testbed scales on this machine: start-up time, memory, epoch time.

For each node count N and node mode (``process``: one forked process per node;
``inproc``: all nodes in one node runner process; ``exec``: one ``python -m node`` each),
a two-location WLAN-coverage scenario with N nodes is started (coordinator + nodes, up
to every node registered), one epoch is played (declare, close, provide, N roaming
attempts, audit), and everything is stopped. Memory is the proportional set size (PSS,
shared pages split between the processes sharing them, read with psutil) of the node
processes (for ``inproc``, the one runner's), in all and per node. Each run is a fresh
Python process (``--one MODE N``). Prints one table row per run and writes JSON
with --json.

    python scripts/bench_testbed.py                       # the default ladder
    python scripts/bench_testbed.py --mode process --nodes 50 200 800
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

DEFAULT = {"process": [25, 50, 100, 200, 400], "inproc": [50, 200, 500, 1000],
           "exec": [10, 25, 50]}


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
            t1 = time.monotonic()
            rec = await player.play_epoch(0)
            epoch_s = time.monotonic() - t1
        finally:
            await player.stop()
    grants = sum(a.reason == "granted" for a in rec.attempts)
    return {"mode": mode, "nodes": n, "startup_s": round(startup, 2),
            "epoch_s": round(epoch_s, 2), "nodes_mb": round(nodes_kb / 1024, 1),
            "per_node_mb": round(nodes_kb / 1024 / n, 2),
            "coordinator_mb": round(coord_kb / 1024, 1),
            "attempts": len(rec.attempts), "grants": grants, "included": len(rec.included),
            "warnings": rec.warnings}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(DEFAULT), action="append",
                    help="node mode(s) to measure (default: process and inproc)")
    ap.add_argument("--nodes", type=int, nargs="+", help="node counts (default: a ladder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="stop a mode's ladder once a run takes longer (default 120)")
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
    modes = args.mode or ["process", "inproc"]
    rows = []
    print(f"{'mode':8} {'nodes':>6} {'start s':>8} {'epoch s':>8} {'nodes MB':>9} "
          f"{'MB/node':>8} {'coord MB':>9} {'attempts':>9} {'grants':>7}", flush=True)
    for mode in modes:
        for n in args.nodes or DEFAULT[mode]:
            t = time.monotonic()
            child = subprocess.Popen([sys.executable, __file__, "--one", mode, str(n)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
            try:
                out, err = child.communicate()
            except BaseException:  # Ctrl-C: let the child stop what it started
                child.send_signal(signal.SIGTERM)
                child.communicate(timeout=120)
                raise
            done = subprocess.CompletedProcess(child.args, child.returncode, out, err)
            if done.returncode != 0:  # report and stop climbing
                tail = done.stderr.strip().splitlines()[-1:] or ["?"]
                print(f"{mode:8} {n:>6} failed: {tail[0]}", flush=True)
                break
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{mode:8} {n:>6} {row['startup_s']:>8} {row['epoch_s']:>8} "
                  f"{row['nodes_mb']:>9} {row['per_node_mb']:>8} {row['coordinator_mb']:>9} "
                  f"{row['attempts']:>9} {row['grants']:>7}"
                  + (f"  ({'; '.join(row['warnings'])})" if row["warnings"] else ""),
                  flush=True)
            if time.monotonic() - t > args.max_seconds:
                break
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
