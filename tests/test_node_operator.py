"""What an operator sees of a node: a line per epoch step and per access decision at
INFO, and a registration the coordinator refuses for good ends the node (exit 4) with a
clear message instead of retrying every second forever."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "scripts" / "specs" / "three-towns.toml"
pytestmark = pytest.mark.slow


def start_coordinator(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "--spec", str(SPEC), "--db",
         str(tmp_path / "c.db"), "--key", str(tmp_path / "c.pem"), "--port", "0",
         "--epoch-seconds", "2", "--grace-seconds", "1", "--rebuttal-seconds", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def test_a_location_the_market_lacks_ends_the_node_with_exit_4(tmp_path: Path) -> None:
    coord, info = start_coordinator(tmp_path)
    try:
        t0 = time.monotonic()
        node = subprocess.run(
            [sys.executable, "-m", "node", "--coordinator", info["coordinator"],
             "--coordinator-key", info["public_key"], "--key", str(tmp_path / "n.pem"),
             "--location", "7", "--kind", "wlan_coverage", "--capacity", "1",
             "--theta", "0.5", "--poll", "0.2"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        assert node.returncode == 4, node.stderr
        assert "refuses this node's registration" in node.stderr
        assert "home_location 7" in node.stderr
        assert time.monotonic() - t0 < 30
    finally:
        coord.terminate()
        coord.wait(timeout=30)
        assert coord.stdout is not None
        coord.stdout.close()


def test_info_log_has_a_line_per_epoch_step(tmp_path: Path) -> None:
    coord, info = start_coordinator(tmp_path)
    node = subprocess.Popen(
        [sys.executable, "-m", "node", "--coordinator", info["coordinator"],
         "--coordinator-key", info["public_key"], "--key", str(tmp_path / "n.pem"),
         "--location", "0", "--kind", "wlan_coverage", "--capacity", "1", "--theta", "0.9",
         "--poll", "0.2", "--log-level", "INFO", "--roam-moves", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen: set[str] = set()
    try:
        assert node.stderr is not None
        for line in node.stderr:  # the node logs as it goes; wait on the stream
            for step in ("registered", "declared", "provided", "reported"):
                if line.rstrip().endswith(f": {step}") and " epoch " in line:
                    seen.add(step)
            if {"registered", "declared", "reported"} <= seen:
                break
    finally:
        node.terminate()
        node.wait(timeout=30)
        coord.terminate()
        coord.wait(timeout=30)
        for stream in (node.stderr, coord.stdout):
            if stream is not None:
                stream.close()
    assert {"registered", "declared", "reported"} <= seen
