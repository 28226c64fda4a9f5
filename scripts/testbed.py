#!/usr/bin/env python3
"""Play a scenario on a local multi-node testbed and write its report.

Thin front end over :mod:`coordinator.testbed`; see README "Testbed" and ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

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
  process  one process per node, forked by the node runner (`python -m node.fleet`)
           after it imported the node code once (default)
  exec     one `python -m node` process per node (what you would type; slow start)
  inproc   every node inside one runner process, stepped phase by phase (cheapest;
           for hundreds of nodes)

exit status: 0 all checks hold, 1 a check failed or one the scenario is about was
  not checked (the report says which),
  2 bad scenario or arguments, 3 the testbed could not run, 130 interrupted.

scenarios shipped in scripts/scenarios/: commuters (default), free-riders,
  posted-vs-optimal, file-sharing, grid-computing, channels, faults.
examples:
  python scripts/testbed.py
  python scripts/testbed.py --scenario free-riders --seed 7
  python scripts/testbed.py --scenario scripts/scenarios/commuters.toml --nodes inproc
"""


def default_data_dir() -> Path:
    """The user's state directory for inkind (``~/.local/state/inkind`` on Linux): private
    state (keys!) of throw-away runs never lands in a checkout."""
    import platformdirs

    return platformdirs.user_state_path("inkind")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="testbed.py", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, metavar="FILE",
                   help="scenario file (TOML), or the name of a shipped one such as "
                        "free-riders (default: scripts/scenarios/commuters.toml)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="report directory (default: out/testbed/<scenario name>)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed of everything random (default: the scenario's)")
    p.add_argument("--nodes", choices=("process", "exec", "inproc"), default="process",
                   help="how nodes run (default: %(default)s)")
    p.add_argument("--epochs", type=int, metavar="E", help="override the scenario's epochs")
    p.add_argument("--types", choices=("fixed", "redraw"),
                   help="fixed: each node's type θ is drawn once and replayed every epoch; "
                        "redraw: drawn afresh every epoch, so the welfare averaged over the "
                        "epochs is a mean over type profiles (default: the scenario's "
                        "[scenario] types, fixed if absent)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), metavar="DIR",
                   help="where keys, databases and logs go, in DIR/testbed/<scenario>/ "
                        "(default: %(default)s, outside the source tree; two runs of one "
                        "scenario at once need two)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    p.add_argument("--dashboard", action="store_true",
                   help="serve a live page on 127.0.0.1 that follows the run (its URL is "
                        "printed on a line of its own); after the run it stays up until "
                        "Ctrl-C")
    p.add_argument("--dashboard-port", type=int, default=0, metavar="P",
                   help="the dashboard's port (default: any free one)")
    return p


def summary_text(report: dict[str, Any]) -> str:
    """What a run did, what it checked and whether its welfare is within noise."""
    from coordinator.testbed.checks import verdict_text

    s = report["summary"]
    sc = report["scenario"]
    lat = s["latency_ms"]
    fr = s["free_riders"]
    lines = [
        f"played {sc['name']} (seed {report['seed']}, nodes as {report['mode']}) in "
        f"{report['wall_s']:.1f} s: {s['attempts']} roaming attempts, {s['grants']} grants, "
        f"{s['grants_to_excluded']} to excluded roamers; access latency p50 {lat['p50']} ms, "
        f"p99 {lat['p99']} ms",
        f"free riders caught: {len(fr['nodes'])} node(s) in {fr['offences']} offence(s)"
        + (" (" + ", ".join(f"{v} {k}" for k, v in fr["by_reason"].items()) + ")"
           if fr["offences"] else ""),
    ]
    redraw = sc.get("types") == "redraw"
    for m, b in s["by_mechanism"].items():
        z = b["welfare_z"]
        noise = "" if z is None else (" (within noise: |z| < 2)" if abs(z) < 2 else
                                      " (|z| >= 2: an unusual type profile, or nodes left "
                                      "out; see the epochs in report.md)")
        spread = (f"sd {_g(b['welfare_sd'])} per epoch over type profiles; types redrawn "
                  f"every epoch, so the mean of {b['type_profiles']} profiles has sd "
                  f"{_g(b['welfare_sd_of_mean'])}" if redraw else
                  f"sd {_g(b['welfare_sd'])} over type profiles; types drawn once, so the "
                  "epochs replay one profile")
        lines.append(
            f"  {m}: epochs {0 if b['epochs'] else '-'}..{b['epochs'] - 1} played, epoch "
            f"{b['cutoff_epoch']} is the audit cut-off; welfare (spec units, means over "
            f"the epochs) expected {_g(b['welfare_expected_mean'])} ({spread}), realised "
            f"{_g(b['welfare_realised_mean'])}, z = {_g(b['welfare_z'], 2)}{noise}; "
            f"delivered {_g(b['welfare_delivered_mean'])} (with the Q actually served)")
    lines.append("checks:")
    for c in s["checks"]:
        mark = "*" if c["name"] in s["checks_about"] else " "
        lines.append(f" {mark} {c['name']}: {verdict_text(c)}")
        lines += [f"     - {f}" for f in c["failures"][:10]]
    lines.append(f"checks: {s['verdict']}  (* = what the scenario is about)")
    return "\n".join(lines)


def _g(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from coordinator.testbed.driver import TestbedError, run_testbed
    from coordinator.testbed.progress import Progress
    from coordinator.testbed.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(resolve_scenario(args.scenario))
    except ScenarioError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    if args.types is not None:
        scenario = dataclasses.replace(scenario, types=args.types)
    if args.epochs is not None and not 1 <= args.epochs <= 1000:
        print("testbed: --epochs must be in [1, 1000]", file=sys.stderr)
        return 2
    out = args.out or Path("out") / "testbed" / scenario.name
    progress = Progress(enabled=not args.quiet)
    board = None
    if args.dashboard:
        from coordinator.testbed.dashboard import Board

        board = Board({"name": scenario.name, "description": scenario.description,
                       "locations": [{"name": loc.name} for loc in scenario.locations]},
                      live=True)
        try:
            url = board.serve(args.dashboard_port)
        except OSError as exc:
            print(f"testbed: {exc}", file=sys.stderr)
            return 3
        print(url, flush=True)
    progress.log(f"scenario {scenario.name}: {scenario.n_nodes} nodes in "
                 f"{len(scenario.locations)} locations, {args.epochs or scenario.epochs} "
                 f"epochs, {', '.join(scenario.mechanisms)}; types "
                 f"{'redrawn every epoch' if scenario.types == 'redraw' else 'drawn once'}; "
                 f"nodes as {args.nodes}")
    try:
        report = run_testbed(scenario, out=out, seed=args.seed, mode=args.nodes,
                             progress=progress, epochs=args.epochs, plots=not args.no_plots,
                             board=board, data_dir=args.data_dir)
    except KeyboardInterrupt:
        progress.close()
        if board is not None:
            board.close()
        print(f"testbed: interrupted; everything stopped; partial report in {out}/report.md",
              file=sys.stderr)
        return 130
    except (TestbedError, OSError) as exc:
        progress.close()
        print(f"testbed: {exc}", file=sys.stderr)
        return 3
    progress.close()
    print(summary_text(report))
    print(f"report: {out / 'report.md'}  (data: {out / 'report.json'})")
    print(f"keys, databases and logs: {args.data_dir / 'testbed' / scenario.name}")
    pngs = [] if args.no_plots else sorted(p.name for p in out.glob("*.png"))
    if pngs:
        print(f"plots:  {', '.join(str(out / p) for p in pngs)}")
    if board is not None:
        print(f"dashboard: {board.url} shows the finished run; Ctrl-C to stop", flush=True)
        board.serve_until_interrupted()
    return 0 if report["summary"]["ok"] else 1


def resolve_scenario(path: Path) -> Path:
    """A scenario file, or the name of a shipped one (``free-riders``)."""
    shipped = HERE / "scenarios" / f"{path.name.removesuffix('.toml')}.toml"
    if not path.exists() and path.parent == Path(".") and shipped.exists():
        return shipped
    return path


if __name__ == "__main__":
    sys.exit(main())
