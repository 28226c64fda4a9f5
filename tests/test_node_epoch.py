"""The node's epoch state machine (``node/epoch.py``): the table, the actions, the pure
decisions; no I/O, time is an argument."""

from __future__ import annotations

import random

import pytest
from helpers.node import NOW, ident
from hypothesis import given
from hypothesis import strategies as st

from node.client import Directory, DirectoryEntry
from node.epoch import (
    TRANSITIONS,
    Action,
    EpochMachine,
    EpochStateError,
    Event,
    Phase,
    provision,
    roam_hosts,
    roam_locations,
    step,
)
from node.strategy import FreeRide, Misreport, Truthful
from protocol import MICRO, Allocation, EpochAnnouncement

ME = ident(3).node_id


def announcement(epoch: int, *, deadline: int = NOW + 60) -> EpochAnnouncement:
    return EpochAnnouncement(
        epoch=epoch,
        mechanism="posted_fee",
        payment="in_kind",
        deadline=deadline,
        fees=(100_000,),
        q=(MICRO,),
        coordinator_key=ident(90).public_key,
    )


def allocation(epoch: int, included: tuple[str, ...] = (ME,)) -> Allocation:
    return Allocation(
        epoch=epoch,
        mechanism="posted_fee",
        q=(MICRO,),
        included=included,
        contributions=(MICRO,) * len(included),
        expected_welfare=0,
    )


def test_one_epoch_in_order_and_the_action_due_in_each_phase() -> None:
    m = EpochMachine()
    assert (m.phase, m.next_action(NOW)) == (Phase.UNREGISTERED, Action.REGISTER)
    m.on_registered()
    assert (m.phase, m.next_action(NOW)) == (Phase.IDLE, Action.POLL)
    m.on_announced(announcement(1))
    assert (m.phase, m.next_action(NOW)) == (Phase.OPEN, Action.DECLARE)
    m.on_declared(420_000)
    assert (m.phase, m.next_action(NOW)) == (Phase.CLOSING, Action.PROVIDE)
    m.on_not_closed()
    assert m.phase is Phase.CLOSING
    with pytest.raises(EpochStateError):  # no directory before the outcome
        m.on_directory(Directory(epoch=1, nodes=()))
    m.on_outcome(allocation(1), node_id=ME, credential=None)
    with pytest.raises(EpochStateError):
        m.on_directory(Directory(epoch=2, nodes=()))
    m.on_directory(Directory(epoch=1, nodes=()))
    m.on_provided(opened=MICRO, committed=True)
    assert (m.phase, m.next_action(NOW)) == (Phase.PROVIDED, Action.ROAM)
    m.on_roamed([])
    assert (m.phase, m.next_action(NOW)) == (Phase.ROAMED, Action.REPORT)
    m.on_reported()
    assert (m.phase, m.next_action(NOW)) == (Phase.REPORTED, Action.POLL)
    progress = m.history[1]
    assert progress.reported and progress.provided and progress.roamed
    assert (progress.declared_theta, progress.owed, progress.opened) == (420_000, MICRO, MICRO)


def test_past_the_deadline_the_declaration_is_skipped() -> None:
    m = EpochMachine()
    m.on_registered()
    m.on_announced(announcement(4, deadline=NOW + 60))
    assert m.next_action(NOW + 59) is Action.DECLARE
    assert m.next_action(NOW + 60) is Action.PROVIDE
    m.on_not_closed()
    assert m.phase is Phase.CLOSING and m.history[4].declared_theta is None


def test_a_node_that_missed_the_close_moves_on_and_never_back() -> None:
    m = EpochMachine()
    m.on_registered()
    m.on_announced(announcement(1))
    m.on_declaration_refused("epoch_closed")
    assert m.history[1].declaration_refused == "epoch_closed"
    assert not m.is_newer(announcement(1)) and m.is_newer(announcement(2))
    m.on_announced(announcement(2))
    assert m.phase is Phase.OPEN and m.current is m.history[2]
    with pytest.raises(EpochStateError):
        m.on_announced(announcement(1))
    assert m.current is m.history[2]


@pytest.mark.parametrize(
    "bad",
    [
        lambda m: m.on_declared(1),  # unregistered
        lambda m: m.on_roamed([]),
        lambda m: m.on_provided(opened=0, committed=False),
    ],
)
def test_events_out_of_order_are_refused_before_registering(bad: object) -> None:
    m = EpochMachine()
    with pytest.raises(EpochStateError):
        bad(m)  # type: ignore[operator]
    assert m.phase is Phase.UNREGISTERED


def test_providing_needs_the_outcome_and_the_outcome_its_own_epoch() -> None:
    m = EpochMachine()
    m.on_registered()
    m.on_announced(announcement(1))
    with pytest.raises(EpochStateError):
        m.on_provided(opened=0, committed=False)
    with pytest.raises(EpochStateError):
        m.on_outcome(allocation(2), node_id=ME, credential=None)
    assert m.phase is Phase.OPEN and m.history[1].allocation is None


@given(st.lists(st.sampled_from(list(Event)), max_size=30))
def test_the_table_is_total_or_refuses_and_refusing_changes_nothing(events: list[Event]) -> None:
    phase = Phase.UNREGISTERED
    for event in events:
        if (phase, event) in TRANSITIONS:
            phase = step(phase, event)
        else:
            with pytest.raises(EpochStateError):
                step(phase, event)
    # every phase but "unregistered" is reachable and has an action
    assert {p for _, p in TRANSITIONS.items()} == set(Phase) - {Phase.UNREGISTERED}


@pytest.mark.parametrize(
    ("owed", "payment", "capacity", "unit", "strategy", "opened", "claimed"),
    [
        (None, "in_kind", 2 * MICRO, 1, Truthful(), 0, None),  # not included
        (MICRO // 2, "in_kind", 2 * MICRO, 1, Truthful(), MICRO // 2, MICRO // 2),
        (3 * MICRO // 2, "in_kind", 5 * MICRO, MICRO, Truthful(), 2 * MICRO, 2 * MICRO),
        (3 * MICRO, "in_kind", 5 * MICRO // 2, MICRO, Truthful(), 2 * MICRO, 2 * MICRO),
        (MICRO, "money", 5 * MICRO // 2, MICRO, Truthful(), 2 * MICRO, 2 * MICRO),
        (MICRO, "money", 3 * MICRO, 1, Misreport(), 3 * MICRO, 3 * MICRO),
        (MICRO, "in_kind", 3 * MICRO, 1, FreeRide(), 0, None),
        (5 * MICRO, "in_kind", 3 * MICRO, 1, FreeRide(commit=True), 0, 3 * MICRO),
    ],
)
def test_provision_opens_whole_units_within_capacity_and_free_riders_lie(
    owed: int | None,
    payment: str,
    capacity: int,
    unit: int,
    strategy: object,
    opened: int,
    claimed: int | None,
) -> None:
    plan = provision(owed=owed, payment=payment, capacity=capacity, unit=unit, strategy=strategy)  # type: ignore[arg-type]
    assert (plan.opened, plan.claimed) == (opened, claimed)


def entry(n: int, location: int, endpoint: str | None = "127.0.0.1:1") -> DirectoryEntry:
    who = ident(n)
    return DirectoryEntry(
        node_id=who.node_id,
        public_key=who.public_key,
        location=location,
        endpoint=endpoint,
        kind="wlan_coverage",
        contribution=MICRO,
    )


def test_roaming_goes_only_to_other_locations_hosts_with_an_endpoint() -> None:
    me = ident(3)
    directory = Directory(
        epoch=1,
        nodes=(entry(3, 2), entry(4, 2), entry(5, 0), entry(6, 1, endpoint=None), entry(7, 1)),
    )
    hosts = roam_hosts(directory, node_id=me.node_id, home=2)
    assert [h.node_id for h in hosts] == [ident(5).node_id, ident(7).node_id]
    rng = random.Random(1)
    picks = roam_locations(hosts, script=None, moves=50, rng=rng)
    assert len(picks) == 50 and set(picks) == {0, 1}
    assert roam_locations(hosts, script=[1, 9], moves=50, rng=rng) == [1, 9]
    assert roam_locations([], script=None, moves=5, rng=rng) == []


def test_a_node_readmitted_with_a_debt_owes_and_opens_contribution_plus_debt() -> None:
    # Restitution (README "Graded exclusion"): the allocation charges the debt beside the
    # contribution; an honest node opens and commits the sum, so its debt is cleared.
    m = EpochMachine()
    m.on_registered()
    m.on_announced(announcement(1))
    m.on_declared(420_000)
    debtor = Allocation(epoch=1, mechanism="posted_fee", q=(MICRO,), included=(ME,),
                        contributions=(MICRO,), expected_welfare=0, debts=(MICRO // 2,))
    progress = m.on_outcome(debtor, node_id=ME, credential=None)
    assert progress.owed == MICRO + MICRO // 2
    plan = provision(owed=progress.owed, payment="in_kind", capacity=4 * MICRO, unit=MICRO,
                     strategy=Truthful())
    assert plan.opened == 2 * MICRO and plan.claimed is not None
    assert plan.claimed >= MICRO + MICRO // 2
