"""Flooding, more instances (issue 11 item 5): slow clients at the coordinator (a head
never finished, a body trickled, a connection that says nothing) are timed out as at a
host, and honest nodes are answered meanwhile; unauthenticated floods of every node
endpoint store nothing and the host keeps granting and answering probes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest
from helpers.coordinator import served_on_socket
from helpers.node import NOW, World
from helpers.rawhttp import closed_within

from coordinator.config import BODY_SECONDS, IDLE_SECONDS
from node.host import Host
from node.service import make_app as make_node_app
from node.service import start_site
from protocol import MICRO, check_probe_answer


def coordinator(tmp_path: Path, *, idle: float, body: float,
                ) -> contextlib.AbstractAsyncContextManager[tuple[str, int]]:
    return served_on_socket(tmp_path, app_kwargs={"body_seconds": body},
                            runner_kwargs={"idle_seconds": idle})


STALLS = [
    b"POST /v1/register HTTP/1.1\r\nHost: x\r\n",  # a head never finished
    b"POST /v1/declarations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # body
    b"POST /v1/audit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{",
    b"",  # says nothing at all
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",  # answered, then idle on keep-alive
]


@pytest.mark.asyncio
async def test_slow_clients_of_the_coordinator_are_cut_off_and_others_served(
        tmp_path: Path) -> None:
    async with coordinator(tmp_path, idle=0.5, body=0.5) as where:
        conns = []
        for data in STALLS * 6:
            reader, writer = await asyncio.open_connection(*where)
            writer.write(data)
            await writer.drain()
            conns.append((reader, writer))
        try:
            url = f"http://{where[0]}:{where[1]}/v1/status"
            # Served while they are all open.
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                assert r.status == 200
            t0 = time.monotonic()
            results = await asyncio.gather(*(closed_within(r, 10.0) for r, _ in conns))
            assert all(results) and time.monotonic() - t0 < 10.0
        finally:
            for _, writer in conns:
                writer.close()


def test_the_coordinator_keeps_no_stalled_connection_by_default() -> None:
    """The defaults bound a stalled connection (no timeout: it stayed open for ever)."""
    assert 0 < IDLE_SECONDS <= 60 and 0 < BODY_SECONDS <= 60


# --- every node endpoint, flooded without credentials --------------------------------------


def make_host(w: World, kind: str = "wlan_coverage") -> Host:
    host = Host(w.host, kind=kind, location=0, coordinator_key=w.coord.public_key)
    host.open_epoch(epoch=w.epoch, included=w.included, opened=10 * MICRO, now=NOW)
    return host


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/v1/access", "/v1/resolve",
                                  "/v1/probe/0/" + "ab" * 16, "/v1/status"])
async def test_a_flood_of_any_endpoint_stores_nothing_and_the_host_still_serves(
        path: str) -> None:
    w = World()
    host = make_host(w)
    forged = w.request(w.alice, signer=w.mallory)  # a valid credential, a wrong signer
    bodies = [b"{", forged, b"", b"\xff" * 100,
              b'{"session":"' + b"00" * 16 + b'","host_id":"' + w.host.node_id.encode()
              + b'","counter":1,"amount":1,"mac":"' + b"00" * 32 + b'"}']
    app = make_node_app(host, clock=lambda: NOW)
    node_runner, endpoint = await start_site(app, port=0)
    try:
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as s:

            async def one(i: int) -> int:
                if path.startswith(("/v1/probe", "/v1/status")):
                    async with s.get(f"http://{endpoint}{path}") as r:
                        await r.read()
                        return r.status
                async with s.post(f"http://{endpoint}{path}",
                                  data=bodies[i % len(bodies)]) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(1_000)))
            assert all(st < 500 for st in statuses)
            assert len(host.verifier.replays) == 0 and host.resource.granted_total == 0
            assert len(host.verifier.sessions) == 0
            async with s.post(f"http://{endpoint}/v1/access", data=w.request(w.alice)) as r:
                assert r.status == 200
            nonce = "5a" * 16
            async with s.get(f"http://{endpoint}/v1/probe/{w.epoch}/{nonce}") as r:
                check_probe_answer(await r.read(), host_key=w.host.public_key, epoch=w.epoch,
                                   nonce=nonce)
    finally:
        await node_runner.cleanup()
