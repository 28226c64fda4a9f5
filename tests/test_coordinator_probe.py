"""Coordinator probes: the pure decision, storage, and silent hosts found over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from helpers.coordinator import (
    ADMIN_TOKEN,
    COORDINATOR,
    EPOCH_SECONDS,
    T0,
    FakeClock,
    commitment,
    declaration,
    market,
    node,
    raw,
    registration,
    runner,
)
from helpers.memnet import MemoryNet

from coordinator.config import CoordinatorConfig
from coordinator.enforcement import UNREACHABLE, Exclusion, find_free_riders
from coordinator.probe import (
    PROBE_CONCURRENCY,
    ProbeResult,
    Target,
    probe_host,
    probe_round,
    round_times,
    targets,
    unanswered,
)
from coordinator.service import COORDINATOR as APP_KEY
from coordinator.service import make_app
from coordinator.store import Store
from protocol import Allocation, Identity, make_probe_answer, open_envelope

A, B, C, D = (node(i) for i in range(4))
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def alloc(*members: tuple[str, int], epoch: int = 0) -> Allocation:
    members = tuple(sorted(members))
    return Allocation(epoch=epoch, mechanism="posted_fee", q=(1,),
                      included=tuple(m for m, _ in members),
                      contributions=tuple(c for _, c in members), expected_welfare=0)


def probe(who: str, answered: bool, *, epoch: int = 0, t: int = T0) -> ProbeResult:
    return ProbeResult(epoch=epoch, node_id=who, time=t, answered=answered)


# --- the pure part -----------------------------------------------------------------------


def test_targets_are_owing_hosts_with_or_without_an_endpoint() -> None:
    a = alloc((A.node_id, 5), (B.node_id, 0), (C.node_id, 7), (D.node_id, 3))
    regs = {A.node_id: registration(A, endpoint="127.0.0.1:1"),
            B.node_id: registration(B, endpoint="127.0.0.1:2"), C.node_id: registration(C)}
    assert targets(a, regs) == {
        A.node_id: Target(endpoint="127.0.0.1:1", public_key=A.public_key),
        C.node_id: Target(endpoint=None, public_key=C.public_key)}  # D is not registered


def test_unanswered_needs_a_probe_and_no_answer() -> None:
    probes = [probe("a", False), probe("a", True), probe("b", False), probe("b", False),
              probe("c", False, epoch=1), probe("d", True)]
    assert unanswered(0, probes) == {"b": 2}
    assert unanswered(1, probes) == {"c": 1}
    assert unanswered(2, probes) == {}


def test_round_times_are_spread_before_the_cut_off() -> None:
    assert round_times(100, 60, 3) == [115, 130, 145]
    assert round_times(100, 60, 0) == []
    assert all(100 < t < 160 for t in round_times(100, 60, 7))


def test_unreachable_host_is_a_free_rider_excluded_next_epoch() -> None:
    a = alloc((A.node_id, 5), (B.node_id, 5), (C.node_id, 0), (D.node_id, 5))
    commits = {A.node_id: 5, B.node_id: 5, D.node_id: 5}
    probes = [probe(A.node_id, False), probe(A.node_id, True),  # answered once: fine
              probe(B.node_id, False), probe(B.node_id, False),  # silent
              probe(C.node_id, False),  # owes nothing
              probe(D.node_id, False, epoch=1)]  # another epoch's probe
    found = find_free_riders(allocation=a, commitments=commits, evidence=(),
                             credential_windows={}, probes=probes)
    assert [(x.node_id, x.reason, x.detected_epoch, x.excluded_epoch) for x in found] == [
        (B.node_id, UNREACHABLE, 0, 1)]
    assert "2 coordinator probes" in found[0].detail
    # Never probed (probes off, no endpoint): this rule does not apply.
    assert find_free_riders(allocation=a, commitments=commits, evidence=(),
                            credential_windows={}) == []
    # Both rules at once: one exclusion per reason.
    both = find_free_riders(allocation=a, commitments={}, evidence=(), credential_windows={},
                            probes=[probe(B.node_id, False)])
    assert {(x.node_id, x.reason) for x in both if x.node_id == B.node_id} == {
        (B.node_id, "no_commitment"), (B.node_id, UNREACHABLE)}
    Exclusion(node_id="x", excluded_epoch=1, detected_epoch=0, reason=UNREACHABLE)


def test_probe_results_are_durable(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    store.record_probes([probe("a", False, t=T0 + 1), probe("b", True, t=T0 + 2),
                         probe("a", True, epoch=1)])
    store.record_probes([])
    store.close()
    store = Store(tmp_path / "c.db")
    try:
        assert store.probes(0) == [probe("a", False, t=T0 + 1), probe("b", True, t=T0 + 2)]
        assert store.probes(1) == [probe("a", True, epoch=1)]
        assert store.probes(2) == []
    finally:
        store.close()


# --- over HTTP ---------------------------------------------------------------------------


def prober(who: Identity, *, nonce: str | None = None, epoch: int | None = None,
           status: int = 200) -> web.Application:
    """An endpoint answering probes as ``who`` (optionally over another nonce or epoch)."""

    async def answer(request: web.Request) -> web.Response:
        env = make_probe_answer(who, epoch=epoch if epoch is not None else
                                int(request.match_info["epoch"]),
                                nonce=nonce or request.match_info["nonce"])
        return web.Response(body=env.to_bytes(), status=status)

    app = web.Application()
    app.router.add_get("/v1/probe/{epoch}/{nonce}", answer)
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    site_runner = web.AppRunner(app)
    await site_runner.setup()
    await web.TCPSite(site_runner, "127.0.0.1", 0).start()
    try:
        yield f"127.0.0.1:{site_runner.addresses[0][1]}"
    finally:
        await site_runner.cleanup()


@contextlib.asynccontextmanager
async def hosts() -> AsyncIterator[dict[str, str]]:
    """Endpoints: A's own (answers probes signed by A), one that accepts and never
    answers, one with nothing listening."""
    async with serving(prober(A)) as good, _silent_and_dead() as (silent, dead):
        yield {"good": good, "silent": silent, "dead": dead}


@contextlib.asynccontextmanager
async def _silent_and_dead() -> AsyncIterator[tuple[str, str]]:

    async def hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    silent = await asyncio.start_server(hole, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    try:
        yield f"127.0.0.1:{silent_port}", f"127.0.0.1:{dead_port}"
    finally:
        silent.close()


def config(**kw: Any) -> CoordinatorConfig:
    base: dict[str, Any] = {"market": market(), "mechanism": "posted_fee",
                            "epoch_seconds": EPOCH_SECONDS, "pause_seconds": 5,
                            "credential_grace": 30, "auto_schedule": False,
                            "admin_token": ADMIN_TOKEN, "probe_attempts": 2,
                            "probe_timeout": 0.3}
    base.update(kw)
    return CoordinatorConfig(**base)


async def post(client: TestClient[Any, Any], path: str, body: bytes = b"",
               admin: bool = False) -> Any:
    resp = await client.post(path, data=body, headers=ADMIN if admin else {})
    data = await resp.json(content_type=None)
    assert resp.status == 200, data
    return data


async def close_epoch_zero(client: TestClient[Any, Any], clock: FakeClock,
                           endpoints: dict[str, str | None]) -> dict[str, int]:
    """Register A (its own endpoint), B (A's endpoint: borrowed), C (silent), D (no
    endpoint); all declare and commit."""
    people = [(A, endpoints["good"]), (B, endpoints["good"]), (C, endpoints["silent"]),
              (D, None)]
    for p, ep in people:
        await post(client, "/v1/register", raw(p, registration(p, endpoint=ep)))
    await post(client, "/v1/admin/open", admin=True)
    clock.now += 1
    for p, _ in people:
        await post(client, "/v1/declarations", raw(p, declaration(p, theta=950_000)))
    clock.now = T0 + EPOCH_SECONDS
    await post(client, "/v1/admin/close", admin=True)
    resp = await client.get("/v1/allocation/0")
    _, a = open_envelope(await resp.read(), Allocation, trusted={COORDINATOR.public_key})
    owed = dict(zip(a.included, a.contributions, strict=True))
    assert all(owed.get(p.node_id, 0) > 0 for p, _ in people)
    for p, _ in people:
        await post(client, "/v1/commitments", raw(p, commitment(p, amount=owed[p.node_id])))
    return owed


async def next_epoch_excluded(client: TestClient[Any, Any],
                              clock: FakeClock) -> set[tuple[str, str]]:
    clock.now += 10
    await post(client, "/v1/admin/open", admin=True)
    for p in (A, B, C, D):
        await post(client, "/v1/declarations", raw(p, declaration(p, epoch=1, theta=950_000)))
    clock.now += EPOCH_SECONDS
    closed = await post(client, "/v1/admin/close", admin=True)
    resp = await client.get("/v1/status")
    status = json.loads(await resp.read())
    got = {(x["node_id"], x["reason"]) for x in status["excluded"]
           if x["detected_epoch"] == 0 and x["excluded_epoch"] == 1}
    assert set(closed["excluded"]) == {n for n, _ in got}
    return got


@pytest.mark.asyncio
async def test_admin_probe_finds_silent_and_dead_hosts(tmp_path: Path) -> None:
    store, clock = Store(tmp_path / "c.db"), FakeClock()
    app = make_app(config(), store=store, identity=COORDINATOR, clock=clock, runner=runner())
    try:
        async with hosts() as eps, TestClient(TestServer(app, host="127.0.0.1", port=0)) as cl:
            before = await post(cl, "/v1/admin/probe", admin=True)  # nothing closed yet
            assert before == {"epoch": None, "enabled": True, "probes": [], "unanswered": []}
            await close_epoch_zero(cl, clock, eps)
            t0 = time.monotonic()
            res = await post(cl, "/v1/admin/probe", admin=True)
            assert time.monotonic() - t0 < 10
            assert res["epoch"] == 0 and res["enabled"] is True
            assert res["unanswered"] == sorted([B.node_id, C.node_id, D.node_id])
            per: dict[str, list[bool]] = {}
            for p in res["probes"]:
                per.setdefault(p["node_id"], []).append(p["answered"])
            assert per == {A.node_id: [True], B.node_id: [False, False],
                           C.node_id: [False, False], D.node_id: [False, False]}
            assert len(store.probes(0)) == 7
            resp = await cl.post("/v1/admin/probe")
            assert resp.status == 401
            got = await next_epoch_excluded(cl, clock)
            # B answered through A's endpoint only with A's signature: not B's answer.
            assert got == {(B.node_id, UNREACHABLE), (C.node_id, UNREACHABLE),
                           (D.node_id, UNREACHABLE)}
            resp = await cl.get("/v1/allocation/1")
            _, a1 = open_envelope(await resp.read(), Allocation,
                                  trusted={COORDINATOR.public_key})
            assert not {B.node_id, C.node_id, D.node_id} & set(a1.included)
            assert A.node_id in a1.included
    finally:
        store.close()


@pytest.mark.asyncio
async def test_probes_disabled_detect_nothing(tmp_path: Path) -> None:
    store, clock = Store(tmp_path / "c.db"), FakeClock()
    app = make_app(config(probe_attempts=0), store=store, identity=COORDINATOR, clock=clock,
                   runner=runner())
    try:
        async with hosts() as eps, TestClient(TestServer(app, host="127.0.0.1", port=0)) as cl:
            await close_epoch_zero(cl, clock, eps)
            res = await post(cl, "/v1/admin/probe", admin=True)
            assert res == {"epoch": 0, "enabled": False, "probes": [], "unanswered": []}
            assert await next_epoch_excluded(cl, clock) == set()
    finally:
        store.close()


@pytest.mark.asyncio
async def test_scheduled_rounds_probe_until_an_answer(tmp_path: Path) -> None:
    store, clock = Store(tmp_path / "c.db"), FakeClock()
    app = make_app(config(probe_attempts=3), store=store, identity=COORDINATOR, clock=clock,
                   runner=runner())
    try:
        async with hosts() as eps, TestClient(TestServer(app, host="127.0.0.1", port=0)) as cl:
            await close_epoch_zero(cl, clock, eps)
            coordinator = app[APP_KEY]
            task = asyncio.create_task(coordinator.probe_schedule())
            try:
                clock.now += 5 + EPOCH_SECONDS - 1  # every round is due, the cut-off is not
                deadline = time.monotonic() + 20
                while len(store.probes(0)) < 10 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            per: dict[str, list[bool]] = {}
            for p in store.probes(0):
                per.setdefault(p.node_id, []).append(p.answered)
            # One attempt per host per round; A answered in the first and is not asked again.
            assert per == {A.node_id: [True], B.node_id: [False] * 3, C.node_id: [False] * 3,
                           D.node_id: [False] * 3}
            got = await next_epoch_excluded(cl, clock)
            assert got == {(B.node_id, UNREACHABLE), (C.node_id, UNREACHABLE),
                           (D.node_id, UNREACHABLE)}
    finally:
        store.close()


def test_config_bounds() -> None:
    with pytest.raises(ValueError, match="probe_attempts"):
        config(probe_attempts=-1)
    with pytest.raises(ValueError, match="probe_timeout"):
        config(probe_timeout=0)


@pytest.mark.asyncio
async def test_only_the_hosts_own_signature_over_the_fresh_nonce_answers_a_probe() -> None:
    target = Target(endpoint=None, public_key=A.public_key)
    async with aiohttp.ClientSession() as session:
        assert not await probe_host(session, target, epoch=3, timeout=2.0)  # no endpoint
        cases = [
            (prober(A), True),
            (prober(B), False),  # another node's endpoint answers with its own key
            (prober(A, nonce="ab" * 16), False),  # a replayed answer (another nonce)
            (prober(A, epoch=2), False),  # another epoch
            (prober(A, status=500), False),
        ]
        for app, expected in cases:
            async with serving(app) as ep:
                target = Target(endpoint=ep, public_key=A.public_key)
                assert await probe_host(session, target, epoch=3, timeout=2.0) is expected

        async def unsigned(_: web.Request) -> web.Response:
            return web.json_response({"challenge": "00" * 16, "expires": T0})

        plain = web.Application()
        plain.router.add_get("/v1/probe/{epoch}/{nonce}", unsigned)
        async with serving(plain) as ep:
            target = Target(endpoint=ep, public_key=A.public_key)
            assert not await probe_host(session, target, epoch=3, timeout=2.0)
        async with _silent_and_dead() as (silent, dead):
            for ep in (silent, dead):
                target = Target(endpoint=ep, public_key=A.public_key)
                assert not await probe_host(session, target, epoch=3, timeout=0.3)


@pytest.mark.asyncio
async def test_undecodable_admin_header_is_unauthorized_not_a_crash(tmp_path: Path) -> None:
    store, clock = Store(tmp_path / "c.db"), FakeClock()
    app = make_app(config(), store=store, identity=COORDINATOR, clock=clock, runner=runner())
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as cl:
            reader, writer = await asyncio.open_connection("127.0.0.1", cl.port)
            writer.write(b"POST /v1/admin/open HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                         b"Authorization: Bearer t\xe9\xff\r\nConnection: close\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            assert b'"unauthorized"' in answer
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_round_of_many_hosts_keeps_a_bounded_number_in_flight(net: MemoryNet) -> None:
    """Thousands of hosts: probes queue before their timeout starts, so none is found
    unanswered because the round's own pool of connections was busy."""
    hosts = [node(10 + i) for i in range(PROBE_CONCURRENCY + 7)]
    in_flight = peak = 0
    full = asyncio.Event()

    def app_of(who: Identity) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight >= PROBE_CONCURRENCY:
                full.set()
            await asyncio.wait_for(full.wait(), 30)  # until the first turns are all in
            in_flight -= 1
            env = make_probe_answer(who, epoch=int(request.match_info["epoch"]),
                                    nonce=request.match_info["nonce"])
            return web.Response(body=env.to_bytes())

        app = web.Application()
        app.router.add_get("/v1/probe/{epoch}/{nonce}", answer)
        return app

    targets_ = {h.node_id: Target(endpoint=await net.serve(app_of(h)), public_key=h.public_key)
                for h in hosts}
    async with net.session() as session:
        results = await probe_round(3, targets_, clock=lambda: T0, timeout=30.0, attempts=1,
                                    session=session)
    assert len(results) == len(hosts) and all(r.answered for r in results)
    assert peak == PROBE_CONCURRENCY
