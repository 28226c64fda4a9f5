"""The ``inkind-node`` command: help, the JSON line, registration and clean shutdown; and
the node's import boundary (no ``coordinator``, no numpy or scipy)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from helpers.clock import NOW, FakeClock
from helpers.node import ScriptedCoordinator, ident

from node.cli import build_parser, default_data_dir, key_path, main, spec_from_args
from node.launch import start_node
from node.service import start_site


def test_help_names_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "node", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--coordinator",
        "--coordinator-key",
        "--key",
        "--location",
        "--kind",
        "--capacity",
        "--theta",
        "--strategy",
        "--files-dir",
        "--host",
        "--port",
        "free-ride",
        "micro-units",
    ):
        assert flag in out, flag


@pytest.mark.parametrize(
    "extra",
    [
        ["--theta", "1.5"],
        ["--strategy", "greedy"],
        ["--location", "2000"],
        ["--capacity", "-1"],
        ["--kind", "spectrum"],
    ],
)
def test_bad_arguments_exit_2(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--coordinator", "http://x", "--key", "k", "--location", "0"]
    argv += ["--kind", "files", "--capacity", "1", "--theta", "0.5", *extra]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    ident(7).save(key)
    key.chmod(0o644)
    argv = ["--coordinator", "http://127.0.0.1:9", "--key", str(key), "--location", "0"]
    argv += ["--kind", "wlan_coverage", "--capacity", "1", "--theta", "0.5"]
    assert main(argv) == 2


def test_starting_a_node_loads_no_numerics() -> None:
    code = (
        "import sys, node.cli, node.agent, node.service\n"
        "bad = [m for m in ('numpy', 'scipy', 'coordinator') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.asyncio
async def test_the_command_prints_its_id_registers_and_stops_on_sigterm(tmp_path: Path) -> None:
    coord = ident(90)
    fake = ScriptedCoordinator(coord, clock=lambda: 1_700_000_000)
    runner, endpoint = await start_site(fake.app(), port=0)
    key = tmp_path / "node.pem"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node",
        "--coordinator",
        f"http://{endpoint}",
        "--coordinator-key",
        coord.public_key,
        "--key",
        str(key),
        "--location",
        "3",
        "--kind",
        "wlan_channels",
        "--capacity",
        "2",
        "--theta",
        "0.4",
        "--poll",
        "0.05",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        info = json.loads(line)
        assert set(info) == {
            "node_id",
            "public_key",
            "url",
            "endpoint",
            "location",
            "kind",
            "strategy",
        }
        assert (info["location"], info["kind"], info["strategy"]) == (
            3,
            "wlan_channels",
            "truthful",
        )
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        await asyncio.wait_for(fake.registered.wait(), timeout=30)
        reg = fake.registrations[info["node_id"]]
        assert (reg.home_location, reg.capacity, reg.kind) == (3, 2_000_000, "wlan_channels")
        assert reg.endpoint == info["endpoint"]
        async with aiohttp.ClientSession() as session, session.get(info["url"] + "/v1/status") as r:
            assert (await r.json())["node_id"] == info["node_id"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runner.cleanup()


@pytest.mark.parametrize(
    "bad", ["0.2,1.5", "0.2,,0.3", "x", "0." + "1" * 40, ",".join(["0.5"] * 100_001)]
)
def test_bad_per_epoch_types_exit_2(bad: str) -> None:
    argv = ["--coordinator", "http://x", "--key", "k", "--location", "0", "--kind",
            "wlan_coverage", "--capacity", "1", "--theta", "0.5", "--theta-per-epoch", bad]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2


@pytest.mark.asyncio
async def test_types_redrawn_every_epoch_are_declared_epoch_by_epoch(
    tmp_path: Path, clock: FakeClock
) -> None:
    """``--theta-per-epoch``: the node declares epoch e's true type (through its strategy)
    in epoch e, and ``--theta`` after the list ends."""
    fake = ScriptedCoordinator(ident(90), clock=clock)
    runner, endpoint = await start_site(fake.app(), port=0)
    argv = ["--coordinator", f"http://{endpoint}", "--coordinator-key",
            fake.identity.public_key, "--key", str(tmp_path / "n.pem"), "--location", "0",
            "--kind", "wlan_coverage", "--capacity", "1", "--theta", "0.5",
            "--theta-per-epoch", "0.2,0.9,0.35", "--strategy", "misreport:0.5"]
    spec = spec_from_args(build_parser().parse_args(argv))
    assert [spec.theta_at(e) for e in range(5)] == [200_000, 900_000, 350_000, 500_000, 500_000]
    try:
        async with aiohttp.ClientSession() as session:
            node = await start_node(spec, ident(72), session, clock=clock)
            try:
                declared = []
                for epoch in range(5):
                    fake.open(epoch, deadline=NOW + 60)
                    for _ in range(4):
                        if node.identity.node_id in fake.declarations[epoch]:
                            break
                        await node.agent.run_epoch_step()
                    declared.append(fake.declarations[epoch][node.identity.node_id].theta)
                assert declared == [100_000, 450_000, 175_000, 250_000, 250_000]
            finally:
                await node.stop()
    finally:
        await runner.cleanup()


def test_the_key_goes_to_the_data_directory(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative --key names a file in --data-dir (created 0700), an absolute one is used
    as given, and the default data directory is the user's, not the current one."""
    base = ["--coordinator", "http://x", "--location", "0", "--kind", "wlan_coverage",
            "--capacity", "1", "--theta", "0.5"]
    args = build_parser().parse_args([*base, "--data-dir", str(tmp_path / "d"), "--key", "a.pem"])
    assert key_path(args) == tmp_path / "d" / "a.pem"
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    args = build_parser().parse_args([*base, "--key", str(tmp_path / "b.pem")])
    assert key_path(args) == tmp_path / "b.pem"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "inkind" / "node"
    args = build_parser().parse_args([*base, "--data-dir", str(default_data_dir())])
    assert key_path(args) == tmp_path / "xdg" / "inkind" / "node" / "node.pem"
