#!/usr/bin/env python3
"""Play a scenario on a local multi-node testbed and write its report.

Thin front end over :mod:`coordinator.testbed`; see README "Testbed" and ``--help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SCENARIO = HERE / "scenarios" / "commuters.toml"

DESCRIPTION = """\
Start a coordinator and the scenario's nodes on 127.0.0.1, play its epochs (declare,
allocate, provide, roam, audit), stop everything, and write report.json, report.md and
PNG plots into --out. The run is reproducible: the same scenario and seed give the same
keys, declarations, allocations and roaming script (timings aside). Ctrl-C stops
everything cleanly and writes the report of the epochs played so far.
"""

EPILOG = """\
node modes:
  process  one process per node, forked from a pre-imported zygote (default)
  exec     one `python -m node` process per node (what you would type; slow start)
  inproc   every node inside this process (cheapest; for hundreds of nodes)

exit status: 0 all checks hold, 1 a check failed (the report says which),
  2 bad scenario or arguments, 3 the testbed could not run, 130 interrupted.

scenarios shipped in scripts/scenarios/: commuters (default), free-riders,
  posted-vs-optimal, file-sharing, grid-computing, channels, faults.
examples:
  python scripts/testbed.py
  python scripts/testbed.py --scenario scripts/scenarios/free-riders.toml --seed 7
  python scripts/testbed.py --scenario scripts/scenarios/commuters.toml --nodes inproc
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="testbed.py", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, metavar="FILE",
                   help="scenario file, TOML (default: scripts/scenarios/commuters.toml)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="report directory (default: out/testbed/<scenario name>)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed of everything random (default: the scenario's)")
    p.add_argument("--nodes", choices=("process", "exec", "inproc"), default="process",
                   help="how nodes run (default: %(default)s)")
    p.add_argument("--epochs", type=int, metavar="E", help="override the scenario's epochs")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from coordinator.testbed.driver import TestbedError, run_testbed
    from coordinator.testbed.progress import Progress
    from coordinator.testbed.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    if args.epochs is not None and not 1 <= args.epochs <= 1000:
        print("testbed: --epochs must be in [1, 1000]", file=sys.stderr)
        return 2
    out = args.out or Path("out") / "testbed" / scenario.name
    progress = Progress(enabled=not args.quiet)
    progress.log(f"scenario {scenario.name}: {scenario.n_nodes} nodes in "
                 f"{len(scenario.locations)} locations, {args.epochs or scenario.epochs} "
                 f"epochs, {', '.join(scenario.mechanisms)}; nodes as {args.nodes}")
    try:
        report = run_testbed(scenario, out=out, seed=args.seed, mode=args.nodes,
                             progress=progress, epochs=args.epochs, plots=not args.no_plots)
    except KeyboardInterrupt:
        progress.close()
        print(f"testbed: interrupted; everything stopped; partial report in {out}/report.md",
              file=sys.stderr)
        return 130
    except (TestbedError, OSError) as exc:
        progress.close()
        print(f"testbed: {exc}", file=sys.stderr)
        return 3
    progress.close()
    s = report["summary"]
    checks = s["checks"]
    ok = (checks["excluded_never_granted"] and checks["service_consistent"]
          and checks["free_riders_excluded"] and checks.get("unreachable_detected", True)
          and checks["budget_balanced"] is not False)
    lat = s["latency_ms"]
    print(f"played {scenario.name} (seed {report['seed']}, {report['mode']}) in "
          f"{report['wall_s']:.1f} s: {s['attempts']} roaming attempts, {s['grants']} grants, "
          f"{s['grants_to_excluded']} to excluded roamers; {len(s['free_riders_detected'])} "
          f"free-rider detections; access latency p50 {lat['p50']} ms, p99 {lat['p99']} ms")
    for m, b in s["by_mechanism"].items():
        print(f"  {m}: welfare expected {b['welfare_expected_mean']}, realised "
              f"{b['welfare_realised_mean']}, delivered {b['welfare_delivered_mean']} "
              "(means over epochs, spec units)")
    print(f"checks: {'all hold' if ok else 'FAILED: ' + '; '.join(checks['failures'])}")
    print(f"report: {out / 'report.md'}  (data: {out / 'report.json'})")
    pngs = sorted(p.name for p in out.glob("*.png"))
    if pngs:
        print(f"plots:  {', '.join(str(out / p) for p in pngs)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
