#!/usr/bin/env python3
"""Does any deviation by one node pay? Play a scenario truthfully and once per deviation.

Thin front end over :mod:`coordinator.testbed.deviations`; see README "Deviation
experiment" and ``--help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SCENARIO = HERE / "scenarios" / "commuters.toml"

DESCRIPTION = """\
Play the scenario's population over the wire (coordinator process, in-process nodes)
once truthfully and once per deviation by one node (the included node of median type at
the most populated location), over --epochs epochs and --seeds seeds, and report the
deviator's gain in realised utility per epoch (spec units) with a 95% interval over
seeds, and the harm to honest nodes. Writes report.json, report.md and gain.png into
--out; progress (each run, how many are left) goes to stderr.

The 95% interval is Student t over the seeds, each seed one value (its paired gain
averaged over its epochs). Misreports are judged as the mechanism is designed (Bayesian
IC): in expectation over the other nodes' types, as the mechanism's IC auditor does;
the others on the wire. Every deviation is played on the wire as its owner would: see
README "The deviation experiment" for what each one sends.

exit status: 0 no deviation pays (gain above 0 beyond its interval) and no honest node
  was excluded; 1 otherwise (the report says which); 2 bad scenario or arguments.
"""


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE.parent))
    from coordinator.testbed.deviations import (
        BY_NAME,
        JSON_FIELDS,
        DeviationError,
        run_deviations,
    )
    from coordinator.testbed.progress import Progress
    from coordinator.testbed.scenario import ScenarioError

    ap = argparse.ArgumentParser(description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO,
                    help="scenario TOML (default scripts/scenarios/commuters.toml; its "
                         "[[strategies]] are ignored, its [[faults]] played)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 3; --quick 2)")
    ap.add_argument("--first-seed", type=int, default=None,
                    help="first seed (default: the scenario's)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10)")
    ap.add_argument("--out", type=Path, default=Path("out/deviations"),
                    help="directory for report.json, report.md, gain.png and the runs' "
                         "logs (default out/deviations)")
    ap.add_argument("--mechanism", default=None,
                    help="posted_fee | optimal (default: the scenario's first)")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated deviations (default all: {', '.join(BY_NAME)})")
    ap.add_argument("--nodes", choices=("inproc", "process"), default="inproc",
                    help="nodes in one runner process (default) or one process each")
    ap.add_argument("--jobs", type=int, default=3,
                    help="runs played at once, each with its own coordinator (default 3)")
    ap.add_argument("--quick", action="store_true", help="2 seeds x 3 epochs (for tests)")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object per deviation on stdout")
    ap.add_argument("--no-plots", action="store_true", help="skip gain.png")
    args = ap.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    epochs = args.epochs if args.epochs is not None else (3 if args.quick else 10)
    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in only if x not in BY_NAME]
        if unknown:
            ap.error(f"unknown deviations {unknown}; choose from {list(BY_NAME)}")
    if not 1 <= epochs <= 1000:
        ap.error("--epochs must lie in 1..1000")
    if not 1 <= args.jobs <= 16:
        ap.error("--jobs must lie in 1..16")
    if not 2 <= seeds <= 1000:
        ap.error("--seeds must lie in 2..1000 (a confidence interval needs 2)")
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} exists and is not a directory")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        ap.error(f"--out {args.out}: cannot write there ({exc.strerror or exc})")
    progress = Progress(sys.stderr)
    try:
        report = run_deviations(args.scenario, out=args.out, seeds=seeds,
                                first_seed=args.first_seed, epochs=epochs, mode=args.nodes,
                                mechanism=args.mechanism, only=only, progress=progress,
                                plots=not args.no_plots, jobs=args.jobs)
    except (ScenarioError, DeviationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        progress.close()
    if args.json:
        print(json.dumps([{k: r[k] for k in JSON_FIELDS} for r in report["rows"]], indent=1))
    else:
        for r in report["rows"]:
            ci = r["ci95"]
            ci_s = "n/a" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
            print(f"{r['deviation']:24s} gain {r['gain']:+.4f} {ci_s}  honest excluded "
                  f"{r['honest_excluded']}  service lost {r['service_lost']:+.4f}")
        print(f"95% CI: Student t over {len(report['seeds'])} seeds, each seed's gain averaged "
              f"over its {report['epochs']} epochs; gain in spec units per epoch")
        print(f"report: {args.out / 'report.md'} (data: report.json, plot: gain.png)")
    bad = [r["deviation"] for r in report["rows"] if r["pays"] or r["honest_excluded"]]
    if bad:
        print(f"deviations that pay or exclude honest nodes: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
