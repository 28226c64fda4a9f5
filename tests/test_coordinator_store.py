"""SQLite persistence: durability settings, atomic changes, and the restart snapshot."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers.coordinator import (
    COORDINATOR,
    EPOCH_SECONDS,
    T0,
    commitment,
    declaration,
    new_core,
    node,
    raw,
    registration,
    runner,
    settings,
)

from coordinator.epoch import Change, DeclarationRecord, Declared, EpochCore, Phase
from coordinator.store import Store, StoreError, StoreLockedError


def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == 2  # FULL
    store.close()


def test_a_database_belongs_to_one_coordinator_key_and_mechanism(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    store.bind(coordinator_key=COORDINATOR.public_key, mechanism="posted_fee")
    store.bind(coordinator_key=COORDINATOR.public_key, mechanism="posted_fee")
    with pytest.raises(StoreError):
        store.bind(coordinator_key=node(0).public_key, mechanism="posted_fee")
    with pytest.raises(StoreError):
        store.bind(coordinator_key=COORDINATOR.public_key, mechanism="second_best")
    store.close()


def test_a_failed_change_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    core = new_core()
    a = node(0)
    reg = registration(a)
    registered = core.check_registration(reg, raw(a, reg), now=T0)
    assert registered is not None
    store.persist(registered)
    core.apply(registered)
    fees, q = runner().announcement_terms()
    opened = core.plan_open(T0, fees=fees, q=q)
    store.persist(opened)
    core.apply(opened)
    d = declaration(a)
    change = core.check_declaration(d, raw(a, d), T0 + 1)
    store.persist(change)
    again = Declared(record=DeclarationRecord(declaration=d, envelope=b"x", received_at=0))
    with pytest.raises(sqlite3.IntegrityError):
        store.persist(again)
    assert store.declarations(0) == [(a.node_id, d.theta, d.nonce)]
    store.close()


def test_snapshot_restores_epoch_declarations_audit_and_exclusions(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = Store(path)
    core = new_core()

    def do(change: Change | None) -> None:
        assert change is not None
        store.persist(change)
        core.apply(change)

    people = [node(i) for i in range(3)]
    for p in people:
        r = registration(p)
        do(core.check_registration(r, raw(p, r), now=T0))
    fees, q = runner().announcement_terms()
    do(core.plan_open(T0, fees=fees, q=q))
    for p in people:
        d = declaration(p, theta=950_000)
        do(core.check_declaration(d, raw(p, d), T0 + 1))
    plan = core.begin_close(T0 + EPOCH_SECONDS)
    closed = core.finish_close(plan, runner().run(plan.participants))
    do(closed)
    owed = dict(zip(closed.allocation.included, closed.allocation.contributions, strict=True))
    c = commitment(people[0], amount=owed[people[0].node_id])
    do(core.check_commitment(c, raw(people[0], c)))
    do(core.plan_open(T0 + 100, fees=fees, q=q))
    d = declaration(people[1], epoch=1)
    do(core.check_declaration(d, raw(people[1], d), T0 + 101))
    store.close()

    store = Store(path)
    back = EpochCore.restore(store.snapshot(COORDINATOR.public_key), identity=COORDINATOR,
                             settings=settings(runner()))
    assert back.phase == Phase.OPEN and back.epoch == 1
    assert back.declarations == core.declarations
    assert back.nodes == core.nodes
    assert back.audit is not None and core.audit is not None
    assert back.audit.allocation == core.audit.allocation
    assert back.audit.commitments == core.audit.commitments
    assert back.audit.windows == core.audit.windows
    assert store.allocation(0) == closed.envelope
    assert len(store.directory(0)) == 3
    # closing epoch 1 after the restart finds the same free riders as without it
    a = core.close(T0 + 200, runner().run)
    b = back.close(T0 + 200, runner().run)
    assert a.envelope == b.envelope and a.exclusions == b.exclusions
    assert {x.node_id for x in a.exclusions} == {people[1].node_id, people[2].node_id}
    store.close()


def test_one_writer_per_database(tmp_path: Path) -> None:
    first = Store(tmp_path / "c.db")
    try:
        with pytest.raises(StoreLockedError, match="another coordinator"):
            Store(tmp_path / "c.db")
        other = Store(tmp_path / "d.db")  # another database is another lock
        other.close()
    finally:
        first.close()
    Store(tmp_path / "c.db").close()  # released on close


def test_a_database_from_before_graded_exclusion_keeps_its_exclusions(tmp_path: Path) -> None:
    # The old exclusions table (no last_epoch, no standings): each offence excluded one
    # epoch. Opened now, the node is still out of that epoch and has a standing.
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE exclusions (node_id TEXT NOT NULL, excluded_epoch INTEGER NOT"
               " NULL, detected_epoch INTEGER NOT NULL, reason TEXT NOT NULL, detail TEXT NOT"
               " NULL, PRIMARY KEY (node_id, excluded_epoch, reason))")
    db.execute("INSERT INTO exclusions VALUES ('n', 4, 3, 'no_commitment', '')")
    db.commit()
    db.close()
    store = Store(path)
    try:
        snap = store.snapshot(COORDINATOR.public_key)
        [standing] = snap.standings
        assert (standing.node_id, standing.first_epoch, standing.last_epoch) == ("n", 4, 4)
        [sanction] = snap.sanctions
        assert sanction.last_epoch == 4 and sanction.offence.detected_epoch == 3
    finally:
        store.close()
    Store(path).close()  # migrating twice changes nothing
