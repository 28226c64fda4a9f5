"""Mystery shoppers (issue 11, hole H3): a host that answers probes and relayed requests
but drops roamers' requests is caught in every epoch, also where no roamer asks it.

The coordinator secretly assigns each owing host ``k`` shoppers among the epoch's
included nodes (:mod:`coordinator.shoppers`); only the shopper learns its duty, in the
signed answer to its own signed ``duty_request`` (``POST /v1/duties``); the shopper asks
the host with an ordinary access request and complains like any roamer when it goes
unanswered (protocol README section 7, step 8).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from helpers.clock import NOW, FakeClock
from helpers.coordinator import (
    ADMIN,
    COORDINATOR,
    EPOCH_SECONDS,
    config,
    declaration,
    forge_payload,
    market,
    raw,
    registration,
    runner,
)
from helpers.node import step_all
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import service as service_module
from coordinator.enforcement import (
    UNANSWERED_COMPLAINT,
    UNJUSTIFIED_REFUSAL,
    refusal_is_legitimate,
)
from coordinator.service import make_app
from coordinator.shoppers import assign, epoch_secret
from coordinator.store import Store
from node.agent import NodeSpec
from node.launch import RunningNode, start_node
from node.strategy import parse_strategy
from protocol import (
    MAX_CLOCK_SKEW,
    MICRO,
    AccessRequest,
    Allocation,
    Credential,
    DutyRequest,
    Envelope,
    Identity,
    Refusal,
    ShoppingList,
    make_access_request,
    open_envelope,
    seal,
    seal_bytes,
)
from protocol.kinds import KINDS
from protocol.messages import MAX_SHOPPING_HOSTS

# --- the draw ---------------------------------------------------------------------------


def ids(prefix: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{prefix}{i}".encode()).hexdigest() for i in range(n)]


def check_duties(duties: dict[str, tuple[str, ...]], hosts: dict[str, int],
                 roamers: dict[str, int], k: int, cap: int = MAX_SHOPPING_HOSTS) -> None:
    """The invariants of a draw: every shopper an included roamer with at most ``cap``
    distinct hosts, none itself; each host ``min(k, candidates)`` distinct shoppers, from
    other locations first."""
    assert set(duties) <= set(roamers)
    shoppers_of: dict[str, list[str]] = {h: [] for h in hosts}
    for shopper, mine in duties.items():
        assert len(mine) == len(set(mine)) <= cap
        assert shopper not in mine
        for h in mine:
            shoppers_of[h].append(shopper)
    for h, shoppers in shoppers_of.items():
        candidates = [r for r in roamers if r != h]
        assert len(shoppers) == len(set(shoppers))
        if len(candidates) * cap >= len(hosts) * k:  # the caps cannot bind
            assert len(shoppers) == min(k, len(candidates)), h
        away = [r for r in candidates if roamers[r] != hosts[h]]
        at_home = [s for s in shoppers if roamers[s] == hosts[h]]
        if at_home:  # only once every roamer elsewhere that could shop does
            assert all(r in shoppers or len(duties.get(r, ())) == cap for r in away)


def test_the_draw_is_deterministic_in_the_secret_and_follows_the_rules() -> None:
    hosts = {h: i % 3 for i, h in enumerate(ids("h", 40))}
    roamers = {**hosts, **{r: i % 3 for i, r in enumerate(ids("r", 60))}}
    secret = epoch_secret(COORDINATOR, 4)
    first = assign(secret, hosts, roamers, 2)
    assert first == assign(secret, dict(reversed(hosts.items())),
                           dict(reversed(roamers.items())), 2)
    check_duties(first, hosts, roamers, 2)
    assert sum(len(v) for v in first.values()) == 2 * len(hosts)
    # other epochs, other coordinators: other shoppers
    assert assign(epoch_secret(COORDINATOR, 5), hosts, roamers, 2) != first
    assert assign(epoch_secret(Identity.from_seed(b"\x07" * 32), 4), hosts, roamers, 2) != first


def test_the_secret_is_the_coordinators_signature_and_nothing_public() -> None:
    # Deterministic (a restarted coordinator draws the same shoppers), different per
    # epoch, and not computable from anything public: whoever guesses with the public key
    # and the epoch draws other shoppers.
    s4 = epoch_secret(COORDINATOR, 4)
    assert s4 == epoch_secret(Identity.from_seed(bytes(range(32))), 4)
    assert s4 != epoch_secret(COORDINATOR, 5) and len(s4) == 64
    hosts = {h: 0 for h in ids("h", 30)}
    roamers = {**hosts, **{r: 1 for r in ids("r", 30)}}
    public = hashlib.sha512(COORDINATOR.public_key.encode() + b"4").digest()
    assert assign(public, hosts, roamers, 2) != assign(s4, hosts, roamers, 2)


def test_every_candidate_is_drawn_about_equally_often() -> None:
    # One host, ten roamers elsewhere, k = 2, over 1000 epochs: each roamer is drawn about
    # 200 times (binomial sd ~ 12.6); the host can bet on nobody.
    host = ids("h", 1)[0]
    roamers = {host: 0, **{r: 1 for r in ids("r", 10)}}
    drawn: Counter[str] = Counter()
    for epoch in range(1000):
        for shopper in assign(epoch_secret(COORDINATOR, epoch), {host: 0}, roamers, 2):
            drawn[shopper] += 1
    assert host not in drawn and sum(drawn.values()) == 2000
    assert all(140 <= drawn[r] <= 260 for r in roamers if r != host), drawn


def test_small_populations_and_the_caps() -> None:
    a, b, c = ids("n", 3)
    # two nodes: each shops at the other, whatever k
    assert assign(b"s", {a: 0, b: 0}, {a: 0, b: 0}, 3) == {a: (b,), b: (a,)}
    # nobody else included: no shopper at all
    assert assign(b"s", {a: 0}, {a: 0}, 2) == {}
    # same-location shoppers only when there are too few elsewhere
    duties = assign(b"s", {a: 0}, {a: 0, b: 0, c: 1}, 2)
    assert duties == {b: (a,), c: (a,)}
    assert assign(b"s", {a: 0}, {a: 0, b: 0, c: 1}, 1) == {c: (a,)}
    assert assign(b"s", {a: 0}, {a: 0, b: 0, c: 1}, 0) == {}
    # the cap: 10 hosts, one roamer that may shop at 3 of them
    hosts = dict.fromkeys(ids("h", 10), 0)
    r = ids("r", 1)[0]
    duties = assign(b"s", hosts, {**hosts, r: 1}, 1, cap=3)
    assert len(duties[r]) == 3
    check_duties(duties, hosts, {**hosts, r: 1}, 1, cap=3)
    with pytest.raises(ValueError):
        assign(b"s", hosts, hosts, -1)


@settings(max_examples=60, deadline=None)
@given(n_hosts=st.integers(0, 25), n_others=st.integers(0, 25), k=st.integers(0, 5),
       locations=st.integers(1, 4), cap=st.integers(1, 6), seed=st.binary(min_size=1,
                                                                          max_size=8))
def test_any_draw_keeps_the_rules(n_hosts: int, n_others: int, k: int, locations: int,
                                  cap: int, seed: bytes) -> None:
    hosts = {h: i % locations for i, h in enumerate(ids("h", n_hosts))}
    roamers = {**hosts, **{r: (i * 7) % locations for i, r in enumerate(ids("r", n_others))}}
    duties = assign(seed, hosts, roamers, k, cap=cap)
    check_duties(duties, hosts, roamers, k, cap=cap)
    assert duties == assign(seed, hosts, roamers, k, cap=cap)


# --- the duty reaches only the shopper --------------------------------------------------


PEOPLE = [Identity.from_seed(bytes([120 + i]) * 32) for i in range(6)]
HOME = [0, 0, 0, 1, 1, 1]


@dataclass
class Closed:
    client: TestClient[Any, Any]
    clock: FakeClock
    allocation: Allocation

    async def duty(self, body: bytes) -> tuple[int, Any]:
        resp = await self.client.post("/v1/duties", data=body)
        data = await resp.read()
        return resp.status, data if resp.status == 200 else json.loads(data)["code"]


@asynccontextmanager
async def closed_epoch(tmp_path: Path, outsider: Identity | None = None
                       ) -> AsyncIterator[Closed]:
    """The coordinator's app with the six PEOPLE included in the closed epoch 0
    (``outsider`` registered, not declaring: not included)."""
    clock = FakeClock()
    store = Store(tmp_path / "c.db")
    app = make_app(config(market=market("two")), store=store, identity=COORDINATOR,
                   clock=clock, runner=runner("two"))
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as cl:
            async def post(path: str, body: bytes = b"", admin: bool = False) -> None:
                resp = await cl.post(path, data=body, headers=ADMIN if admin else {})
                assert resp.status == 200, await resp.text()

            for p, home in zip(PEOPLE, HOME, strict=True):
                await post("/v1/register", raw(p, registration(p, location=home,
                                                                kind="wlan_coverage")))
            if outsider is not None:
                await post("/v1/register", raw(outsider, registration(outsider)))
            await post("/v1/admin/open", admin=True)
            for p in PEOPLE:
                await post("/v1/declarations", raw(p, declaration(p, theta=950_000)))
            clock.now = NOW + EPOCH_SECONDS
            await post("/v1/admin/close", admin=True)
            resp = await cl.get("/v1/allocation/0")
            _, alloc = open_envelope(await resp.read(), Allocation,
                                     trusted={COORDINATOR.public_key})
            assert set(alloc.included) == {p.node_id for p in PEOPLE}
            yield Closed(client=cl, clock=clock, allocation=alloc)
    finally:
        store.close()


def duty_request(who: Identity, *, at: int, epoch: int = 0, node: Identity | None = None
                 ) -> bytes:
    """``who``'s signed duty request (for ``node``'s duties: signed anyway)."""
    if node is not None:
        return forge_payload(who, DutyRequest.TYPE, DutyRequest(
            epoch=epoch, node_id=node.node_id, issued=at).to_payload())
    return seal_bytes(who, DutyRequest(epoch=epoch, node_id=who.node_id, issued=at))


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_each_shopper_gets_its_own_duty_signed_by_the_coordinator(
        tmp_path: Path) -> None:
    async with closed_epoch(tmp_path) as w:
        owed = w.allocation.owed()
        expected = assign(epoch_secret(COORDINATOR, 0),
                          {p.node_id: h for p, h in zip(PEOPLE, HOME, strict=True)
                           if owed[p.node_id] > 0},
                          {p.node_id: h for p, h in zip(PEOPLE, HOME, strict=True)}, 2)
        shopped: Counter[str] = Counter()
        for p in PEOPLE:
            status, body = await w.duty(duty_request(p, at=w.clock()))
            assert status == 200
            _, duty = open_envelope(body, ShoppingList, trusted={COORDINATOR.public_key})
            assert duty.epoch == 0 and duty.shopper_id == p.node_id
            assert duty.hosts == expected.get(p.node_id, ())
            shopped.update(duty.hosts)
        assert shopped == Counter({h: 2 for h, o in owed.items() if o > 0})
        # Nothing public names them: not the allocation, the directory, the credentials
        # nor the status page.
        public = [await (await w.client.get(path)).read() for path in (
            "/v1/allocation/0", "/v1/directory/0", "/v1/status",
            *(f"/v1/credential/0/{p.node_id}" for p in PEOPLE))]
        assert not any(b"shop" in page or b"dut" in page for page in public)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_duty_request_not_from_the_shopper_itself_now_is_refused(
        tmp_path: Path) -> None:
    stranger = Identity.from_seed(b"\x99" * 32)
    outsider = Identity.from_seed(b"\x98" * 32)
    alice, bob = PEOPLE[0], PEOPLE[3]
    async with closed_epoch(tmp_path, outsider=outsider) as w:
        now = w.clock()
        cases = {
            # another node asking for alice's duties (signed with its own key)
            "wrong_signer": duty_request(bob, at=now, node=alice),
            # an unregistered key
            "unknown_key": duty_request(stranger, at=now),
            # registered, not included
            "not_included": duty_request(outsider, at=now),
            # replayed later, or made up in advance
            "expired": duty_request(alice, at=now - MAX_CLOCK_SKEW - 1),
            "not_yet_valid": duty_request(alice, at=now + MAX_CLOCK_SKEW + 1),
            # an epoch not closed yet
            "future_epoch": duty_request(alice, at=now, epoch=1),
        }
        for code, body in cases.items():
            status, got = await w.duty(body)
            assert status >= 400 and got == code, (code, status, got)
        # alice's signature of another request over this one
        env = json.loads(duty_request(alice, at=now))
        env["signature"] = json.loads(duty_request(alice, at=now - 1))["signature"]
        status, code = await w.duty(json.dumps(env).encode())
        assert status >= 400 and code == "bad_signature"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_shopper_asking_again_and_again_costs_no_signature(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A flood of fresh, valid duty requests by one included node: each is verified (as
    # any signed request), but its list is signed once for the epoch and answered as is.
    signed: list[str] = []

    def counting(identity: Identity, message: Any) -> bytes:
        signed.append(message.TYPE)
        return seal_bytes(identity, message)

    monkeypatch.setattr(service_module, "seal_bytes", counting)
    async with closed_epoch(tmp_path) as w:
        answers = set()
        for i in range(20):
            status, body = await w.duty(duty_request(PEOPLE[0], at=w.clock() - i))
            assert status == 200
            answers.add(body)
        assert len(answers) == 1 and signed.count(ShoppingList.TYPE) == 1
        status, _ = await w.duty(duty_request(PEOPLE[1], at=w.clock()))
        assert status == 200 and signed.count(ShoppingList.TYPE) == 2


# --- over 127.0.0.1: a false committer nobody roams to -------------------------------------


REBUTTAL = 2


@dataclass
class Front:
    """The false committer's front: passes the coordinator's probes and relayed requests
    to its node, drops every access POST without a byte (as scripts/deviations.py's)."""

    node_url: str = ""
    dropped: int = 0
    passed: int = 0
    session: aiohttp.ClientSession | None = None
    runner: web.AppRunner | None = None
    endpoint: str = ""
    paths: list[str] = field(default_factory=list)

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.session = session

        async def handle(request: web.Request) -> web.StreamResponse:
            if request.method == "POST" and request.path == "/v1/access":
                self.dropped += 1
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=204)
            self.passed += 1
            self.paths.append(request.path)
            assert self.session is not None
            async with self.session.request(
                    request.method, self.node_url + request.path_qs,
                    data=await request.read() or None,
                    headers={"Content-Type": request.content_type}) as r:
                return web.Response(status=r.status, body=await r.read(),
                                    content_type=r.content_type)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.endpoint = f"127.0.0.1:{self.runner.addresses[0][1]}"


async def play_unvisited_epoch(tmp_path: Path, shoppers: int
                               ) -> tuple[set[tuple[str, str]], Front, list[RunningNode]]:
    """Six real nodes (two locations) and the real coordinator on 127.0.0.1; node 0 is a
    false committer behind a :class:`Front`. Nobody roams (``roam_moves=0``): the only
    access requests are the shoppers'. Returns the offences the cut-off of epoch 0 found
    as (node id, reason), the front, and the nodes."""
    clock = FakeClock()
    store = Store(tmp_path / "c.db")
    app = make_app(config(market=market("two"), probe_attempts=2, probe_timeout=2.0,
                          rebuttal_seconds=REBUTTAL, shoppers_per_host=shoppers),
                   store=store, identity=COORDINATOR, clock=clock, runner=runner("two"))
    nodes: list[RunningNode] = []
    front = Front()
    try:
        async with TestServer(app, host="127.0.0.1", port=0) as server, \
                aiohttp.ClientSession() as session:
            url = str(server.make_url("")).rstrip("/")

            async def admin(action: str) -> None:
                async with session.post(f"{url}/v1/admin/{action}", headers=ADMIN) as r:
                    assert r.status == 200, await r.text()

            await front.start(session)
            for i, (p, home) in enumerate(zip(PEOPLE, HOME, strict=True)):
                spec = NodeSpec(coordinator=url, location=home, kind="wlan_coverage",
                                capacity=2 * MICRO, theta=950_000 - 10_000 * i,
                                coordinator_key=COORDINATOR.public_key, seed=i,
                                roam_moves=0,
                                strategy=parse_strategy("free-ride:commit" if i == 0
                                                        else "truthful"),
                                advertise=front.endpoint if i == 0 else None)
                nodes.append(await start_node(spec, p, session, clock=clock))
            front.node_url = nodes[0].url
            agents = [n.agent for n in nodes]
            assert await step_all(agents) == ["registered"] * 6
            await admin("open")
            assert await step_all(agents) == ["declared"] * 6
            clock.advance(1)
            await admin("close")
            assert await step_all(agents) == ["provided"] * 6
            assert await step_all(agents) == ["roamed"] * 6
            assert await step_all(agents) == ["reported"] * 6
            await admin("probe")  # probes and relays of the complaints
            clock.advance(REBUTTAL + 1)
            await admin("open")
            assert await step_all(agents) == ["declared"] * 6
            clock.advance(1)
            await admin("close")  # the audit cut-off of epoch 0
            async with session.get(f"{url}/v1/status") as r:
                status = await r.json()
            for n in nodes:
                await n.stop()
            nodes_out = nodes
            nodes = []
            return ({(x["node_id"], x["reason"]) for x in status["excluded"]
                     if x["detected_epoch"] == 0}, front, nodes_out)
    finally:
        for n in nodes:
            await n.stop()
        if front.runner is not None:
            await front.runner.cleanup()
        store.close()


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_false_committer_nobody_roams_to_is_caught_by_its_shoppers(
        tmp_path: Path) -> None:
    offences, front, nodes = await play_unvisited_epoch(tmp_path, shoppers=2)
    dropper = PEOPLE[0].node_id
    # It answered every probe and relay through its node and dropped exactly its two
    # shoppers' requests -- the only access requests anyone made.
    assert front.passed > 0 and "/v1/probe" in "".join(front.paths)
    assert front.dropped == 2
    # Caught at the cut-off (its node refused the relayed requests: it opened nothing),
    # and nobody else.
    assert offences in ({(dropper, UNJUSTIFIED_REFUSAL)}, {(dropper, UNANSWERED_COMPLAINT)})
    # Every honest host served its two shoppers (12 requests, 2 of them dropped: the
    # dropped ones have no answer, the rest are grants).
    answers = [a for n in nodes for a in n.agent.history[0].answers]
    assert len(answers) == 2 * 6 - 2 and all(a.granted for a in answers)
    assert {a.receipt.host_id for a in answers if a.receipt is not None} == {
        p.node_id for p in PEOPLE[1:]}


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_without_shoppers_the_same_false_committer_goes_unseen(tmp_path: Path) -> None:
    # The hole the shoppers close: nobody asked it, so nothing accuses it.
    offences, front, _ = await play_unvisited_epoch(tmp_path, shoppers=0)
    assert front.dropped == 0 and front.passed > 0
    assert offences == set()


def test_a_shopping_list_is_bounded_and_never_names_its_shopper() -> None:
    a, b = ids("x", 2)
    with pytest.raises(Exception) as exc:
        ShoppingList(epoch=0, shopper_id=a, hosts=(a,))
    assert getattr(exc.value, "code", "") == "out_of_range"
    with pytest.raises(Exception) as exc:
        ShoppingList(epoch=0, shopper_id=a, hosts=(b, b))
    assert getattr(exc.value, "code", "") == "out_of_range"
    with pytest.raises(Exception) as exc:
        ShoppingList(epoch=0, shopper_id=a, hosts=tuple(ids("y", MAX_SHOPPING_HOSTS + 1)))
    assert getattr(exc.value, "code", "") == "too_large"
    env = seal(COORDINATOR, ShoppingList(epoch=0, shopper_id=a,
                                         hosts=tuple(ids("y", MAX_SHOPPING_HOSTS))))
    assert isinstance(env, Envelope) and len(env.to_bytes()) < 2 * ShoppingList.MAX_PAYLOAD_BYTES


def test_a_divisible_request_above_what_is_left_is_never_refused_fairly() -> None:
    # A shopper (or roamer) asking more than the host's per-roamer share, or than it has
    # left, is granted what is left in whole granules (node.gate); so a capacity refusal
    # while a granule is left is a false excuse -- else a false committer could refuse
    # every request above its roamer share and stand justified.
    host, roamer = PEOPLE[0], PEOPLE[3]
    req = make_access_request(roamer, seal(COORDINATOR, Credential(
        node_id=roamer.node_id, public_key=roamer.public_key, epoch=0, not_before=NOW - 10,
        expires=NOW + 600, location=1)), host_id=host.node_id, amount=100_000, now=NOW)
    nonce = AccessRequest.from_payload(json.loads(req.request.payload)).nonce
    refusal = Refusal(epoch=0, host_id=host.node_id, requester_id=roamer.node_id,
                      nonce=nonce, reason="capacity_exhausted",
                      time=NOW, request=req.request, amount=100_000)
    coverage, files = KINDS["wlan_coverage"], KINDS["files"]
    # share 75,000 of which nothing granted yet: 75,000 were grantable
    assert not refusal_is_legitimate(refusal, received=0, committed=300_000, share=75_000,
                                     kind=coverage)
    # 40,000 left of the commitment: grantable too
    assert not refusal_is_legitimate(refusal, received=260_000, committed=300_000,
                                     kind=coverage)
    # nothing left of the share, or of the commitment: justified
    assert refusal_is_legitimate(refusal, received=75_000, committed=300_000, share=75_000,
                                 received_by=75_000, kind=coverage)
    assert refusal_is_legitimate(refusal, received=300_000, committed=300_000, kind=coverage)
    # an item (a file) does not fit in less than its size: justified
    assert refusal_is_legitimate(refusal, received=260_000, committed=300_000, kind=files,
                                 indivisible=True)
