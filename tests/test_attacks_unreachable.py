"""Hosts that cannot be reached, more endpoint forms (issue 11 item 3): a probe (and a
relayed complaint) is answered only by the host's own server, with a ``200`` signed by
its key over the fresh nonce. A redirect (to anywhere, even the host's real server), the
coordinator's own endpoint, an unroutable address, an unresolvable name, another node's
server and an oversized answer are all unanswered, within the probe's timeout, and the
coordinator never follows a host's redirect elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from helpers.coordinator import COORDINATOR, FakeClock, config, runner
from helpers.node import NOW, World

from coordinator.probe import Target, probe_host
from coordinator.service import make_app as make_coordinator_app
from coordinator.store import Store
from node.host import Host
from node.service import make_app as make_node_app
from node.service import start_site
from protocol import MICRO


@contextlib.asynccontextmanager
async def real_host(w: World) -> AsyncIterator[str]:
    host = Host(w.host, kind="wlan_coverage", location=0, coordinator_key=w.coord.public_key)
    host.open_epoch(epoch=w.epoch, included=w.included, opened=10 * MICRO, now=NOW)
    node_runner, endpoint = await start_site(make_node_app(host, clock=lambda: NOW), port=0)
    try:
        yield endpoint
    finally:
        await node_runner.cleanup()


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    app_runner = web.AppRunner(app, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{app_runner.addresses[0][1]}"
    finally:
        await app_runner.cleanup()


def redirector(to: str, status: int) -> web.Application:
    async def go(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": f"http://{to}{request.path}"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", go)
    return app


def canary() -> tuple[web.Application, list[str]]:
    hits: list[str] = []

    async def hit(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="internal")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hit)
    return app, hits


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_no_answer_and_is_never_followed(status: int) -> None:
    w = World()
    inner, hits = canary()
    async with real_host(w) as genuine, serving(inner) as internal, \
            aiohttp.ClientSession() as session:
        target = Target(endpoint=genuine, public_key=w.host.public_key)
        assert await probe_host(session, target, epoch=w.epoch, timeout=2.0)  # it answers
        for to in (genuine, internal):  # even to the host's own server: not a 200
            async with serving(redirector(to, status)) as ep:
                target = Target(endpoint=ep, public_key=w.host.public_key)
                assert not await probe_host(session, target, epoch=w.epoch, timeout=2.0)
        assert hits == []  # the coordinator fetched nothing it was pointed to


@pytest.mark.asyncio
async def test_the_coordinators_own_endpoint_is_no_answer(tmp_path: Path) -> None:
    w = World()
    store = Store(tmp_path / "c.db")
    app = make_coordinator_app(config(), store=store, identity=COORDINATOR, clock=FakeClock(),
                               runner=runner())
    try:
        async with serving(app) as ep, aiohttp.ClientSession() as session:
            for key in (w.host.public_key, COORDINATOR.public_key):
                target = Target(endpoint=ep, public_key=key)
                assert not await probe_host(session, target, epoch=w.epoch, timeout=2.0)
    finally:
        store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("endpoint", [
    "192.0.2.1:9",  # TEST-NET-1 (RFC 5737): routed nowhere
    "no-such-host.invalid:8080",  # RFC 6761: never resolves
    "127.0.0.1:1",  # nothing listens
])
async def test_unreachable_endpoints_are_no_answer_within_the_timeout(endpoint: str) -> None:
    w = World()
    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        target = Target(endpoint=endpoint, public_key=w.host.public_key)
        assert not await probe_host(session, target, epoch=w.epoch, timeout=0.5)
        assert time.monotonic() - t0 < 5.0


@pytest.mark.asyncio
async def test_another_nodes_server_and_an_endless_answer_are_no_answer() -> None:
    w = World()

    async def endless(_: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(_)
        with contextlib.suppress(ConnectionError):
            for _i in range(10_000):
                await resp.write(b"x" * 4096)
        return resp

    flood = web.Application()
    flood.router.add_get("/v1/probe/{epoch}/{nonce}", endless)
    async with real_host(w) as other, serving(flood) as ep, \
            aiohttp.ClientSession() as session:
        # The host registered the endpoint of another node's server (w.host's): a
        # different key is expected, so its genuine answer does not count.
        target = Target(endpoint=other, public_key=w.alice.public_key)
        assert not await probe_host(session, target, epoch=w.epoch, timeout=2.0)
        target = Target(endpoint=ep, public_key=w.host.public_key)
        assert not await asyncio.wait_for(
            probe_host(session, target, epoch=w.epoch, timeout=2.0), 10)
