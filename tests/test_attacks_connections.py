"""Flooding with connections (issue 11 item 5): one address opening far more stalled
connections than the coordinator's cap (each sends half a request head and waits) holds
no more than the cap, and an honest client, even from the same address, is answered
meanwhile; with the descriptor limit lowered to 256 in the coordinator's process (the
real command), a thousand stalled connections leave room for an honest registration."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from helpers.coordinator import (
    ADMIN_TOKEN,
    COORDINATOR,
    SPEC_TOML,
    FakeClock,
    config,
    node,
    raw,
    registration,
    runner,
)
from helpers.rawhttp import closed_within

from coordinator.connections import LimitedSite, connection_budget
from coordinator.service import make_app, make_runner
from coordinator.store import Store

STALL = b"POST /v1/register HTTP/1.1\r\nHost: x\r\n"  # a head never finished


async def stall(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(STALL)
    await writer.drain()
    return reader, writer


async def register(base: str, i: int, *, within: float) -> tuple[int, float]:
    """An honest node's registration with its own client: (status, seconds taken)."""
    who = node(i)
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=within)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.post(
            f"{base}/v1/register", data=raw(who, registration(who)),
            headers={"Content-Type": "application/json"}) as r:
        await r.read()
        return r.status, time.monotonic() - t0


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **caps: int) -> AsyncIterator[tuple[LimitedSite, int]]:
    store = Store(tmp_path / "coord.db")
    app = make_app(config(), store=store, identity=COORDINATOR, clock=FakeClock(),
                   runner=runner())
    site_runner = make_runner(app, access_log=None)  # idle timeout 30 s: longer than the test
    await site_runner.setup()
    site = LimitedSite(site_runner, "127.0.0.1", 0, **caps)
    await site.start()
    try:
        yield site, int(site_runner.addresses[0][1])
    finally:
        await site_runner.cleanup()
        store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("caps", [{"per_client": 32, "total": 0},
                                  {"per_client": 0, "total": 32},
                                  {"per_client": 32, "total": 48}])
async def test_stalled_connections_beyond_the_cap_are_closed_and_an_honest_client_served(
        tmp_path: Path, caps: dict[str, int]) -> None:
    cap = min(c for c in caps.values() if c)
    async with served(tmp_path, **caps) as (site, port):
        conns = []
        try:
            for _ in range(4 * cap):
                conns.append(await stall("127.0.0.1", port))
                assert site.open_connections <= cap
            # The oldest stalled ones made room for the newer: all but ``cap`` are closed.
            closed = await asyncio.gather(*(closed_within(r, 5.0) for r, _ in conns[:3 * cap]))
            assert all(closed)
            assert site.closed_for_room >= 3 * cap

            # The flood goes on while an honest client from the same address registers.
            async def flood() -> None:
                while True:
                    conns.append(await stall("127.0.0.1", port))
                    assert site.open_connections <= cap

            flooding = asyncio.create_task(flood())
            try:
                status, took = await register(f"http://127.0.0.1:{port}", 1, within=10.0)
            finally:
                flooding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flooding
            assert status == 200 and took < 10.0
            assert site.open_connections <= cap
        finally:
            for _, writer in conns:
                writer.close()


@pytest.mark.asyncio
async def test_busy_connections_are_never_closed_for_room(tmp_path: Path) -> None:
    """At the cap with every connection in the middle of a request (a body still
    coming), the newest connection is refused; the busy ones are kept."""
    async with served(tmp_path, per_client=4, total=0) as (site, port):
        busy = []
        try:
            for _ in range(4):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /v1/register HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 100\r\n\r\n{")
                await writer.drain()
                busy.append((reader, writer))
            async with asyncio.timeout(5.0):  # until the server has read all four heads
                while site.busy_connections < 4:
                    await asyncio.sleep(0.005)
            newest, writer = await stall("127.0.0.1", port)
            busy.append((newest, writer))
            assert await closed_within(newest, 5.0)
            for reader, _ in busy[:4]:
                assert not reader.at_eof()
            assert site.open_connections == 4
        finally:
            for _, writer in busy:
                writer.close()


def test_the_connection_budget_leaves_room_below_the_descriptor_limit() -> None:
    for limit in (64, 256, 1024, 4096, 65536):
        total, backlog = connection_budget(limit)
        assert total >= 16 and backlog >= 8
        if limit >= 256:
            assert total + backlog + 128 <= limit
    assert connection_budget(resource.RLIM_INFINITY)[0] == 0


# --- the real command with 256 descriptors --------------------------------------------------

LOW_LIMIT = 256
FLOOD = 1000


def _start_with_few_descriptors(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    (tmp / "spec.toml").write_text(SPEC_TOML)
    cmd = [sys.executable, "-m", "coordinator", "--spec", str(tmp / "spec.toml"),
           "--db", str(tmp / "coord.db"), "--key", str(tmp / "coord.pem"),
           "--host", "127.0.0.1", "--port", "0", "--manual", "--admin-token", ADMIN_TOKEN,
           "--log-level", "WARNING"]

    def few_descriptors() -> None:  # runs in the child, before the coordinator starts
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_LIMIT, LOW_LIMIT))

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp,
                            preexec_fn=few_descriptors)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        proc.wait(10)
        err = proc.stderr.read().decode() if proc.stderr else ""
        pytest.fail(f"coordinator did not start: {err}")
    return proc, str(json.loads(line)["coordinator"])


@pytest.mark.slow  # a real coordinator process and a thousand connections
@pytest.mark.asyncio
async def test_a_thousand_stalled_connections_leave_room_under_a_low_descriptor_limit(
        tmp_path: Path) -> None:
    proc, base = _start_with_few_descriptors(tmp_path)
    port = int(base.rsplit(":", 1)[1])
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    t0 = time.monotonic()
    try:
        for i in range(0, FLOOD, 50):  # 50 at a time: the listen backlog is small here
            conns += await asyncio.gather(*(stall("127.0.0.1", port)
                                            for _ in range(min(50, FLOOD - i))))
        print(f"flood of {FLOOD} open after {time.monotonic() - t0:.1f} s")
        status, took = await register(base, 1, within=10.0)
        print(f"registered in {took:.2f} s")
        assert status == 200 and took < 10.0
        # The coordinator holds at most its budget: the rest were closed.
        total, _ = connection_budget(LOW_LIMIT)
        closed = await asyncio.gather(*(closed_within(r, 0.5) for r, _ in conns))
        assert sum(not c for c in closed) <= total
        assert proc.poll() is None
    finally:
        for _, writer in conns:
            writer.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("flag", ["--max-connections-per-client", "--max-connections"])
@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
def test_a_cap_on_the_command_line_is_a_count(flag: str, value: str) -> None:
    from coordinator.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--spec", "s.toml", flag, value])
    assert exc.value.code == 2
    args = build_parser().parse_args(["--spec", "s.toml", flag, "0"])
    assert args.max_connections_per_client == 0 or args.max_connections == 0
