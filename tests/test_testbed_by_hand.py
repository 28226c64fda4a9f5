"""README "Running a coordinator and nodes by hand", run as written: the commands are
read from README's code block and started as a user would (only the port, the epoch
length and HEX, the key the coordinator prints, are filled in), in a directory standing
for a checkout; keys and databases must land in the data directories, never there."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def readme_commands() -> list[list[str]]:
    """The by-hand section's bash block as argv lists (continuations joined, comments out)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running a coordinator and nodes by hand", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_by_hand_flow_runs_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    assert [c[0] for c in commands] == ["inkind-coordinator", "inkind-node", "inkind-node",
                                        "curl"]
    port = str(free_port())
    home = tmp_path / "home"
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "scripts").symlink_to(ROOT / "scripts")  # the spec path is the checkout's
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    bindir = Path(sys.executable).parent

    def argv(cmd: list[str], key: str = "") -> list[str]:
        out = [str(bindir / cmd[0])]
        for a in cmd[1:]:
            a = a.replace("8700", port)
            out.append(key if a == "HEX" else a)
        return out

    coord_argv = argv(commands[0])
    coord_argv[coord_argv.index("--epoch-seconds") + 1] = "2"  # an epoch every few seconds
    coord_argv += ["--pause-seconds", "1", "--rebuttal-seconds", "1"]  # audit period 3 s
    procs: list[subprocess.Popen[str]] = []
    try:
        coord = subprocess.Popen(coord_argv, cwd=checkout, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(coord)
        assert coord.stdout is not None
        info = json.loads(coord.stdout.readline())
        assert info["coordinator"] == f"http://127.0.0.1:{port}"
        for cmd in commands[1:3]:
            procs.append(subprocess.Popen(argv(cmd, info["public_key"]), cwd=checkout, env=env,
                                          text=True, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
        # The node logs one INFO line per epoch step: wait for one whole epoch of n1.
        steps: dict[str, set[str]] = {}
        stream = procs[1].stderr
        assert stream is not None
        for line in stream:
            m = re.search(r"epoch (\d+): (declared|provided|reported)$", line.rstrip())
            if m:
                steps.setdefault(m.group(1), set()).add(m.group(2))
                if steps[m.group(1)] == {"declared", "provided", "reported"}:
                    break
        assert any(s == {"declared", "provided", "reported"} for s in steps.values()), steps
        url = commands[3][-1].replace("8700", port)
        with urllib.request.urlopen(url, timeout=10) as resp:
            status = json.loads(resp.read())
        assert status["counts"]["nodes"] == 2 and status["phase"] in ("open", "closed")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs]
        for p in procs:
            for s in (p.stdout, p.stderr):
                if s is not None:
                    s.close()
    assert codes == [0, 0, 0]  # SIGTERM stops each cleanly
    assert os.listdir(checkout) == ["scripts"]  # nothing written where the commands ran
    data = home / ".local" / "share" / "inkind"
    assert {p.name for p in (data / "node").iterdir()} == {"n1.pem", "n2.pem"}
    written = {p.name for p in (data / "coordinator").iterdir()}
    assert {"coordinator.db", "coordinator.pem"} <= written
    for d in (data / "node", data / "coordinator"):
        assert d.stat().st_mode & 0o777 == 0o700
