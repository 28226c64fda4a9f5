"""Nothing a run starts outlives the launcher, however the launcher ends.

The launcher is killed with SIGKILL (no handler, no ``finally``: an out-of-memory kill or
a CI timeout) in the middle of an epoch; every process it had started -- the
coordinator, the node runner, its forkserver and each node process -- must be gone soon
after, leaving no port and no database held.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

SCENARIO = """
[scenario]
name = "orphans"
epochs = 50
seed = 4

[[locations]]
name = "a"
nodes = 4

[[locations]]
name = "b"
nodes = 4
"""


@pytest.mark.parametrize("mode", ["process", "inproc", "exec"])
def test_sigkill_of_the_launcher_leaves_no_survivor(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "orphans.toml"
    path.write_text(SCENARIO)
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "testbed.py"), "--scenario", str(path),
         "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "state"), "--no-plots",
         "--nodes", mode],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started: list[psutil.Process] = []
    try:
        assert launcher.stderr is not None
        for line in launcher.stderr:  # wait (on the stream, not the clock) for an epoch
            if "posted_fee epoch 0:" in line:
                break
        started = psutil.Process(launcher.pid).children(recursive=True)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if launcher.stderr is not None:
            launcher.stderr.close()
    # the coordinator, the runner (and forkserver) or every node process was running
    assert len(started) >= (2 if mode != "exec" else 9), started
    gone, alive = psutil.wait_procs(started, timeout=20)
    for p in alive:  # do not leave them to the next test either
        p.kill()
    assert alive == [], [(p.pid, p.cmdline()) for p in alive]
    assert len(gone) == len(started)


def test_a_runner_started_by_hand_ends_with_its_input(tmp_path: Path) -> None:
    """``python -m node.fleet`` quits on end of input (the launcher's pipe closing)."""
    proc = subprocess.Popen([sys.executable, "-m", "node.fleet", "--mode", "process"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout is not None and proc.stdin is not None
    assert '"ready"' in proc.stdout.readline()
    t0 = time.monotonic()
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0 and time.monotonic() - t0 < 30
    proc.stdout.close()
