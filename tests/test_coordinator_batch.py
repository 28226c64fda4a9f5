"""Group commit of declarations: concurrent ones share one transaction, queued ones count
as seen (replay, duplicate), acknowledged means committed, a close takes the queue. Group
commit of commitments and audit reports: the same outcome as committing them one by one
(two touching one node's commitment or one host's evidence never share a batch)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from helpers.coordinator import (
    COORDINATOR,
    T0,
    FakeClock,
    Harness,
    audit_report,
    commitment,
    config,
    decl_payload,
    declaration,
    forge_payload,
    new_core,
    node,
    open_now,
    raw,
    receipt,
    register_all,
    registered,
    runner,
)

from coordinator.epoch import Change
from coordinator.service import COORDINATOR as APP_KEY
from coordinator.service import FLUSH_TURNS, Coordinator, make_app
from coordinator.store import Store
from protocol import Allocation, Envelope, Identity, open_envelope
from protocol.errors import DuplicateDeclarationError, ReplayError

PEOPLE = [node(i) for i in range(12)]


class Batches:
    """Wraps ``store.persist_many`` to record each batch's size."""

    def __init__(self, store: Store) -> None:
        self.sizes: list[int] = []
        self.inner = store.persist_many

    def __call__(self, changes: Sequence[Change]) -> None:
        self.sizes.append(len(changes))
        self.inner(changes)


@pytest_asyncio.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Harness, Coordinator, Batches]]:
    store = Store(tmp_path / "coord.db")
    app = make_app(config(), store=store, identity=COORDINATOR, clock=FakeClock(),
                   runner=runner())
    batches = Batches(store)
    store.persist_many = batches  # type: ignore[method-assign]
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        h = Harness(client=client, store=store, clock=app[APP_KEY].clock)  # type: ignore[arg-type]
        await register_all(h, PEOPLE)
        await h.ok("/v1/admin/open", admin=True)
        yield h, app[APP_KEY], batches
    store.close()


def committed(h: Harness) -> int:
    """Declarations visible to another connection (what survives kill -9)."""
    db = sqlite3.connect(h.store.path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM declarations").fetchone()[0])
    finally:
        db.close()


async def post_all(h: Harness, bodies: Sequence[bytes]) -> list[tuple[int, Any]]:
    return list(await asyncio.gather(*(h.post("/v1/declarations", b) for b in bodies)))


@pytest.mark.asyncio
async def test_concurrent_declarations_share_transactions(
        opened: tuple[Harness, Coordinator, Batches]) -> None:
    h, c, batches = opened
    answers = await post_all(h, [raw(p, declaration(p)) for p in PEOPLE])
    assert all(code == 200 and data["accepted"] == 1 for code, data in answers)
    assert sum(batches.sizes) == len(PEOPLE)
    assert committed(h) == len(PEOPLE) == len(c.core.declarations)
    assert not c._queue and not c._queued_nodes and not c._queued_nonces


@pytest.mark.asyncio
async def test_acknowledged_only_after_commit(opened: tuple[Harness, Coordinator, Batches]) -> None:
    h, c, batches = opened
    futures = [c.declare(raw(p, declaration(p)), declaration(p)) for p in PEOPLE[:5]]
    assert committed(h) == 0 and not c.core.declarations  # queued, not yet applied
    assert not any(f.done() for f in futures)
    await asyncio.gather(*futures)
    assert batches.sizes == [5]  # one transaction for the whole queue
    assert committed(h) == 5 and len(c.core.declarations) == 5


@pytest.mark.asyncio
async def test_declarations_of_the_next_loop_turns_join_a_growing_batch(
        opened: tuple[Harness, Coordinator, Batches]) -> None:
    h, c, batches = opened
    futures = []
    for p in PEOPLE[:3]:  # one declaration per loop turn, as requests read turn by turn
        futures.append(c.declare(raw(p, declaration(p)), declaration(p)))
        await asyncio.sleep(0)
    await asyncio.gather(*futures)
    assert batches.sizes == [3]  # one transaction, one fsync
    assert committed(h) == 3


@pytest.mark.asyncio
async def test_a_batch_is_committed_within_a_few_loop_turns_even_while_it_grows(
        opened: tuple[Harness, Coordinator, Batches]) -> None:
    h, c, batches = opened
    lone = c.declare(raw(PEOPLE[0], declaration(PEOPLE[0])), declaration(PEOPLE[0]))
    turns = 0
    while not lone.done():  # nothing else arrives: it waits one turn, not for ever
        await asyncio.sleep(0)
        turns += 1
    assert turns <= 2 and batches.sizes == [1]
    # A declaration arriving in every turn delays a batch by FLUSH_TURNS turns at most.
    stream: list[asyncio.Future[None]] = []
    for p in PEOPLE[1:]:
        stream.append(c.declare(raw(p, declaration(p)), declaration(p)))
        await asyncio.sleep(0)
        if stream[0].done():
            break
    assert stream[0].done() and len(stream) <= FLUSH_TURNS + 1
    await asyncio.gather(*stream)
    assert batches.sizes[1] <= FLUSH_TURNS + 1
    assert committed(h) == sum(batches.sizes) == len(c.core.declarations) == 1 + len(stream)


@pytest.mark.asyncio
async def test_identical_declarations_in_one_batch(
        opened: tuple[Harness, Coordinator, Batches]) -> None:
    h, _, _ = opened
    a = PEOPLE[0]
    body = raw(a, declaration(a))
    answers = await post_all(h, [body] * 3)
    assert sorted(code for code, _ in answers) == [200, 409, 409]
    assert sorted(d.get("code", "") for _, d in answers) == ["", "replay", "replay"]
    assert committed(h) == 1 and h.store.declarations(0)[0][0] == a.node_id


@pytest.mark.asyncio
async def test_queued_declarations_count_for_replay_and_duplicate(
        opened: tuple[Harness, Coordinator, Batches]) -> None:
    h, c, _ = opened
    a, b = PEOPLE[0], PEOPLE[1]
    first = declaration(a, n=1)
    pending = c.declare(raw(a, first), first)
    # Same node, new nonce: duplicate.
    again = declaration(a, n=2)
    code, data = await h.post("/v1/declarations", raw(a, again))
    assert (code, data["code"]) == (409, "duplicate_declaration")
    # Another node reusing the queued nonce: replay.
    stolen = declaration(b, n=1)
    code, data = await h.post("/v1/declarations", raw(b, stolen))
    assert (code, data["code"]) == (409, "replay")
    await pending
    assert h.store.declarations(0) == [(a.node_id, first.theta, first.nonce)]
    # After the commit the core's own records give the same answers.
    code, data = await h.post("/v1/declarations", raw(b, stolen))
    assert (code, data["code"]) == (409, "replay")


@pytest.mark.asyncio
async def test_refused_declaration_in_a_burst_changes_nothing(
        opened: tuple[Harness, Coordinator, Batches]) -> None:
    h, c, _ = opened
    good = [raw(p, declaration(p)) for p in PEOPLE[:4]]
    bad = forge_payload(PEOPLE[4], "declaration", decl_payload(PEOPLE[4], theta=1_000_001))
    answers = await post_all(h, [*good[:2], bad, *good[2:]])
    assert [code for code, _ in answers] == [200, 200, 400, 200, 200]
    assert answers[2][1]["code"] == "out_of_range"
    assert committed(h) == 4 and PEOPLE[4].node_id not in c.core.declarations


@pytest.mark.asyncio
async def test_close_takes_queued_declarations(
        opened: tuple[Harness, Coordinator, Batches]) -> None:
    h, c, _ = opened
    futures = [c.declare(raw(p, declaration(p, theta=950_000)), declaration(p, theta=950_000))
               for p in PEOPLE[:3]]
    closed = await c.close_epoch()  # flushes the queue before the cut-off
    assert all(f.done() and f.exception() is None for f in futures)
    assert committed(h) == 3
    _, alloc = open_envelope(closed.envelope, Allocation, trusted={COORDINATOR.public_key})
    assert set(alloc.included) == {p.node_id for p in PEOPLE[:3]}
    code, data = await h.post("/v1/declarations", raw(PEOPLE[5], declaration(PEOPLE[5])))
    assert (code, data["code"]) == (409, "epoch_closed")


@pytest.mark.asyncio
async def test_failed_batch_is_retried_one_by_one(
        opened: tuple[Harness, Coordinator, Batches], monkeypatch: pytest.MonkeyPatch) -> None:
    h, c, _ = opened
    store = h.store
    victim = PEOPLE[1].node_id

    def broken_batch(changes: Sequence[Change]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    real_persist = store.persist

    def persist(change: Change) -> None:
        if getattr(change, "record", None) is not None and \
                change.record.declaration.node_id == victim:  # type: ignore[union-attr]
            raise sqlite3.OperationalError("disk I/O error")
        real_persist(change)

    monkeypatch.setattr(store, "persist_many", broken_batch)
    monkeypatch.setattr(store, "persist", persist)
    answers = await post_all(h, [raw(p, declaration(p)) for p in PEOPLE[:3]])
    assert [code for code, _ in answers] == [200, 500, 200]
    assert committed(h) == 2 and victim not in c.core.declarations
    monkeypatch.undo()
    # Nothing of the failed one was kept: it can be declared again.
    code, _ = await h.post("/v1/declarations", raw(PEOPLE[1], declaration(PEOPLE[1])))
    assert code == 200 and committed(h) == 3


def test_core_counts_queued_ones_in_protocol_order() -> None:
    """Pure core: replay before duplicate before θ support, queued ones included."""
    core = new_core()
    core.settings = dataclasses.replace(core.settings, theta_bounds=((0, 500_000),))
    a, b = registered(core, 2)
    open_now(core)
    before = (dict(core.declarations), core.guard.seen(0, declaration(a, n=1).nonce))
    nonces, nodes = {(0, declaration(a, n=1).nonce)}, {a.node_id}

    def check(d: object) -> None:
        assert isinstance(d, type(declaration(a)))
        core.check_declaration(d, b"", T0 + 1, queued_nonces=nonces, queued_nodes=nodes)

    with pytest.raises(ReplayError):  # queued nonce, even from another node, θ too high
        check(declaration(b, n=1, theta=900_000))
    with pytest.raises(DuplicateDeclarationError):  # queued node, θ out of its support
        check(declaration(a, n=2, theta=900_000))
    assert check(declaration(b, n=3, theta=400_000)) is None
    assert (dict(core.declarations), core.guard.seen(0, declaration(a, n=1).nonce)) == before


# --- commitments and audit reports (Coordinator.submit) ------------------------------------


@pytest_asyncio.fixture
async def closed(opened: tuple[Harness, Coordinator, Batches]
                 ) -> AsyncIterator[tuple[Harness, Coordinator, Batches, list[Identity]]]:
    """Epoch 0 closed with most of PEOPLE included (they declared a high θ)."""
    h, c, batches = opened
    await post_all(h, [raw(p, declaration(p, theta=950_000)) for p in PEOPLE])
    await c.close_epoch()
    assert c.core.audit is not None
    included = [p for p in PEOPLE if p.node_id in c.core.audit.allocation.included]
    assert len(included) >= 4
    batches.sizes.clear()
    yield h, c, batches, included


def stored_commitments(h: Harness) -> dict[str, int]:
    db = sqlite3.connect(h.store.path)
    try:
        return {str(n): int(v) for n, v in
                db.execute("SELECT node_id, contribution FROM commitments")}
    finally:
        db.close()


def submit_commitment(c: Coordinator, who: Identity, amount: int) -> asyncio.Future[Change]:
    m = commitment(who, amount=amount)
    return c.submit(functools.partial(c.core.check_commitment, m, raw(who, m)),
                    frozenset({("commitment", who.node_id)}))


def submit_report(c: Coordinator, reporter: Identity, evidence: list[Envelope]
                  ) -> asyncio.Future[Change]:
    report = audit_report(reporter, evidence)
    check = functools.partial(c.core.check_audit, reporter.node_id, report, now=c.clock())
    return c.submit(check, frozenset(("host", e.signer) for e in evidence))


@pytest.mark.asyncio
async def test_concurrent_commitments_share_one_transaction(
        closed: tuple[Harness, Coordinator, Batches, list[Identity]]) -> None:
    h, c, batches, included = closed
    futures = [submit_commitment(c, p, 1000 + i) for i, p in enumerate(included)]
    assert not stored_commitments(h) and not any(f.done() for f in futures)
    await asyncio.gather(*futures)
    assert batches.sizes == [len(included)]
    want = {p.node_id: 1000 + i for i, p in enumerate(included)}
    assert stored_commitments(h) == want
    assert c.core.audit is not None and c.core.audit.commitments == want
    # Over HTTP too: every answer comes after its commit.
    answers = await asyncio.gather(*(h.post("/v1/commitments", raw(p, commitment(p, amount=5)))
                                     for p in included))
    assert all(code == 200 for code, _ in answers)
    assert stored_commitments(h) == want  # lower ones never lower the highest


@pytest.mark.asyncio
async def test_one_nodes_commitments_in_one_flush_are_judged_one_after_another(
        closed: tuple[Harness, Coordinator, Batches, list[Identity]]) -> None:
    h, c, batches, included = closed
    a, b = included[0], included[1]
    futures = [submit_commitment(c, a, 3000), submit_commitment(c, b, 10),
               submit_commitment(c, a, 5000), submit_commitment(c, a, 1000)]
    changes = await asyncio.gather(*futures)
    # a's three never share a batch: each is checked with the one before applied.
    assert batches.sizes == [2, 1, 1]
    amounts = [ch.commitment.contribution for ch in changes]  # type: ignore[union-attr]
    assert amounts == [3000, 10, 5000, 5000]  # the highest so far counts
    assert stored_commitments(h) == {a.node_id: 5000, b.node_id: 10}


@pytest.mark.asyncio
async def test_a_refused_commitment_in_a_burst_refuses_only_itself(
        closed: tuple[Harness, Coordinator, Batches, list[Identity]]) -> None:
    h, _, _, included = closed
    stranger = node(40)
    bodies = [raw(p, commitment(p, amount=7)) for p in included[:3]]
    bodies.insert(1, raw(included[3], commitment(included[3], amount=7, epoch=5)))
    answers = await asyncio.gather(*(h.post("/v1/commitments", b) for b in bodies))
    assert [code for code, _ in answers] == [200, 409, 200, 200]
    assert answers[1][1]["code"] == "future_epoch"
    code, data = await h.post("/v1/commitments", raw(stranger, commitment(stranger, amount=7)))
    assert code in (401, 403) and data["code"] == "unknown_key"
    assert stored_commitments(h) == {p.node_id: 7 for p in included[:3]}


@pytest.mark.asyncio
async def test_reports_naming_one_host_respect_its_quota_as_if_filed_one_by_one(
        closed: tuple[Harness, Coordinator, Batches, list[Identity]]) -> None:
    h, c, batches, included = closed
    c.core.settings = dataclasses.replace(c.core.settings, max_evidence_per_signer=3)
    host, other = included[0], included[1]
    roamers = included[2:6] if len(included) >= 6 else included[2:]
    t = h.clock() + 1
    futures = []
    # Receipts: what the quota bounds (refusals are bounded per host and requester).
    for i, r in enumerate(roamers):  # each reports two receipts by the same host
        evidence = [receipt(host, r, amount=1, time=t, n=10 * i + k) for k in range(2)]
        futures.append(submit_report(c, r, evidence))
    # One by another host, and the first report again (nothing new in it).
    futures.append(submit_report(c, roamers[0], [
        receipt(other, roamers[0], amount=1, time=t, n=99)]))
    futures.append(submit_report(c, roamers[0], [
        receipt(host, roamers[0], amount=1, time=t, n=k) for k in range(2)]))
    changes = await asyncio.gather(*futures)
    new = [len(ch.new_items) for ch in changes]  # type: ignore[union-attr]
    assert new == [2, 1] + [0] * (len(roamers) - 2) + [1, 0]
    assert batches.sizes[0] == 2  # the other host's report rode with the first
    assert len(batches.sizes) == len(roamers) + 1
    assert c.core.audit is not None
    assert c.core.audit.per_signer == {host.node_id: 3, other.node_id: 1}
    assert h.store.count("evidence") == 4


@pytest.mark.asyncio
async def test_close_takes_queued_commitments_and_reports(
        closed: tuple[Harness, Coordinator, Batches, list[Identity]]) -> None:
    h, c, _, included = closed
    await h.ok("/v1/admin/open", admin=True)
    pending = [submit_commitment(c, p, 2000) for p in included]
    await c.close_epoch()  # the audit cut-off of epoch 0: the queue is judged first
    assert all(f.done() and f.exception() is None for f in pending)
    assert stored_commitments(h) == {p.node_id: 2000 for p in included}
