"""The HTTP service end to end, and every bad input refused with its code and no change."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from helpers.coordinator import (
    ADMIN,
    COORDINATOR,
    EPOCH_SECONDS,
    T0,
    FakeClock,
    Harness,
    access_request,
    audit_report,
    commitment,
    config,
    decl_payload,
    declaration,
    envelope_obj,
    flip_signature,
    forge_payload,
    market,
    node,
    nonce,
    raw,
    refusal,
    register_all,
    registration,
    relabel,
    runner,
    served_on_socket,
)
from helpers.rawhttp import PARSER_ERRORS, exchange

from coordinator.service import COORDINATOR as APP_KEY
from coordinator.service import make_app
from coordinator.store import Store
from protocol import (
    Allocation,
    Credential,
    Envelope,
    EpochAnnouncement,
    Identity,
    Refusal,
    canonical,
    check_credential,
    open_envelope,
)
from protocol.envelope import envelope_size_limit
from protocol.messages import Declaration

A, B, C, D, U = (node(i) for i in range(5))  # U never registers
TRUSTED = {COORDINATOR.public_key}


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    store = Store(tmp_path / "coord.db")
    clock = FakeClock()
    app = make_app(config(), store=store, identity=COORDINATOR, clock=clock,
                   runner=runner())
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield Harness(client=client, store=store, clock=clock)
    store.close()


async def declare(h: Harness, who: Identity, *, epoch: int = 0, theta: int = 950_000) -> None:
    data = await h.ok("/v1/declarations", raw(who, declaration(who, epoch=epoch, theta=theta)))
    assert data == {"epoch": epoch, "node_id": who.node_id, "accepted": 1}


# --- the whole path ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_register_announce_declare_close_commit_audit_exclude(harness: Harness) -> None:
    h = harness
    host, lazy, rude, guest = A, B, C, D
    await register_all(h, [host, lazy, rude, guest])
    assert (await h.get("/v1/announcement"))[0] == 404
    assert (await h.ok("/v1/admin/open", admin=True))["epoch"] == 0
    status, body = await h.get("/v1/announcement")
    _, ann = open_envelope(body, EpochAnnouncement, trusted=TRUSTED)
    assert ann.epoch == 0 and ann.deadline == T0 + EPOCH_SECONDS and ann.fees

    h.clock.now += 1
    for p in (host, lazy, rude, guest):
        await declare(h, p)
    h.clock.now = T0 + EPOCH_SECONDS
    closed = await h.ok("/v1/admin/close", admin=True)
    assert closed["included"] == 4

    _, body = await h.get("/v1/allocation/0")
    _, alloc = open_envelope(body, Allocation, trusted=TRUSTED)
    assert set(alloc.included) == {p.node_id for p in (host, lazy, rude, guest)}
    _, body = await h.get(f"/v1/credential/0/{guest.node_id}")
    cred = check_credential(body, COORDINATOR.public_key, epoch=0, now=h.clock.now + 10)
    assert cred.node_id == guest.node_id and cred.location == 0
    _, body = await h.get("/v1/directory/0")
    directory = json.loads(body)
    assert [n["node_id"] for n in directory["nodes"]] == list(alloc.included)
    assert {n["endpoint"] for n in directory["nodes"]} == {f"127.0.0.1:{9000 + i}"
                                                          for i in range(4)}
    assert [n["contribution"] for n in directory["nodes"]] == list(alloc.contributions)

    owed = dict(zip(alloc.included, alloc.contributions, strict=True))
    for p in (host, rude, guest):
        c = commitment(p, amount=owed[p.node_id])
        assert await h.ok("/v1/commitments", raw(p, c)) == {"accepted": 1}
    t = h.clock.now + 5
    report = audit_report(guest, [refusal(rude, guest, reason="not_included", time=t)])
    assert await h.ok("/v1/audit", raw(guest, report)) == {"accepted": 1}

    h.clock.now += 10
    assert (await h.ok("/v1/admin/open", admin=True))["epoch"] == 1
    for p in (host, lazy, rude, guest):
        await declare(h, p, epoch=1)
    h.clock.now += EPOCH_SECONDS
    closed = await h.ok("/v1/admin/close", admin=True)
    assert sorted(closed["excluded"]) == sorted([lazy.node_id, rude.node_id])
    _, body = await h.get("/v1/allocation/1")
    _, alloc1 = open_envelope(body, Allocation, trusted=TRUSTED)
    assert set(alloc1.included) == {host.node_id, guest.node_id}
    status, body = await h.get(f"/v1/credential/1/{lazy.node_id}")
    assert status == 403 and json.loads(body)["code"] == "not_included"
    _, body = await h.get("/v1/status")
    excluded = {(x["node_id"], x["reason"], x["detected_epoch"], x["excluded_epoch"])
                for x in json.loads(body)["excluded"]}
    assert excluded == {(lazy.node_id, "no_commitment", 0, 1),
                        (rude.node_id, "unjustified_refusal", 0, 1)}


@pytest.mark.asyncio
async def test_allocations_are_byte_identical_across_coordinators(tmp_path: Path) -> None:
    bodies = []
    for name in ("one", "two"):
        store = Store(tmp_path / f"{name}.db")
        clock = FakeClock()
        app = make_app(config(), store=store, identity=COORDINATOR, clock=clock,
                       runner=runner())
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            h = Harness(client=client, store=store, clock=clock)
            people = [A, B, C] if name == "one" else [C, A, B]
            await register_all(h, people)
            await h.ok("/v1/admin/open", admin=True)
            for i, p in enumerate(people):
                await declare(h, p, theta=700_000 + 100_000 * sorted(people, key=id).index(p))
                h.clock.now += i
            await h.ok("/v1/admin/close", admin=True)
            bodies.append((await h.get("/v1/allocation/0"))[1])
        store.close()
    assert bodies[0] == bodies[1]


@pytest.mark.asyncio
async def test_auto_schedule_closes_at_the_deadline_and_opens_the_next(tmp_path: Path) -> None:
    store = Store(tmp_path / "auto.db")
    app = make_app(config(auto_schedule=True, epoch_seconds=1, pause_seconds=0,
                          rebuttal_seconds=0),
                   store=store, identity=COORDINATOR, runner=runner())
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        core = app[APP_KEY].core
        async with asyncio.timeout(15):
            while (core.epoch or 0) < 2:
                await asyncio.sleep(0.05)
        assert store.allocation(0) is not None and store.allocation(1) is not None
        resp = await client.get("/v1/status")
        assert (await resp.json())["epoch"] >= 2
    store.close()


# --- bad input: every case refused with its code, and nothing changes -----------------------

DECL_LIMIT = envelope_size_limit(Declaration.MAX_PAYLOAD_BYTES)


def with_field(body: bytes, key: str, value: Any) -> bytes:
    obj = envelope_obj(body)
    obj[key] = value
    return json.dumps(obj).encode()


def without_field(body: bytes, key: str) -> bytes:
    obj = envelope_obj(body)
    del obj[key]
    return json.dumps(obj).encode()


B_DECL = raw(B, declaration(B, theta=500_000))
A_FIRST = raw(A, declaration(A, n=1))

Case = tuple[str, str, Callable[[], bytes], dict[str, str] | None, int, str]

OPEN_CASES: list[Case] = [
    ("not json", "/v1/declarations", lambda: b"{not json", None, 400, "malformed"),
    ("json array", "/v1/declarations", lambda: b"[]", None, 400, "wrong_type"),
    ("oversized", "/v1/declarations", lambda: b" " * (DECL_LIMIT + 1), None, 413, "too_large"),
    ("unknown envelope field", "/v1/declarations", lambda: with_field(B_DECL, "extra", "x"),
     None, 400, "unknown_field"),
    ("unknown payload field", "/v1/declarations",
     lambda: forge_payload(B, "declaration", decl_payload(B, colour="red")), None, 400,
     "unknown_field"),
    ("wrong type", "/v1/declarations",
     lambda: forge_payload(B, "declaration", decl_payload(B, theta="0.5")), None, 400,
     "wrong_type"),
    ("boolean for integer", "/v1/declarations",
     lambda: forge_payload(B, "declaration", decl_payload(B, theta=True)), None, 400,
     "wrong_type"),
    ("theta out of range", "/v1/declarations",
     lambda: forge_payload(B, "declaration", decl_payload(B, theta=1_000_001)), None, 400,
     "out_of_range"),
    ("negative epoch", "/v1/declarations",
     lambda: forge_payload(B, "declaration", decl_payload(B, epoch=-1)), None, 400,
     "out_of_range"),
    ("missing payload field", "/v1/declarations",
     lambda: forge_payload(B, "declaration",
                           {k: v for k, v in decl_payload(B).items() if k != "nonce"}),
     None, 400, "missing_field"),
    ("missing signature", "/v1/declarations", lambda: without_field(B_DECL, "signature"),
     None, 400, "missing_field"),
    ("forged signature", "/v1/declarations", lambda: flip_signature(B_DECL), None, 401,
     "bad_signature"),
    ("signed by another node", "/v1/declarations",
     lambda: forge_payload(B, "declaration", decl_payload(A)), None, 401, "wrong_signer"),
    ("key never registered", "/v1/declarations", lambda: raw(U, declaration(U)), None, 403,
     "unknown_key"),
    ("declaration posted as registration", "/v1/register", lambda: B_DECL, None, 400,
     "unexpected_message"),
    ("registration posted as declaration", "/v1/declarations",
     lambda: raw(U, registration(U)), None, 400, "unexpected_message"),
    ("declaration relabelled as commitment", "/v1/commitments",
     lambda: relabel(B_DECL, "commitment"), None, 401, "bad_signature"),
    ("replayed declaration", "/v1/declarations", lambda: A_FIRST, None, 409, "replay"),
    ("reused nonce", "/v1/declarations", lambda: raw(B, declaration(B, n=1)), None, 409,
     "replay"),
    ("second declaration", "/v1/declarations", lambda: raw(A, declaration(A, n=2)), None, 409,
     "duplicate_declaration"),
    ("future epoch", "/v1/declarations", lambda: raw(B, declaration(B, epoch=1)), None, 409,
     "future_epoch"),
    ("location outside the market", "/v1/register",
     lambda: raw(U, registration(U, location=3)), None, 400, "out_of_range"),
    ("uppercase key", "/v1/register",
     lambda: forge_payload(U, "registration", {
         "public_key": U.public_key.upper(), "epoch": 0, "home_location": 0,
         "capacity": 1, "kind": "files"}), None, 400, "out_of_range"),
    ("older registration", "/v1/register", lambda: raw(A, registration(A, epoch=0)), None, 409,
     "stale_epoch"),
    ("registration dated in the future", "/v1/register",
     lambda: raw(U, registration(U, issued=T0 + 10**6)), None, 403, "not_yet_valid"),
    ("registration for a future epoch", "/v1/register",
     lambda: raw(U, registration(U, epoch=5)), None, 409, "future_epoch"),
    ("unknown kind", "/v1/register",
     lambda: forge_payload(U, "registration", {
         "public_key": U.public_key, "epoch": 0, "home_location": 0, "capacity": 1,
         "kind": "gold"}), None, 400, "out_of_range"),
    ("commitment before any close", "/v1/commitments",
     lambda: raw(A, commitment(A, amount=1)), None, 409, "future_epoch"),
    ("commitment by a stranger", "/v1/commitments", lambda: raw(U, commitment(U, amount=1)),
     None, 403, "unknown_key"),
    ("audit before any close", "/v1/audit", lambda: raw(A, audit_report(A, [])), None, 409,
     "future_epoch"),
    ("admin without token", "/v1/admin/close", lambda: b"", None, 401, "unauthorized"),
    ("admin with wrong token", "/v1/admin/open", lambda: b"",
     {"Authorization": "Bearer wrong-token-000"}, 401, "unauthorized"),
    ("open while open", "/v1/admin/open", lambda: b"", ADMIN, 409, "wrong_phase"),
    ("unknown path", "/v1/nothing", lambda: b"", None, 404, "not_found"),
]


async def open_epoch_with_a_declared(h: Harness) -> None:
    for who, issued in ((A, T0), (B, None), (C, None)):
        await h.ok("/v1/register", raw(who, registration(who, epoch=0, issued=issued)))
    await h.ok("/v1/admin/open", admin=True)
    h.clock.now += 1
    await h.ok("/v1/declarations", A_FIRST)


@pytest.mark.asyncio
async def test_bad_input_while_open_is_refused_without_change(harness: Harness) -> None:
    h = harness
    await open_epoch_with_a_declared(h)
    for name, path, body, headers, status, code in OPEN_CASES:
        before = await h.fingerprint()
        got_status, got = await h.post(path, body(), headers)
        assert (got_status, got["code"]) == (status, code), name
        assert set(got) == {"code", "message"}
        assert await h.fingerprint() == before, name


@pytest.mark.asyncio
async def test_oversized_chunked_body_is_refused(harness: Harness) -> None:
    h = harness
    await open_epoch_with_a_declared(h)
    before = await h.fingerprint()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(DECL_LIMIT // 1024 + 2):
            yield b" " * 1024

    resp = await h.client.post("/v1/declarations", data=chunks())
    assert resp.status == 413 and (await resp.json())["code"] == "too_large"
    assert await h.fingerprint() == before


@pytest.mark.asyncio
async def test_bad_input_after_close_is_refused_without_change(harness: Harness) -> None:
    h = harness
    await open_epoch_with_a_declared(h)
    h.clock.now = T0 + EPOCH_SECONDS
    await h.ok("/v1/admin/close", admin=True)
    t = h.clock.now + 1
    unregistered_host = refusal(U, A, reason="not_included", time=t)
    impostor = Envelope.seal(B, "refusal", canonical(_refusal_msg(C, A, t).to_payload()))
    cases: list[Case] = [
        ("declaration after close", "/v1/declarations", lambda: raw(B, declaration(B)), None,
         409, "epoch_closed"),
        ("commitment by a non-included node", "/v1/commitments",
         lambda: raw(B, commitment(B, amount=1)), None, 403, "not_included"),
        ("commitment for a future epoch", "/v1/commitments",
         lambda: raw(A, commitment(A, epoch=1, amount=1)), None, 409, "future_epoch"),
        ("audit by a stranger", "/v1/audit", lambda: raw(U, audit_report(U, [])), None, 403,
         "unknown_key"),
        ("evidence by an unregistered host", "/v1/audit",
         lambda: raw(A, audit_report(A, [unregistered_host])), None, 403, "unknown_key"),
        ("evidence for another epoch", "/v1/audit",
         lambda: raw(A, audit_report(A, [refusal(B, A, epoch=1, reason="revoked", time=t)])),
         None, 409, "future_epoch"),
        ("evidence signed by another host", "/v1/audit",
         lambda: raw(A, audit_report(A, [impostor])), None, 401, "wrong_signer"),
        ("evidence of a non-evidence type", "/v1/audit",
         lambda: forge_payload(A, "audit_report", {
             "epoch": 0, "reporter_id": A.node_id,
             "evidence": [envelope_obj(raw(B, declaration(B)))]}), None, 400,
         "unexpected_message"),
        ("audit for a future epoch", "/v1/audit", lambda: raw(A, audit_report(A, [], epoch=1)),
         None, 409, "future_epoch"),
        ("close while closed", "/v1/admin/close", lambda: b"", ADMIN, 409, "wrong_phase"),
    ]
    for name, path, body, headers, status, code in cases:
        before = await h.fingerprint()
        got_status, got = await h.post(path, body(), headers)
        assert (got_status, got["code"]) == (status, code), name
        assert await h.fingerprint() == before, name
    for path, status, code in (
        (f"/v1/credential/0/{B.node_id}", 403, "not_included"),
        ("/v1/allocation/1", 404, "unknown_epoch"),
        ("/v1/allocation/01", 400, "out_of_range"),
        ("/v1/directory/7", 404, "unknown_epoch"),
        (f"/v1/credential/1/{A.node_id}", 404, "unknown_epoch"),
        ("/v1/credential/0/XYZ", 400, "out_of_range"),
    ):
        got_status, got = await h.get(path)
        assert (got_status, json.loads(got)["code"]) == (status, code), path
    # the next epoch: epoch 0 declarations are now stale
    await h.ok("/v1/admin/open", admin=True)
    before = await h.fingerprint()
    got_status, got = await h.post("/v1/declarations", raw(B, declaration(B, epoch=0)))
    assert (got_status, got["code"]) == (409, "stale_epoch")
    assert await h.fingerprint() == before


def _refusal_msg(host: Identity, requester: Identity, t: int) -> Refusal:
    req = access_request(host, requester, n=77, issued=t, amount=1)
    return Refusal(epoch=0, host_id=host.node_id, requester_id=requester.node_id,
                   nonce=nonce(77), reason="not_included", time=t, request=req)


@pytest.mark.asyncio
async def test_registration_is_idempotent_and_newer_ones_replace(harness: Harness) -> None:
    h = harness
    body = raw(A, registration(A, epoch=0))
    await h.ok("/v1/register", body)
    before = await h.fingerprint()
    await h.ok("/v1/register", body)
    assert await h.fingerprint() == before
    await h.ok("/v1/register", raw(A, registration(A, epoch=0, location=0, capacity=7,
                                                   issued=T0)))
    assert h.client.app is not None
    assert h.client.app[APP_KEY].core.nodes[A.node_id].registration.capacity == 7


@pytest.mark.asyncio
async def test_credentials_verify_for_the_holder(harness: Harness) -> None:
    h = harness
    await open_epoch_with_a_declared(h)
    h.clock.now = T0 + EPOCH_SECONDS
    await h.ok("/v1/admin/close", admin=True)
    _, body = await h.get(f"/v1/credential/0/{A.node_id}")
    _, cred = open_envelope(body, Credential, trusted=TRUSTED)
    assert cred.public_key == A.public_key and cred.not_before == T0 + EPOCH_SECONDS


# --- errors keep their shape below the application (coordinator/http.py) ---------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest_asyncio.fixture
async def raw_site(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """The app behind the coordinator's own runner (as the CLI serves it), on a socket."""
    async with serve_raw(tmp_path) as where:
        yield where


@contextlib.asynccontextmanager
async def serve_raw(tmp_path: Path, *, entered: asyncio.Event | None = None,
                    ) -> AsyncIterator[tuple[str, int]]:
    """:func:`raw_site`'s server; ``entered`` is set when a request reaches the app."""
    middlewares = []
    if entered is not None:
        flag = entered

        @web.middleware
        async def note_entry(request: web.Request, handler: Handler) -> web.StreamResponse:
            flag.set()
            return await handler(request)

        middlewares.append(note_entry)
    async with served_on_socket(tmp_path, middlewares=middlewares) as where:
        yield where


@pytest.mark.asyncio
@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    *((r.replace(b"PATH", b"/v1/declarations"), st, c) for r, st, c in PARSER_ERRORS),
    (b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
])
async def test_http_level_errors_answer_in_the_protocols_error_shape(
        raw_site: tuple[str, int], request_bytes: bytes, status: int, code: str,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        got_status, body, content_type = await exchange(raw_site, request_bytes)
    assert (got_status, body["code"]) == (status, code)
    assert set(body) == {"code", "message"} and content_type.startswith("application/json")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.asyncio
async def test_a_client_leaving_mid_body_is_not_an_internal_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entered = asyncio.Event()
    with caplog.at_level(logging.DEBUG):
        async with serve_raw(tmp_path, entered=entered) as where:
            _, writer = await asyncio.open_connection(*where)
            writer.write(b"POST /v1/declarations HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"a\"")
            await writer.drain()
            async with asyncio.timeout(10):
                await entered.wait()  # the request is in the app, its body still unread
            writer.close()
            await writer.wait_closed()
            # The server is still fine, and said nothing alarming about the one that left.
            status, body, _ = await exchange(
                where, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and body["phase"] == "idle"
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


# --- the directory, per location, built once per epoch --------------------------------------


@pytest.mark.asyncio
async def test_directory_per_location_is_built_once_per_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "coord.db")
    clock = FakeClock()
    app = make_app(config(market=market("two")), store=store, identity=COORDINATOR,
                   clock=clock, runner=runner("two"))
    queries: list[int] = []
    real = store.directory

    def counted(epoch: int) -> list[dict[str, Any]]:
        queries.append(epoch)
        return real(epoch)

    monkeypatch.setattr(store, "directory", counted)
    people = [node(i) for i in range(4)]
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        h = Harness(client=client, store=store, clock=clock)
        for i, p in enumerate(people):
            reg = registration(p, location=i % 2, endpoint=f"127.0.0.1:{9100 + i}")
            await h.ok("/v1/register", raw(p, reg))
        await h.ok("/v1/admin/open", admin=True)
        clock.now += 1
        for p in people:
            await h.ok("/v1/declarations", raw(p, declaration(p, theta=950_000)))
        clock.now += EPOCH_SECONDS
        await h.ok("/v1/admin/close", admin=True)
        _, whole = await h.get("/v1/directory/0")
        everyone = json.loads(whole)["nodes"]
        assert len(everyone) == 4
        for loc in (0, 1):
            status, body = await h.get(f"/v1/directory/0/{loc}")
            answer = json.loads(body)
            assert status == 200 and answer["epoch"] == 0 and answer["location"] == loc
            assert answer["nodes"] == [n for n in everyone if n["location"] == loc]
        assert queries == [0]  # one store query for every answer of the epoch
        # An included host moves: the next answers show its new endpoint.
        moved = registration(people[0], location=0, endpoint="127.0.0.1:9999", issued=T0 + 70)
        await h.ok("/v1/register", raw(people[0], moved))
        _, body = await h.get("/v1/directory/0/0")
        assert "127.0.0.1:9999" in {n["endpoint"] for n in json.loads(body)["nodes"]}
        assert queries == [0, 0]
        for path, status, code in (("/v1/directory/0/2", 400, "out_of_range"),
                                   ("/v1/directory/0/01", 400, "out_of_range"),
                                   ("/v1/directory/0/x", 400, "out_of_range"),
                                   ("/v1/directory/1/0", 404, "unknown_epoch")):
            got, body = await h.get(path)
            assert (got, json.loads(body)["code"]) == (status, code), path
    store.close()
