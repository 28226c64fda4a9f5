"""A real coordinator and 21 real nodes on 127.0.0.1 through three epochs, per mechanism.

One event loop holds the coordinator app (``coordinator.service.make_app`` on its own
TCP site, manual epochs through the admin endpoints) and 21 nodes (``node.launch
.start_node``: host, service on its own port, agent), 7 in each of 3 locations; the
market spec is a TOML file (u = A Q^α, c = B Q, θ ~ U[0, 1], cross-location weights).
Locations 0 and 1 share WLAN coverage, location 2 shares files. Everyone shares one
injected clock, and the test drives every agent step by step (``run_epoch_step``), so
nothing waits on time: steps are awaited, never slept on.

Cast (types seeded): per location two low types (below every threshold: never
included) and five high ones (always included while honest). Node 0 of location 0
free-rides without a commitment, node 0 of location 1 free-rides with a false one; both
are included in epoch 0 and must be out of epoch 1. Node 1 of location 2 is the
"busy" file host that every roamer of locations 0 and 1 downloads from, so it runs out of
bytes and refuses larger files early (legitimately: the refusal carries the amount
asked); in epoch 1 it is also the "late" host whose agent has not fetched the new
allocation when roamers arrive: it answers ``future_epoch`` (a plain error, evidence
neither way) until its own agent provides, and serves from then on.

Per epoch: every grant goes to a node in the epoch's signed allocation, no host grants
more than it opened (and every grant it made is a receipt a roamer holds), excluded
nodes are refused (their credential is ``not_included`` at the coordinator; any other
attempt is refused, never granted), and declarations stored are the truthful ones. The
coordinator is restarted (new app on the same database and port) between the
declarations and the close of epoch 1 and loses none of them. Epoch 1 excludes exactly
the two free riders; epoch 2 excludes nobody (honest hosts, the busy and late one
included, are never found free-riding).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from coordinator.allocation import MechanismRunner
from coordinator.config import CoordinatorConfig
from coordinator.enforcement import REBUTTAL_SECONDS
from coordinator.service import make_app
from coordinator.store import Store
from node.agent import Agent
from node.client import AccessAnswer, CoordinatorClient, DirectoryEntry
from node.launch import NodeSpec, RunningNode, start_node
from node.strategy import parse_strategy
from protocol import (
    MICRO,
    AccessBody,
    AccessRequest,
    Allocation,
    Credential,
    Envelope,
    GrantReceipt,
    Identity,
    InkindError,
    credential_digest,
    seal,
)
from protocol.errors import NotIncludedError

T0 = 1_700_000_000
TOKEN = "integration-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
COORD_ID = Identity.from_seed(b"\xc0" * 32)
PER_LOCATION = 7
KINDS = ("wlan_coverage", "wlan_coverage", "files")
CAPACITY = 2 * MICRO  # registered capacity of every node (2 units; files: 2 MB)
FILE_BYTES = 300_000  # each file host shares one file of this size
LOW, HIGH = (0.0, 0.12), (0.45, 1.0)  # type ranges: below / above every threshold
BUSY = (2, 1)  # (location, index) of the busy file host, late in epoch 1
FREE_RIDERS = {(0, 0): "free-ride", (1, 0): "free-ride:commit"}

SPEC = """\
weights = [[1.0, 0.5, 0.4], [0.5, 1.0, 0.5], [0.4, 0.5, 1.0]]

[market]
payment = "{payment}"
exclusion = true

[[locations]]
name = "centre"
n = 7
type = {{ dist = "uniform", low = 0.0, high = 1.0 }}
utility = {{ kind = "power", A = 1.0, alpha = 0.5 }}
cost = {{ kind = "power", B = 1.0, beta = 1.0 }}

[[locations]]
name = "campus"
n = 7
type = {{ dist = "uniform", low = 0.0, high = 1.0 }}
utility = {{ kind = "power", A = 1.2, alpha = 0.5 }}
cost = {{ kind = "power", B = 1.0, beta = 1.0 }}

[[locations]]
name = "library"
n = 7
type = {{ dist = "uniform", low = 0.0, high = 1.0 }}
utility = {{ kind = "power", A = 0.8, alpha = 0.5 }}
cost = {{ kind = "power", B = 1.0, beta = 1.0 }}
"""


class Clock:
    """The one clock of coordinator and nodes; the test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def tick(self, seconds: int = 1) -> None:
        self.now += seconds


@dataclass
class Member:
    """One node of the bed and what the test knows about it."""

    location: int
    index: int
    theta: int
    strategy: str
    node: RunningNode

    @property
    def id(self) -> str:
        return self.node.identity.node_id

    @property
    def agent(self) -> Agent:
        return self.node.agent

    @property
    def low(self) -> bool:
        return self.theta < HIGH[0] * MICRO


@dataclass
class EpochLog:
    """Everything observed in one epoch."""

    allocation: Allocation
    answers: list[tuple[str, AccessAnswer]] = field(default_factory=list)  # (asker, answer)
    excluded_attempts: list[tuple[str, AccessAnswer]] = field(default_factory=list)
    opened: dict[str, int] = field(default_factory=dict)  # host -> micro-units opened
    granted_total: dict[str, int] = field(default_factory=dict)
    grant_count: dict[str, int] = field(default_factory=dict)


@dataclass
class Bed:
    tmp: Path
    clock: Clock
    mechanism: str
    payment: str
    session: aiohttp.ClientSession
    runner: MechanismRunner
    config: CoordinatorConfig
    store: Store | None = None
    web_runner: web.AppRunner | None = None
    port: int = 0
    members: list[Member] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the coordinator ----------------------------------------------------------------

    async def start_coordinator(self) -> None:
        self.store = Store(self.tmp / "coord.db")
        app = make_app(self.config, store=self.store, identity=COORD_ID, clock=self.clock,
                       runner=self.runner)
        self.web_runner = web.AppRunner(app, access_log=None)
        await self.web_runner.setup()
        await web.TCPSite(self.web_runner, "127.0.0.1", self.port).start()
        self.port = int(self.web_runner.addresses[0][1])

    async def stop_coordinator(self) -> None:
        if self.web_runner is not None:
            await self.web_runner.cleanup()
            self.web_runner = None
        if self.store is not None:
            self.store.close()
            self.store = None

    async def restart_coordinator(self) -> None:
        """A new app on the same database and port (nodes keep their URL)."""
        await self.stop_coordinator()
        await self.start_coordinator()

    async def admin(self, action: str) -> dict[str, Any]:
        async with self.session.post(f"{self.url}/v1/admin/{action}", headers=ADMIN) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == 200, body
            return body

    async def status(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/v1/status") as r:
            body: dict[str, Any] = await r.json()
            return body

    def client(self) -> CoordinatorClient:
        return CoordinatorClient(self.session, self.url, coordinator_key=COORD_ID.public_key)

    # -- the nodes ----------------------------------------------------------------------

    async def start_nodes(self) -> None:
        for location in range(3):
            rng = random.Random(7919 * (location + 1))
            thetas = [rng.uniform(*LOW) for _ in range(2)] + [rng.uniform(*HIGH)
                                                              for _ in range(5)]
            order = [2, 3, 0, 4, 5, 1, 6]  # free riders and the busy host get high types
            for index in range(PER_LOCATION):
                theta = int(thetas[order[index]] * MICRO)
                strategy = FREE_RIDERS.get((location, index), "truthful")
                files_dir = None
                if KINDS[location] == "files":
                    files_dir = self.tmp / f"files-{location}-{index}"
                    files_dir.mkdir()
                    (files_dir / "share.bin").write_bytes(
                        bytes([location * 16 + index]) * FILE_BYTES)
                spec = NodeSpec(
                    coordinator=self.url, location=location, kind=KINDS[location],
                    capacity=CAPACITY, theta=theta, strategy=parse_strategy(strategy),
                    coordinator_key=COORD_ID.public_key,
                    files_dir=None if files_dir is None else str(files_dir),
                    roam_moves=2, seed=100 * location + index)
                identity = Identity.from_seed(bytes([location * 16 + index + 1]) * 32)
                node = await start_node(spec, identity, self.session, clock=self.clock)
                self.members.append(Member(location, index, theta, strategy, node))

    async def stop_nodes(self) -> None:
        for m in self.members:
            await m.node.stop()

    def member(self, location: int, index: int) -> Member:
        return next(m for m in self.members if (m.location, m.index) == (location, index))

    async def step(self, who: Sequence[Member], expect: str) -> None:
        """One agent step for each of ``who``, concurrently; each must do ``expect``."""
        done = await asyncio.gather(*(m.agent.run_epoch_step() for m in who))
        assert set(done) == {expect}, list(zip([m.id[:8] for m in who], done, strict=True))


@asynccontextmanager
async def bed(tmp: Path, mechanism: str, payment: str) -> AsyncIterator[Bed]:
    spec = tmp / "market.toml"
    spec.write_text(SPEC.format(payment=payment))
    config = CoordinatorConfig.from_spec_file(
        spec, mechanism=mechanism, epoch_seconds=600, pause_seconds=0, credential_grace=600,
        auto_schedule=False, admin_token=TOKEN)
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        b = Bed(tmp=tmp, clock=clock, mechanism=mechanism, payment=payment, session=session,
                runner=MechanismRunner(config.market, mechanism), config=config)
        await b.start_coordinator()
        try:
            await b.start_nodes()
            yield b
        finally:
            await b.stop_nodes()
            await b.stop_coordinator()


# --- the epoch script --------------------------------------------------------------------


async def targeted_asks(b: Bed, log: EpochLog, included: set[str]) -> None:
    """Every included roamer asks each "target" host of another location once: the free
    riders (while included) and the busy file host, so that each is put to the test."""
    targets = [b.member(*FREE_RIDERS_AT[0]), b.member(*FREE_RIDERS_AT[1]), b.member(*BUSY)]
    for roamer in b.members:
        progress = roamer.agent.current
        assert progress is not None
        if roamer.id not in included or progress.credential is None:
            continue
        entries = (await roamer.agent.directory()).by_id()
        for target in targets:
            if target.location == roamer.location or target.id not in entries:
                continue
            answer = await roamer.agent.ask(entries[target.id], progress.credential)
            assert answer is not None
            progress.answers.append(answer)  # reported with the rest


FREE_RIDERS_AT = sorted(FREE_RIDERS)


def signed_anyway(identity: Identity, credential: Envelope, *, host_id: str, now: int,
                  amount: int, resource: str | None) -> AccessBody:
    """An access body signed by ``identity`` whoever holds ``credential`` (the reference
    builder refuses another's credential; an attacker need not use it)."""
    cred = Credential.from_payload(json.loads(credential.payload))
    request = AccessRequest(credential_digest=credential_digest(credential), host_id=host_id,
                            epoch=cred.epoch, issued=now, nonce=random.randbytes(16).hex(),
                            amount=amount, resource=resource)
    return AccessBody(request=seal(identity, request), credential=credential)


async def excluded_attempts(b: Bed, log: EpochLog, included: set[str],
                            old_credentials: dict[str, Envelope]) -> None:
    """Excluded nodes try to get in: no credential (``not_included``); then with an old
    credential of theirs, or an included node's credential signed with their own key."""
    epoch = log.allocation.epoch
    donor = next(m for m in b.members if m.id in included and m.agent.current is not None
                 and m.agent.current.credential is not None)
    assert donor.agent.current is not None and donor.agent.current.credential is not None
    hosts = [m for m in b.members if m.id in included and m.location != 0]
    for m in b.members:
        if m.id in included:
            continue
        progress = m.agent.current
        assert progress is not None and progress.epoch == epoch
        assert progress.credential is None and progress.owed is None
        assert not progress.answers  # the agent's roaming asked nobody
        with pytest.raises(NotIncludedError) as info:
            await b.client().credential(epoch, m.id)
        assert info.value.code == "not_included" and info.value.http_status == 403
        credentials = [donor.agent.current.credential]
        if m.id in old_credentials:
            credentials.append(old_credentials[m.id])
        for credential in credentials:
            host = hosts[(m.index + len(log.excluded_attempts)) % len(hosts)]
            url = f"http://{host.node.bound}"
            resource = None
            if host.node.spec.kind == "files":
                listing = await m.agent.peers.files(url)
                resource = "file:" + listing[0]["sha256"]
            request = signed_anyway(
                m.node.identity, credential, host_id=host.id, now=b.clock(),
                amount=FILE_BYTES if resource else MICRO // 10, resource=resource)
            if resource:
                answer, _ = await m.agent.peers.download(url, resource[5:], request,
                                                         host_key=host.node.identity.public_key)
            else:
                answer = await m.agent.peers.access(url, request,
                                                    host_key=host.node.identity.public_key)
            log.excluded_attempts.append((m.id, answer))


async def ask_late(b: Bed, late: Member, included: set[str]) -> AccessAnswer:
    """An included roamer of another location asks ``late`` (not kept as evidence)."""
    roamer = next(m for m in b.members if m.id in included and m.location != late.location)
    progress = roamer.agent.current
    assert progress is not None and progress.credential is not None
    entry = (await roamer.agent.directory()).by_id()[late.id]
    answer = await roamer.agent.ask(entry, progress.credential)
    assert answer is not None
    return answer


async def run_epoch(b: Bed, epoch: int, *, late: Member | None = None,
                    restart: bool = False) -> EpochLog:
    """Open, declare, (restart,) close, provide, roam, report: one whole epoch."""
    everyone = b.members
    # The last epoch's evidence was filed at its end; the hosts' rebuttal window passes
    # before this epoch's close (its audit cut-off) judges it.
    b.clock.tick(REBUTTAL_SECONDS)
    opened = await b.admin("open")
    assert opened["epoch"] == epoch
    await b.step(everyone, "declared")
    assert b.store is not None
    stored = b.store.declarations(epoch)
    # Truthful declarations (free riders declare truthfully too) are what is stored.
    assert {(n, t) for n, t, _ in stored} == {(m.id, m.theta) for m in everyone}
    if restart:
        await b.restart_coordinator()
        assert b.store is not None
        assert b.store.declarations(epoch) == stored  # every acknowledged one survives
        status = await b.status()
        assert (status["epoch"], status["phase"]) == (epoch, "open")
        assert status["counts"]["declarations"] == len(everyone)
    b.clock.tick()
    closed = await b.admin("close")
    assert closed["epoch"] == epoch
    allocation = await b.client().allocation(epoch)  # coordinator-signed, verified
    included = set(allocation.included)
    log = EpochLog(allocation=allocation)
    old = {m.id: m.agent.history[epoch - 1].credential for m in everyone
           if epoch > 0 and m.agent.history[epoch - 1].credential is not None}

    on_time = [m for m in everyone if m is not late]
    await b.step(on_time, "provided")
    if late is not None:
        # The late host decides on what it holds: still enforcing the old allocation,
        # it answers a new credential future_epoch, and nothing calls its agent.
        assert late.node.host.epoch == epoch - 1
        answer = await ask_late(b, late, included)
        assert answer.reason == "future_epoch" and answer.evidence is None
        assert late.node.host.epoch == epoch - 1
        await b.step([late], "provided")
        assert late.node.host.epoch == epoch
        progress = late.agent.history[epoch]
        assert progress.provided and progress.committed and progress.allocation == allocation
    b.clock.tick()
    await b.step(on_time, "roamed")
    await targeted_asks(b, log, included)
    if late is not None:
        await b.step([late], "roamed")
    await excluded_attempts(b, log, included, {k: v for k, v in old.items() if v})
    for m in everyone:
        resource = m.node.host.resource
        log.opened[m.id] = resource.opened
        log.granted_total[m.id] = resource.granted_total
        log.grant_count[m.id] = m.node.host.decisions.get("granted", 0)
        progress = m.agent.history[epoch]
        log.answers.extend((m.id, a) for a in progress.answers)
    await b.step(everyone, "reported")
    return log


def check_invariants(b: Bed, log: EpochLog) -> None:
    """The invariants every epoch keeps."""
    allocation = log.allocation
    epoch = allocation.epoch
    included = set(allocation.included)
    ids = {m.id: m for m in b.members}
    # Types below every threshold are never included; high types are while honest.
    assert all(not ids[n].low for n in included)
    for m in b.members:
        if not m.low and not (epoch == 1 and (m.location, m.index) in FREE_RIDERS):
            assert m.id in included, (epoch, m.location, m.index)
    if b.mechanism == "posted_fee":  # the announced terms are binding
        fees, q = b.runner.announcement_terms()
        assert allocation.q == q
        assert allocation.contributions == tuple(fees[ids[n].location] for n in
                                                 allocation.included)
    # Every grant is to an included node, within what the host opened, and accounted for.
    receipts = [a.receipt for _, a in log.answers if a.receipt is not None]
    assert receipts, "no included roamer got in"
    per_host: dict[str, list[GrantReceipt]] = {}
    for r in receipts:
        assert r.epoch == epoch and r.requester_id in included and r.host_id in included
        per_host.setdefault(r.host_id, []).append(r)
    for m in b.members:
        mine = per_host.get(m.id, [])
        assert sum(r.amount for r in mine) == log.granted_total[m.id] <= log.opened[m.id]
        assert len(mine) == log.grant_count[m.id]
    # Every included roamer's request got a verified receipt or signed refusal (a refusal
    # carries the amount asked).
    for _, a in log.answers:
        assert a.receipt is not None or a.refusal is not None, a.error
        if a.refusal is not None:
            assert a.refusal.amount is not None
    # Excluded nodes never get in; a signed refusal of one says not_included or revoked.
    assert log.excluded_attempts
    for who, a in log.excluded_attempts:
        assert who not in included and not a.granted
        if a.refusal is not None:
            assert a.refusal.reason in ("not_included", "revoked")
        else:
            assert a.error is not None and a.reason in ("bad_proof", "stale_epoch"), a.reason


# The quick run plays the posted fee with money; the other three are slow (the second best
# in kind solves for seconds).
MECHANISMS = [("posted_fee", "money"),
              pytest.param("posted_fee", "in_kind", marks=pytest.mark.slow),
              pytest.param("second_best", "money", marks=pytest.mark.slow),
              pytest.param("second_best", "in_kind", marks=pytest.mark.slow)]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("mechanism", "payment"), MECHANISMS)
async def test_three_epochs_with_free_riders_and_a_restart(
    tmp_path: Path, mechanism: str, payment: str
) -> None:
    async with bed(tmp_path, mechanism, payment) as b:
        assert len(b.members) >= 20 and {m.location for m in b.members} == {0, 1, 2}
        await b.step(b.members, "registered")
        riders = {b.member(*k).id: v for k, v in FREE_RIDERS.items()}
        busy = b.member(*BUSY)

        log0 = await run_epoch(b, 0)
        check_invariants(b, log0)
        assert riders.keys() <= set(log0.allocation.included)
        # The busy file host ran out of bytes and refused files it could no longer serve.
        busy_refusals = [a.refusal for _, a in log0.answers
                         if a.refusal is not None and a.refusal.host_id == busy.id]
        assert busy_refusals and {r.reason for r in busy_refusals} == {"capacity_exhausted"}
        assert log0.granted_total[busy.id] > log0.opened[busy.id] - FILE_BYTES

        log1 = await run_epoch(b, 1, late=busy, restart=True)
        check_invariants(b, log1)
        status = await b.status()
        excluded = {x["node_id"]: x for x in status["excluded"]}
        assert set(excluded) == set(riders)  # honest hosts are not excluded
        assert {excluded[n]["reason"] for n in riders} == {"no_commitment",
                                                           "unjustified_refusal"}
        assert excluded[b.member(*FREE_RIDERS_AT[0]).id]["reason"] == "no_commitment"
        assert all(x["detected_epoch"] == 0 and x["excluded_epoch"] == 1
                   for x in excluded.values())
        assert not riders.keys() & set(log1.allocation.included)
        late_grants = [a for _, a in log1.answers
                       if a.receipt is not None and a.receipt.host_id == busy.id]
        assert late_grants  # the late host served once its agent provided

        b.clock.tick()
        await b.admin("open")
        await b.step(b.members, "declared")
        b.clock.tick()
        closed = await b.admin("close")
        assert closed["excluded"] == []  # nobody free-rode in epoch 1
        allocation2 = await b.client().allocation(2)
        # Still out: a first offence excludes for two epochs (coordinator/penalty.py).
        assert not riders.keys() & set(allocation2.included)


@pytest.mark.asyncio
async def test_a_fresh_host_answers_future_epoch_until_its_agent_provides(tmp_path: Path) -> None:
    """Before a host has fetched its first allocation, an epoch-0 credential is not
    refused as ``not_included`` (which the audit would hold against the host) but
    ``future_epoch``, with no signed refusal; once the host's own agent provides, it
    serves."""
    async with bed(tmp_path, "posted_fee", "money") as b:
        await b.step(b.members, "registered")
        b.clock.tick()
        await b.admin("open")
        await b.step(b.members, "declared")
        await b.admin("close")
        roamer, host = b.member(0, 3), b.member(1, 3)
        await b.step([roamer], "provided")
        assert host.node.host.epoch == -1  # nothing enforced yet
        progress = roamer.agent.current
        assert progress is not None and progress.credential is not None
        entry: DirectoryEntry = (await roamer.agent.directory()).by_id()[host.id]
        answer = await roamer.agent.ask(entry, progress.credential)
        assert answer is not None and answer.reason == "future_epoch", answer
        assert answer.evidence is None and host.node.host.epoch == -1
        await b.step([host], "provided")
        assert host.node.host.epoch == 0
        answer = await roamer.agent.ask(entry, progress.credential)
        assert answer is not None and answer.granted, answer
        with pytest.raises(InkindError) as info:
            await b.client().credential(0, b.member(0, 2).id)  # a low type
        assert info.value.code == "not_included"
