"""What others can do to an honest host over HTTP, and what it cannot make it do.

Slow clients are timed out, one client address holds a bounded number of connections,
unauthenticated floods store nothing, and through all of it the host still grants a
roamer and answers the coordinator's probe (issue 11 items 3 and 5, issue 8 item 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from helpers.node import NOW, World
from helpers.rawhttp import PARSER_ERRORS, closed_within, exchange

from node.host import Host
from node.service import _is_idle, make_app, start_site
from protocol import MICRO, check_probe_answer


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


@contextlib.asynccontextmanager
async def site(host: Host, *, idle: float = 5.0, per_client: int = 128,
               body_seconds: float = 5.0) -> AsyncIterator[tuple[str, int]]:
    app = make_app(host, clock=Clock(), body_seconds=body_seconds)
    runner, endpoint = await start_site(app, port=0, idle_seconds=idle, per_client=per_client)
    try:
        yield endpoint, int(endpoint.rsplit(":", 1)[1])
    finally:
        await runner.cleanup()


def make_host(w: World) -> Host:
    host = Host(w.host, kind="wlan_coverage", location=0, coordinator_key=w.coord.public_key)
    host.open_epoch(epoch=w.epoch, included=w.included, opened=10 * MICRO, now=NOW)
    return host


async def served(endpoint: str, w: World) -> tuple[int, int]:
    """(status of a roamer's access request, status of a signed probe answer)."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://{endpoint}/v1/access", data=w.request(w.alice)) as r:
            access = r.status
        nonce = "5a" * 16
        async with s.get(f"http://{endpoint}/v1/probe/{w.epoch}/{nonce}") as r:
            raw = await r.read()
            check_probe_answer(raw, host_key=w.host.public_key, epoch=w.epoch, nonce=nonce)
            return access, r.status


async def served_once_freed(endpoint: str, w: World, *, within: float) -> tuple[int, int]:
    """:func:`served`, retried while the per-client cap still closes the connection."""
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                return await served(endpoint, w)
            await asyncio.sleep(0)


async def stalled(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    out = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/access HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        await writer.drain()
        out.append((reader, writer))
    return out


@pytest.mark.asyncio
async def test_the_probe_is_answered_with_the_hosts_signature_over_the_nonce() -> None:
    w = World()
    async with site(make_host(w)) as (endpoint, _), aiohttp.ClientSession() as s:
        nonce = "ab" * 16
        async with s.get(f"http://{endpoint}/v1/probe/9/{nonce}") as r:
            assert r.status == 200
            answer = check_probe_answer(await r.read(), host_key=w.host.public_key, epoch=9,
                                        nonce=nonce)
            assert answer.host_id == w.host.node_id
        for bad in ("9/xyz", "x/" + nonce, "-1/" + nonce):
            async with s.get(f"http://{endpoint}/v1/probe/{bad}") as r:
                body = await r.json()
                assert r.status in (400, 404) and set(body) == {"code", "message"}
        async with s.get(f"http://{endpoint}/v1/challenge") as r:
            assert r.status == 404  # there is no challenge to fetch any more


@pytest.mark.asyncio
async def test_thirty_stalled_connections_are_closed_and_never_crowd_out_roamers() -> None:
    w = World()
    async with site(make_host(w), idle=0.5) as (endpoint, port):
        conns = await stalled(port, 30)
        try:
            assert await served(endpoint, w) == (200, 200)  # while they are all open
            t0 = time.monotonic()
            results = await asyncio.gather(*(closed_within(r, 5.0) for r, _ in conns))
            assert all(results) and time.monotonic() - t0 < 5.0
        finally:
            for _, writer in conns:
                writer.close()


@pytest.mark.asyncio
async def test_a_slow_body_is_cut_off() -> None:
    w = World()
    async with site(make_host(w), body_seconds=0.3) as (endpoint, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/access HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        await writer.drain()
        assert await closed_within(reader, 3.0)
        writer.close()
        assert await served(endpoint, w) == (200, 200)


@pytest.mark.asyncio
async def test_one_client_address_holds_a_bounded_number_of_connections() -> None:
    """Stalled connections beyond the cap displace the address's oldest stalled one; the
    address never holds more than the cap, and a roamer and a probe from that same
    address (127.0.0.1, like every flooder here) are answered while the flood goes on."""
    w = World()
    async with site(make_host(w), idle=30.0, per_client=5) as (endpoint, port):
        conns = await stalled(port, 20)
        try:
            # The first 15 were displaced by the later ones (an event each: the close).
            results = await asyncio.gather(*(closed_within(r, 5.0) for r, _ in conns[:15]))
            assert all(results)
            assert not any(r.at_eof() for r, _ in conns[15:])
            assert await served(endpoint, w) == (200, 200)
            async with aiohttp.ClientSession() as s, \
                    s.get(f"http://{endpoint}/v1/probe/9/{'cd' * 16}") as r:
                assert r.status == 200
        finally:
            for _, wr in conns:
                wr.close()


@pytest.mark.asyncio
async def test_a_connection_in_the_middle_of_a_request_is_never_closed_for_room() -> None:
    w = World()
    app = make_app(make_host(w), clock=Clock(), body_seconds=30.0)
    runner, endpoint = await start_site(app, port=0, idle_seconds=30.0, per_client=3)
    port = int(endpoint.rsplit(":", 1)[1])
    busy = []
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/access HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
            busy.append((reader, writer))
        assert runner.server is not None
        async with asyncio.timeout(5.0):  # until the server has read the three heads
            while sum(not _is_idle(h) for h in runner.server.connections) < 3:
                await asyncio.sleep(0.005)
        extra, writer = await asyncio.open_connection("127.0.0.1", port)
        busy.append((extra, writer))
        assert await closed_within(extra, 2.0)  # no idle connection to close: refused
        assert not any(r.at_eof() for r, _ in busy[:3])
    finally:
        for _, wr in busy:
            wr.close()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_an_unauthenticated_flood_stores_nothing_and_roamers_are_still_served() -> None:
    w = World()
    host = make_host(w)
    forged = w.request(w.alice, signer=w.mallory)  # a valid credential, a wrong signer
    connector = aiohttp.TCPConnector(limit=32)  # under the per-client connection cap
    async with site(host) as (endpoint, _), aiohttp.ClientSession(connector=connector) as s:

        async def one(body: bytes) -> int:
            async with s.post(f"http://{endpoint}/v1/access", data=body) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(b"{" if i % 2 else forged)
                                          for i in range(2_000)))
        assert set(statuses) == {400, 401}
        assert len(host.verifier.replays) == 0 and host.resource.granted_total == 0
        assert await served(endpoint, w) == (200, 200)
        assert len(host.verifier.replays) == 1


# --- errors keep their shape (issue 11 item 9, node side) ----------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (r.replace(b"PATH", b"/v1/access"), st, c) for r, st, c in PARSER_ERRORS])
async def test_http_level_errors_answer_in_the_protocols_error_shape(
        request_bytes: bytes, status: int, code: str,
        caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    async with site(make_host(w)) as (_, port):
        with caplog.at_level(logging.DEBUG):
            got_status, body, content_type = await exchange(("127.0.0.1", port), request_bytes)
    assert (got_status, body["code"]) == (status, code)
    assert set(body) == {"code", "message"} and content_type.startswith("application/json")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
