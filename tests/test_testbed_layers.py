"""The testbed reaches the nodes only over the wire: loading all of it loads no ``node``
module (the launcher starts node processes and the node runner by their command lines)."""

from __future__ import annotations

import subprocess
import sys

TESTBED = ["coordinator.testbed", "coordinator.testbed.driver", "coordinator.testbed.fleet",
           "coordinator.testbed.report", "coordinator.testbed.scenario",
           "coordinator.testbed.wire", "coordinator.testbed.checks",
           "coordinator.testbed.records", "coordinator.testbed.progress"]


def test_the_testbed_imports_no_node_module() -> None:
    code = (f"import importlib, sys\nfor m in {TESTBED!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'node' or m.startswith('node.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
