"""Flooding, more instances (issue 11 item 5): slow clients at the coordinator (a head
never finished, a body trickled, a connection that says nothing) are timed out as at a
host, and honest nodes are answered meanwhile; unauthenticated floods of every node
endpoint store nothing and the host keeps granting and answering probes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers.coordinator import (
    COORDINATOR,
    FakeClock,
    Harness,
    audit_report,
    commitment,
    config,
    declaration,
    flip_signature,
    forge_payload,
    node,
    raw,
    register_all,
    relabel,
    runner,
    served_on_socket,
)
from helpers.node import NOW, World
from helpers.rawhttp import closed_within

from coordinator.config import BODY_SECONDS, IDLE_SECONDS
from coordinator.service import make_app as make_coordinator_app
from coordinator.store import Store
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


# --- every coordinator endpoint, flooded with what no registered node signed ---------------


@pytest.mark.asyncio
async def test_a_flood_of_every_coordinator_endpoint_changes_nothing(tmp_path: Path) -> None:
    """Unsigned, forged, weak-key and outsider-signed bodies at every POST endpoint are
    refused with an error body and change no state; an honest node is served after."""
    store = Store(tmp_path / "coord.db")
    clock = FakeClock()
    app = make_coordinator_app(config(), store=store, identity=COORDINATOR, clock=clock,
                               runner=runner())
    people = [node(i) for i in range(3)]
    outsider = node(9)  # never registered
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            h = Harness(client=client, store=store, clock=clock)
            await register_all(h, people[:2])
            await h.ok("/v1/admin/open", admin=True)
            before = await h.fingerprint()
            weak = forge_payload(outsider, "registration", {
                "public_key": "01" + "00" * 31, "epoch": 0, "home_location": 0,
                "capacity": 1, "kind": "wlan_channels"})
            junk = [b"", b"{", b"\xff" * 64, b"[]" * 1000, weak,
                    flip_signature(raw(people[0], declaration(people[0]))),
                    raw(outsider, declaration(outsider)),
                    raw(outsider, commitment(outsider, amount=1)),
                    raw(outsider, audit_report(outsider, [])),
                    relabel(raw(people[0], declaration(people[0])), "commitment")]
            paths = ["/v1/register", "/v1/declarations", "/v1/commitments", "/v1/audit",
                     "/v1/complaints", "/v1/admin/open", "/v1/admin/close",
                     "/v1/admin/probe"]

            async def one(i: int) -> tuple[int, Any]:
                return await h.post(paths[i % len(paths)], junk[i % len(junk)])

            answers = await asyncio.gather(*(one(i) for i in range(400)))
            assert all(400 <= st < 500 and set(body) == {"code", "message"}
                       for st, body in answers), {st for st, _ in answers}
            assert await h.fingerprint() == before
            data = await h.ok("/v1/declarations", raw(people[1], declaration(people[1])))
            assert data["accepted"] == 1
    finally:
        store.close()
