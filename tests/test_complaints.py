"""Complaint and resolve (issue 11, false commitment): a host that answers the
coordinator's probes but drops roamers' requests is caught, and an honest host is never
framed by complaints.

A roamer whose request got no signed answer files a signed ``complaint`` carrying it; the
coordinator relays exactly that request to the host (``POST /v1/resolve``), which must
answer with its receipt or a signed refusal. Over real sockets: the coordinator's app,
real node apps (``node.service``), and a false committer's front that forwards the
probes to its node and drops every request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from helpers.clock import NOW, FakeClock
from helpers.coordinator import (
    ADMIN,
    ADMIN_TOKEN,
    COORDINATOR,
    EPOCH_SECONDS,
    T0,
    close_epoch_zero,
    commitment,
    declaration,
    market,
    new_core,
    raw,
    registration,
    runner,
)
from helpers.node import BedNode, node_bed, step_all
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.config import CoordinatorConfig
from coordinator.enforcement import UNANSWERED_COMPLAINT, UNJUSTIFIED_REFUSAL
from coordinator.epoch import MAX_COMPLAINTS, MAX_COMPLAINTS_PER_HOST, EpochCore
from coordinator.service import make_app
from coordinator.store import Store
from node.gate import Decision
from node.host import AccessOutcome, Host
from node.service import make_app as node_app
from node.service import start_site
from protocol import (
    MAX_CLOCK_SKEW,
    MICRO,
    AccessRequest,
    Allocation,
    Complaint,
    Credential,
    Envelope,
    GrantReceipt,
    Identity,
    InkindError,
    Refusal,
    make_access_request,
    open_embedded,
    open_envelope,
    seal,
    seal_bytes,
)
from protocol.access import credential_digest

HONEST, DROPPER, ROAMER, OTHER = (Identity.from_seed(bytes([i]) * 32) for i in (81, 82, 83, 84))
PEOPLE = (HONEST, DROPPER, ROAMER, OTHER)
REBUTTAL = 5


def complaint(who: Identity, host: Identity, request: Envelope, *, epoch: int = 0) -> bytes:
    return seal_bytes(who, Complaint(epoch=epoch, requester_id=who.node_id,
                                     host_id=host.node_id, request=request))


# --- the core: what a complaint must be ------------------------------------------------


def audited_core() -> tuple[EpochCore, dict[str, Envelope]]:
    core = new_core()
    _, creds = close_epoch_zero(core, PEOPLE)
    return core, creds


def request_of(who: Identity, creds: dict[str, Envelope], host: Identity, *, at: int,
               cred: Envelope | None = None) -> Envelope:
    body = make_access_request(who, cred or creds[who.node_id], host_id=host.node_id,
                               amount=1000, now=at)
    return body.request


def check(core: EpochCore, creds: dict[str, Envelope], data: bytes, *, now: int) -> Any:
    _, c = open_envelope(data, Complaint, trusted=core.keys)
    return core.check_complaint(c, data, now=now,
                                credential_digest=credential_digest(creds[c.requester_id]))


def test_a_complaint_is_refused_with_its_code_and_changes_nothing() -> None:
    core, creds = audited_core()
    audit = core.audit
    assert audit is not None
    start = min(c.not_before for c in (
        open_envelope(e.to_bytes(), Credential, trusted={COORDINATOR.public_key})[1]
        for e in creds.values()))
    ok = request_of(ROAMER, creds, HONEST, at=start + 1)
    outsider = Identity.from_seed(bytes([99]) * 32)
    forged = json.loads(ok.to_bytes())
    forged["signature"] = ("00" if forged["signature"][:2] != "00" else "11") + \
        forged["signature"][2:]
    forged_env = Envelope.from_obj(forged)
    other_cred = seal(COORDINATOR, dataclasses.replace(
        open_envelope(creds[ROAMER.node_id].to_bytes(), Credential,
                      trusted={COORDINATOR.public_key})[1],
        expires=start + 10_000))
    cases = {
        "bad_signature": complaint(ROAMER, HONEST, forged_env),
        "bad_proof": complaint(ROAMER, HONEST, request_of(ROAMER, creds, HONEST, at=start + 1,
                                                          cred=other_cred)),
        "expired": complaint(ROAMER, HONEST, request_of(ROAMER, creds, HONEST, at=T0 - 1000)),
        "not_yet_valid": complaint(ROAMER, HONEST,
                                   request_of(ROAMER, creds, HONEST, at=start + 10**6)),
    }
    for code, data in cases.items():
        before = (dict(audit.complaints), dict(audit.complaints_by))
        with pytest.raises(InkindError) as info:
            check(core, creds, data, now=start + 2)
        assert info.value.code == code, (code, info.value)
        assert (audit.complaints, audit.complaints_by) == before
    own = seal(outsider, dataclasses.replace(
        AccessRequest.from_payload(json.loads(ok.payload)), host_id=HONEST.node_id))
    with pytest.raises(InkindError) as info:  # not registered: the envelope is not trusted
        open_envelope(complaint(outsider, HONEST, own), Complaint, trusted=core.keys)
    assert info.value.code == "unknown_key"
    with pytest.raises(InkindError) as info:  # a complaint about oneself
        complaint(ROAMER, ROAMER, request_of(ROAMER, creds, ROAMER, at=start + 1))
    assert info.value.code == "out_of_range"
    with pytest.raises(InkindError) as info:  # another roamer's request
        complaint(OTHER, HONEST, ok)
    assert info.value.code == "out_of_range"
    # accepted once; the same (host, nonce) again changes nothing
    change = check(core, creds, complaint(ROAMER, HONEST, ok), now=start + 2)
    core.apply(change)
    assert check(core, creds, complaint(ROAMER, HONEST, ok), now=start + 3) is None
    assert audit.complaints_by == {ROAMER.node_id: 1}


def test_complaints_are_bounded_per_roamer_about_one_host_and_in_all() -> None:
    core = new_core()
    hosts = [Identity.from_seed(bytes([120 + i]) * 32) for i in range(9)]
    _, creds = close_epoch_zero(core, [ROAMER, OTHER, *hosts])
    start = T0 + EPOCH_SECONDS + 1

    def file(who: Identity, host: Identity, i: int) -> Any:
        req = request_of(who, creds, host, at=start + i)
        return check(core, creds, complaint(who, host, req), now=start + i)

    for i in range(MAX_COMPLAINTS_PER_HOST):
        core.apply(file(ROAMER, hosts[0], i))
    with pytest.raises(InkindError) as info:
        file(ROAMER, hosts[0], 99)
    assert info.value.code == "capacity_exhausted"
    assert file(OTHER, hosts[0], 99) is not None  # another roamer's complaints are its own
    filed = MAX_COMPLAINTS_PER_HOST
    for host in hosts[1:]:
        for i in range(MAX_COMPLAINTS_PER_HOST):
            if filed < MAX_COMPLAINTS:
                core.apply(file(ROAMER, host, i))
                filed += 1
    with pytest.raises(InkindError) as info:
        file(ROAMER, hosts[-1], 98)
    assert info.value.code == "capacity_exhausted"
    assert core.audit is not None and core.audit.complaints_by[ROAMER.node_id] == MAX_COMPLAINTS


def test_a_complaint_about_a_host_that_owes_nothing_or_from_a_non_member_is_refused() -> None:
    core = new_core()
    people = [*PEOPLE]
    for p in people:
        r = registration(p)
        change = core.check_registration(r, raw(p, r), now=T0)
        assert change is not None
        core.apply(change)
    fees, q = runner().announcement_terms()
    core.apply(core.plan_open(T0, fees=fees, q=q))
    for p in people[:3]:  # OTHER does not declare: not included
        d = declaration(p, theta=950_000)
        core.apply(core.check_declaration(d, raw(p, d), T0 + 1))
    closed = core.close(T0 + EPOCH_SECONDS, runner().run)
    creds = {c.credential.node_id: Envelope.from_bytes(c.envelope, max_size=1 << 16)
             for c in closed.credentials}
    at = T0 + EPOCH_SECONDS + 1
    fake_cred = creds[ROAMER.node_id]
    body = make_access_request(ROAMER, fake_cred, host_id=OTHER.node_id, amount=1, now=at)
    with pytest.raises(InkindError) as info:
        core.check_complaint(Complaint(epoch=0, requester_id=ROAMER.node_id,
                                       host_id=OTHER.node_id, request=body.request),
                             b"", now=at, credential_digest=credential_digest(fake_cred))
    assert info.value.code == "not_included"
    # A non-member's complaint (signed with its own key over a member's credential
    # digest: it has no credential of its own) is refused too.
    stolen = seal(OTHER, AccessRequest.from_payload(json.loads(make_access_request(
        ROAMER, fake_cred, host_id=HONEST.node_id, amount=1, now=at).request.payload)))
    with pytest.raises(InkindError) as info:
        core.check_complaint(Complaint(epoch=0, requester_id=OTHER.node_id,
                                       host_id=HONEST.node_id, request=stolen),
                             b"", now=at, credential_digest=credential_digest(fake_cred))
    assert info.value.code == "not_included"
    assert core.audit is not None and core.audit.complaints == {}


def test_a_complaint_is_for_the_epoch_being_audited_only() -> None:
    core, creds = audited_core()
    at = T0 + EPOCH_SECONDS + 1
    old = complaint(ROAMER, HONEST, request_of(ROAMER, creds, HONEST, at=at))
    fees, q = runner().announcement_terms()
    core.apply(core.plan_open(at + 10, fees=fees, q=q))
    for p in PEOPLE:
        d = declaration(p, epoch=1, theta=950_000)
        core.apply(core.check_declaration(d, raw(p, d), at + 11))
    core.close(at + 10 + EPOCH_SECONDS, runner().run)  # epoch 1 is audited now
    with pytest.raises(InkindError) as info:  # epoch 0's complaint, replayed later
        check(core, creds, old, now=at + 100)
    assert info.value.code == "stale_epoch"
    assert core.audit is not None and core.audit.complaints == {}


# --- over the wire ------------------------------------------------------------------------


@dataclasses.dataclass
class World:
    client: TestClient[Any, Any]
    store: Store
    clock: FakeClock
    hosts: dict[str, Host]
    endpoints: dict[str, str]
    creds: dict[str, Envelope] = dataclasses.field(default_factory=dict)
    owed: dict[str, int] = dataclasses.field(default_factory=dict)

    async def post(self, path: str, body: bytes = b"", admin: bool = False) -> Any:
        resp = await self.client.post(path, data=body, headers=ADMIN if admin else {})
        data = await resp.json(content_type=None)
        assert resp.status == 200, data
        return data

    async def ask(self, who: Identity, host: Identity, amount: int = 1000
                  ) -> tuple[Envelope, Envelope | None]:
        """``who`` asks ``host`` directly: its signed request and the host's signed answer
        (None: no signed answer came)."""
        body = make_access_request(who, self.creds[who.node_id], host_id=host.node_id,
                                   amount=amount, now=self.clock())
        try:
            async with aiohttp.ClientSession() as s, s.post(
                    f"http://{self.endpoints[host.node_id]}/v1/access", data=body.to_bytes(),
                    timeout=aiohttp.ClientTimeout(total=5)) as resp:
                data = await resp.read()
                if resp.status == 200:
                    return body.request, Envelope.from_bytes(data, max_size=1 << 16)
                obj = json.loads(data)
                return body.request, (Envelope.from_obj(obj["refusal"]) if "refusal" in obj
                                      else None)
        except (aiohttp.ClientError, TimeoutError):
            return body.request, None

    async def complain(self, who: Identity, host: Identity, request: Envelope) -> Any:
        """``who`` files (or files again) its complaint: the host's answer held, or None."""
        return (await self.post("/v1/complaints", complaint(who, host, request)))["answer"]

    async def honest_framed(self) -> set[tuple[str, str]]:
        """:meth:`cut_off`: HONEST's offences that complaints can bring."""
        return await self.cut_off() & {(HONEST.node_id, r) for r in
                                       (UNANSWERED_COMPLAINT, UNJUSTIFIED_REFUSAL)}

    async def cut_off(self) -> set[tuple[str, str]]:
        """Close epoch 1, REBUTTAL seconds after the complaints: the offences of epoch 0."""
        self.clock.now += REBUTTAL + 1
        await self.post("/v1/admin/open", admin=True)
        for p in PEOPLE:
            await self.post("/v1/declarations", raw(p, declaration(p, epoch=1,
                                                                    theta=950_000)))
        self.clock.now += EPOCH_SECONDS
        await self.post("/v1/admin/close", admin=True)
        resp = await self.client.get("/v1/status")
        status = json.loads(await resp.read())
        return {(x["node_id"], x["reason"]) for x in status["excluded"]
                if x["detected_epoch"] == 0}


def dropper_front(host: Host, clock: Callable[[], int], *, relays: bool) -> web.Application:
    """The false committer's front: probes reach its node, every access request is
    dropped without a byte; relayed complaints reach its node only if ``relays``."""
    inner = node_app(host, clock=clock)

    async def probe(request: web.Request) -> web.StreamResponse:
        env = host.probe(epoch=int(request.match_info["epoch"]),
                         nonce=request.match_info["nonce"])
        return web.Response(body=env.to_bytes(), content_type="application/json")

    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/probe/{epoch}/{nonce}", probe)
    app.router.add_post("/v1/access", drop)
    if relays:
        app.add_subapp("/inner", inner)  # keeps the node's app alive beside the front

        async def resolve(request: web.Request) -> web.StreamResponse:
            outcome = host.resolve(await request.read(), now=clock())
            if outcome.receipt is not None:
                return web.Response(body=outcome.receipt.to_bytes(),
                                    content_type="application/json")
            assert outcome.refusal is not None
            return web.json_response({"code": outcome.decision.reason, "message": "",
                                      "refusal": outcome.refusal.to_obj()}, status=403)

        app.router.add_post("/v1/resolve", resolve)
    else:
        app.router.add_post("/v1/resolve", drop)
    return app


def losing_relays(app: web.Application, lost: int) -> web.Application:
    """``app`` behind a network that loses the first ``lost`` relays to it (the
    connection closed before the node sees them): the coordinator must retry."""
    seen = [0]

    @web.middleware
    async def lose(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/resolve" and seen[0] < lost:
            seen[0] += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return await handler(request)

    app.middlewares.append(lose)
    return app


@contextlib.asynccontextmanager
async def world(tmp_path: Path, *, relays: bool, probes: int = 2, lost_relays: int = 0,
                lossy: Identity = HONEST) -> AsyncIterator[World]:
    """Epoch 0 closed and served: HONEST, ROAMER and OTHER honest nodes, DROPPER a false
    committer; the network (or the node) loses the first ``lost_relays`` relays to
    ``lossy``."""
    clock = FakeClock()
    hosts = {p.node_id: Host(p, kind="wlan_coverage", location=0,
                             coordinator_key=COORDINATOR.public_key) for p in PEOPLE}
    runners: list[web.AppRunner] = []
    endpoints: dict[str, str] = {}
    for p in PEOPLE:
        host = hosts[p.node_id]
        app = (dropper_front(host, clock, relays=relays) if p is DROPPER
               else node_app(host, clock=clock))
        if p is lossy and lost_relays:
            app = losing_relays(app, lost_relays)
        r, ep = await start_site(app)
        runners.append(r)
        endpoints[p.node_id] = ep
    store = Store(tmp_path / "c.db")
    config = CoordinatorConfig(market=market(), mechanism="posted_fee",
                               epoch_seconds=EPOCH_SECONDS, pause_seconds=5,
                               credential_grace=30, auto_schedule=False,
                               admin_token=ADMIN_TOKEN, probe_attempts=probes,
                               probe_timeout=1.0, rebuttal_seconds=REBUTTAL)
    app = make_app(config, store=store, identity=COORDINATOR, clock=clock, runner=runner())
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as cl:
            w = World(client=cl, store=store, clock=clock, hosts=hosts, endpoints=endpoints)
            for p in PEOPLE:
                await w.post("/v1/register", raw(p, registration(
                    p, endpoint=endpoints[p.node_id], kind="wlan_coverage")))
            await w.post("/v1/admin/open", admin=True)
            clock.now += 1
            for p in PEOPLE:
                await w.post("/v1/declarations", raw(p, declaration(p, theta=950_000)))
            clock.now = T0 + EPOCH_SECONDS
            await w.post("/v1/admin/close", admin=True)
            resp = await cl.get("/v1/allocation/0")
            _, alloc = open_envelope(await resp.read(), Allocation,
                                     trusted={COORDINATOR.public_key})
            w.owed = dict(zip(alloc.included, alloc.contributions, strict=True))
            assert set(w.owed) == {p.node_id for p in PEOPLE}
            for p in PEOPLE:
                resp = await cl.get(f"/v1/credential/0/{p.node_id}")
                w.creds[p.node_id] = Envelope.from_bytes(await resp.read(), max_size=1 << 16)
                owed = w.owed[p.node_id]
                # the dropper commits what it owes and opens nothing (a false commitment)
                hosts[p.node_id].open_epoch(epoch=0, included=alloc.included,
                                            opened=0 if p is DROPPER else owed,
                                            now=clock(), owed=owed)
                await w.post("/v1/commitments", raw(p, commitment(p, amount=owed)))
            clock.now += 1
            yield w
    finally:
        for r in runners:
            await r.cleanup()
        store.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("relays", [False, True])
@pytest.mark.parametrize("late_close", [False, True])
async def test_a_false_committer_that_drops_roamers_is_caught_by_their_complaints(
        tmp_path: Path, relays: bool, late_close: bool) -> None:
    """``late_close``: the next close comes long after the credentials expired, with
    relays meanwhile (the complaint was filed early): still caught."""
    async with world(tmp_path, relays=relays) as w:
        request, answer = await w.ask(ROAMER, DROPPER)
        assert answer is None  # dropped: nothing signed, no evidence
        probed = await w.post("/v1/admin/probe", admin=True)
        assert probed["unanswered"] == []  # it answers every probe with its own key
        got = await w.post("/v1/complaints", complaint(ROAMER, DROPPER, request))
        assert got["accepted"] == 1
        await w.post("/v1/admin/probe", admin=True)  # a round: probes and relays
        if late_close:
            w.clock.now = expiry_of(w.creds[ROAMER.node_id]) + 3600
            await w.post("/v1/admin/probe", admin=True)
        again = await w.post("/v1/complaints", complaint(ROAMER, DROPPER, request))
        if relays:
            # its node answered the relay, and had nothing open: a signed refusal the
            # roamer now holds, which the audit judges
            refusal = open_embedded(Envelope.from_obj(again["answer"]), Refusal,
                                    trusted={DROPPER.public_key})[1]
            assert refusal.request == request and refusal.reason == "capacity_exhausted"
            expected = {(DROPPER.node_id, UNJUSTIFIED_REFUSAL)}
        else:
            assert again["answer"] is None
            expected = {(DROPPER.node_id, UNANSWERED_COMPLAINT)}
        assert await w.cut_off() == expected


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_complaints_never_frame_an_honest_host(tmp_path: Path) -> None:
    async with world(tmp_path, relays=True) as w:
        # The roamer got a receipt, hides it and complains; it also complains about a
        # request it never sent, and floods complaints to its limit. The host has not
        # filed its ledger: the relays alone must answer everything.
        granted, receipt = await w.ask(ROAMER, HONEST)
        assert receipt is not None and receipt.type == "grant_receipt"
        got = await w.post("/v1/complaints", complaint(ROAMER, HONEST, granted))
        never_sent = make_access_request(ROAMER, w.creds[ROAMER.node_id],
                                         host_id=HONEST.node_id, amount=1000,
                                         now=w.clock()).request
        await w.post("/v1/complaints", complaint(ROAMER, HONEST, never_sent))
        flood = [make_access_request(ROAMER, w.creds[ROAMER.node_id], host_id=HONEST.node_id,
                                     amount=10**12, now=w.clock()).request
                 for _ in range(MAX_COMPLAINTS_PER_HOST - 2)]
        for req in flood:
            await w.post("/v1/complaints", complaint(ROAMER, HONEST, req))
        resp = await w.client.post("/v1/complaints", data=complaint(
            ROAMER, HONEST, make_access_request(ROAMER, w.creds[ROAMER.node_id],
                                                host_id=HONEST.node_id, amount=1,
                                                now=w.clock()).request))
        assert resp.status == 409
        assert (await resp.json())["code"] == "capacity_exhausted"
        await w.post("/v1/admin/probe", admin=True)
        # The hidden receipt comes back byte for byte; the unsent request is decided now
        # (a grant, or -- if the flood's relays took the roamer's share first -- a signed
        # refusal its ledger justifies).
        got = await w.post("/v1/complaints", complaint(ROAMER, HONEST, granted))
        assert Envelope.from_obj(got["answer"]) == receipt
        fresh = await w.post("/v1/complaints", complaint(ROAMER, HONEST, never_sent))
        answer = Envelope.from_obj(fresh["answer"])
        decided: GrantReceipt | Refusal = (
            open_embedded(answer, GrantReceipt, trusted={HONEST.public_key})[1]
            if answer.type == "grant_receipt"
            else open_embedded(answer, Refusal, trusted={HONEST.public_key})[1])
        assert decided.request == never_sent
        # Decided once: asked again, the host answers what it signed then.
        again = w.hosts[HONEST.node_id].resolve(
            json.dumps({"credential": w.creds[ROAMER.node_id].to_obj(),
                        "request": never_sent.to_obj()}).encode(), now=w.clock())
        assert (again.receipt or again.refusal) == answer
        # Every relayed flood request was answered too.
        for req in flood:
            again_flood = await w.post("/v1/complaints", complaint(ROAMER, HONEST, req))
            assert again_flood["answer"] is not None
        assert await w.honest_framed() == set()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_complaint_filed_inside_the_rebuttal_window_or_never_relayed_is_not_judged(
        tmp_path: Path) -> None:
    async with world(tmp_path, relays=False, probes=0) as w:
        request, answer = await w.ask(ROAMER, DROPPER)
        assert answer is None
        await w.post("/v1/complaints", complaint(ROAMER, DROPPER, request))
        # Probes (and so relays) are disabled: the coordinator never asked the host, so
        # the complaint does not count against it.
        assert (DROPPER.node_id, UNANSWERED_COMPLAINT) not in await w.cut_off()


def serving_host(core: EpochCore) -> Host:
    """HONEST's host enforcing the audited epoch 0 of ``core``, with room to grant."""
    assert core.audit is not None
    host = Host(HONEST, kind="wlan_coverage", location=0,
                coordinator_key=COORDINATOR.public_key)
    host.open_epoch(epoch=0, included=core.audit.allocation.included, opened=10**6,
                    now=T0 + EPOCH_SECONDS + 1)
    return host


def test_a_relayed_request_is_checked_like_any_other() -> None:
    core, creds = audited_core()
    host = serving_host(core)
    at = T0 + EPOCH_SECONDS + 1
    other_host = make_access_request(ROAMER, creds[ROAMER.node_id], host_id=OTHER.node_id,
                                     amount=1, now=at)
    assert host.resolve(other_host.to_bytes(), now=at).decision.reason == "bad_proof"
    stolen = AccessRequest.from_payload(json.loads(
        make_access_request(ROAMER, creds[ROAMER.node_id], host_id=HONEST.node_id,
                            amount=1, now=at).request.payload))
    by_other = seal(OTHER, stolen)  # another key signs a request under ROAMER's credential
    body = json.dumps({"credential": creds[ROAMER.node_id].to_obj(),
                       "request": by_other.to_obj()}).encode()
    outcome = host.resolve(body, now=at)
    assert outcome.decision.reason == "bad_proof" and outcome.refusal is None
    assert host.resource.granted_total == 0
    # an old request (past the freshness window, inside its credential's) is decided
    old = make_access_request(ROAMER, creds[ROAMER.node_id], host_id=HONEST.node_id,
                              amount=5, now=at)
    late = at + MAX_CLOCK_SKEW + 30
    assert host.access(old.to_bytes(), now=late).decision.reason == "expired"
    assert host.resolve(old.to_bytes(), now=late).granted


@pytest.mark.asyncio
async def test_a_node_complains_about_every_request_without_a_signed_answer(
        clock: FakeClock) -> None:
    specs = [BedNode(seed=61, location=0, kind="wlan_coverage", theta=700_000),
             BedNode(seed=62, location=1, kind="wlan_coverage", theta=700_000, script=(0,))]
    async with node_bed(specs, clock) as (fake, agents):
        host, roamer = agents
        assert await step_all(agents) == ["registered"] * 2
        fake.open(1, deadline=NOW + 60)
        assert await step_all(agents) == ["declared"] * 2
        clock.now = NOW + 60
        fake.close(1, owed={host.node_id: MICRO, roamer.node_id: MICRO})
        assert await step_all(agents) == ["provided"] * 2

        def plain_error(raw: bytes, *, now: int, resource: str | None = None
                        ) -> AccessOutcome:  # answers without signing anything
            return AccessOutcome(decision=Decision(granted=False, reason="malformed",
                                                   epoch=1, message="no"))

        host.host.access = plain_error  # type: ignore[method-assign]
        assert await step_all(agents) == ["roamed"] * 2
        (answer,) = roamer.history[1].answers
        assert answer.evidence is None and answer.reason == "malformed"
        assert await step_all(agents) == ["reported"] * 2
        (filed,) = fake.complaints
        assert (filed.epoch, filed.requester_id, filed.host_id) == (
            1, roamer.node_id, host.node_id)
        request = AccessRequest.from_payload(json.loads(filed.request.payload))
        assert request.host_id == host.node_id and request.epoch == 1
        assert await step_all(agents) == ["waiting"] * 2
        assert len(fake.complaints) == 1  # filed once


# --- late relays (issue 11: an honest host framed by a relay after the credential expired) --


def expiry_of(cred: Envelope) -> int:
    return open_envelope(cred.to_bytes(), Credential, trusted={COORDINATOR.public_key})[1].expires


@settings(max_examples=60, deadline=None)
@given(before=st.integers(1, 200), delay=st.integers(0, 100_000))
def test_a_relay_is_answered_with_a_signed_answer_however_late_it_lands(
        before: int, delay: int) -> None:
    """A request issued inside its credential's window (widened by the skew, the rule the
    coordinator accepts a complaint under) gets a signed answer on its relay at any later
    time of the epoch: 61 s, 200 s or a day after the credential expired."""
    core, creds = audited_core()
    host, expires = serving_host(core), expiry_of(creds[ROAMER.node_id])
    issued = expires + MAX_CLOCK_SKEW - before
    body = make_access_request(ROAMER, creds[ROAMER.node_id], host_id=HONEST.node_id,
                               amount=5, now=issued)
    # the coordinator holds such a complaint ...
    assert check(core, creds, complaint(ROAMER, HONEST, body.request), now=issued + delay)
    # ... and the host signs an answer to its relay, whenever it lands
    outcome = host.resolve(body.to_bytes(), now=issued + delay)
    assert outcome.receipt is not None or outcome.refusal is not None


@pytest.mark.parametrize("late", [0, 1, 500])
def test_a_relayed_request_issued_outside_its_credential_window_is_not_decided(
        late: int) -> None:
    core, creds = audited_core()
    host, expires = serving_host(core), expiry_of(creds[ROAMER.node_id])
    issued = expires + MAX_CLOCK_SKEW + late
    body = make_access_request(ROAMER, creds[ROAMER.node_id], host_id=HONEST.node_id,
                               amount=5, now=issued)
    with pytest.raises(InkindError) as refused:  # the coordinator refuses the complaint
        check(core, creds, complaint(ROAMER, HONEST, body.request), now=issued)
    assert refused.value.code == "not_yet_valid"
    outcome = host.resolve(body.to_bytes(), now=issued)
    assert outcome.decision.reason == "expired" and outcome.refusal is None
    assert host.resource.granted_total == 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("filed", "relayed", "lost"), [
    (-1, MAX_CLOCK_SKEW + 1, 1),  # filed at the last moment, its relay lost, retried late
    (-1, 200, 1),
    (3600, 3600, 0),  # the next close is late (an admin's): filed and relayed then
])
async def test_a_late_complaint_or_relay_cannot_frame_an_honest_host(
        tmp_path: Path, filed: int, relayed: int, lost: int) -> None:
    """A request issued just before its credential expires; the complaint is filed
    ``filed`` seconds after expiry (while the audit of epoch 0 is still open), the first
    ``lost`` relays are lost and a relay lands ``relayed`` seconds after expiry: the
    honest host signs an answer and is not excluded."""
    async with world(tmp_path, relays=True, lost_relays=lost) as w:
        expires = expiry_of(w.creds[ROAMER.node_id])
        request = make_access_request(ROAMER, w.creds[ROAMER.node_id],
                                      host_id=HONEST.node_id, amount=1000,
                                      now=expires - 1).request
        w.clock.now = expires + filed
        await w.complain(ROAMER, HONEST, request)
        w.clock.now = expires + relayed
        await w.post("/v1/admin/probe", admin=True)
        assert await w.complain(ROAMER, HONEST, request) is not None
        assert await w.honest_framed() == set()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_dropper_that_answers_only_the_relays_after_expiry_is_still_caught(
        tmp_path: Path) -> None:
    """It drops the request and every relay while the credential is valid, and signs a
    refusal only for a relay after it expired: the refusal is judged at its request's
    time (inside the window), not excused as "outside" it."""
    async with world(tmp_path, relays=True, lost_relays=2, lossy=DROPPER) as w:
        request, answer = await w.ask(ROAMER, DROPPER)
        assert answer is None
        await w.complain(ROAMER, DROPPER, request)  # relay lost
        await w.post("/v1/admin/probe", admin=True)  # relay lost
        expires = expiry_of(w.creds[ROAMER.node_id])
        w.clock.now = expires + 3600
        await w.post("/v1/admin/probe", admin=True)
        refusal = open_embedded(Envelope.from_obj(await w.complain(ROAMER, DROPPER, request)),
                                Refusal,
                                trusted={DROPPER.public_key})[1]
        assert refusal.time > expires + MAX_CLOCK_SKEW
        assert (DROPPER.node_id, UNJUSTIFIED_REFUSAL) in await w.cut_off()
