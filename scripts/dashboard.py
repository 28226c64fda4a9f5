#!/usr/bin/env python3
"""Show a finished testbed run in the browser: ``python scripts/dashboard.py REPORT``.

Serves the page ``scripts/testbed.py --dashboard`` shows live (coordinator/testbed/
dashboard.py) for the run recorded in ``report.json``, on 127.0.0.1, until Ctrl-C. The
page's URL is printed on a line of its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dashboard.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="a run's report.json (or its directory)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any)")
    args = p.parse_args(argv)
    path = args.report / "report.json" if args.report.is_dir() else args.report
    from coordinator.testbed.schema import ReportError, load_report

    try:
        report = load_report(path).model_dump(mode="json")  # validated: a typed report
    except ReportError as exc:
        print(f"dashboard: {exc}", file=sys.stderr)
        return 2
    from coordinator.testbed.dashboard import Board

    board = Board(report["scenario"], live=False)
    board.finish(report)
    try:
        url = board.serve(args.port)
    except OSError as exc:
        print(f"dashboard: {exc}", file=sys.stderr)
        return 3
    print(url, flush=True)
    print("Ctrl-C to stop", file=sys.stderr, flush=True)
    board.serve_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
