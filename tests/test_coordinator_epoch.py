"""The pure epoch state machine: transition table, declarations, close, restore."""

from __future__ import annotations

import itertools

import pytest
from helpers.coordinator import (
    COORDINATOR,
    EPOCH_SECONDS,
    GRACE,
    PAUSE_SECONDS,
    T0,
    declaration,
    new_core,
    node,
    open_now,
    raw,
    registered,
    registration,
    runner,
    settings,
)

from coordinator.epoch import (
    TRANSITIONS,
    Declared,
    EpochCore,
    Event,
    Phase,
    Snapshot,
    step,
)
from protocol import Allocation, Credential, Identity, InkindError, open_envelope
from protocol.errors import WrongPhaseError


def declare(core: EpochCore, who: Identity, now: int = T0 + 1, **kw: int) -> Declared:
    decl = declaration(who, epoch=core.epoch or 0, **kw)
    change = core.check_declaration(decl, raw(who, decl), now)
    core.apply(change)
    return change


def fingerprint(core: EpochCore) -> tuple[object, ...]:
    return (core.phase, core.epoch, dict(core.declarations), dict(core.nodes),
            list(core.exclusions), core.audit and dict(core.audit.commitments))


# --- the table ----------------------------------------------------------------------------


def test_every_pair_missing_from_the_table_is_wrong_phase() -> None:
    for phase, event in itertools.product(Phase, Event):
        if (phase, event) in TRANSITIONS:
            assert step(phase, event) == TRANSITIONS[(phase, event)]
        else:
            with pytest.raises(WrongPhaseError):
                step(phase, event)


def test_the_table_walks_idle_open_closing_closed_open() -> None:
    phase = Phase.IDLE
    for event in (Event.OPEN, Event.DECLARE, Event.BEGIN_CLOSE, Event.ABORT_CLOSE,
                  Event.BEGIN_CLOSE, Event.FINISH_CLOSE, Event.COMMIT, Event.AUDIT, Event.OPEN):
        phase = step(phase, event)
    assert phase == Phase.OPEN


def test_registration_is_accepted_in_every_phase() -> None:
    assert all((phase, Event.REGISTER) in TRANSITIONS for phase in Phase)


def test_opening_twice_or_closing_when_idle_is_refused_without_change() -> None:
    core = new_core()
    with pytest.raises(WrongPhaseError):
        core.begin_close(T0)
    open_now(core)
    before = fingerprint(core)
    with pytest.raises(WrongPhaseError):
        core.plan_open(T0, fees=(), q=())
    assert fingerprint(core) == before


# --- announcement and declarations ------------------------------------------------------


def test_first_epoch_is_zero_with_deadline_and_posted_fee_terms() -> None:
    core = new_core()
    open_now(core)
    assert core.phase == Phase.OPEN and core.epoch == 0
    assert core.current is not None
    ann = core.current.announcement
    assert ann.deadline == T0 + EPOCH_SECONDS
    assert ann.mechanism == "posted_fee" and ann.payment == "money"
    assert len(ann.fees) == len(ann.q) == 1 and ann.fees[0] > 0 and ann.q[0] > 0
    _signer, opened = open_envelope(core.current.envelope, type(ann),
                                   trusted={COORDINATOR.public_key})
    assert opened == ann


def test_optimal_mechanism_announces_no_fees() -> None:
    core = new_core(runner("one", "second_best"))
    core.apply(core.plan_open(T0, fees=(), q=()))
    assert core.current is not None
    assert core.current.announcement.mechanism == "optimal"
    assert core.current.announcement.fees == ()


@pytest.mark.parametrize(
    ("when", "epoch_delta", "code"),
    [
        ("idle", 0, "future_epoch"),
        ("open", 1, "future_epoch"),
        ("late", 0, "epoch_closed"),
        ("closed", 0, "epoch_closed"),
        ("closed", 1, "future_epoch"),
        ("next", -1, "stale_epoch"),
    ],
)
def test_declarations_outside_the_open_window_are_refused(when: str, epoch_delta: int,
                                                          code: str) -> None:
    core = new_core()
    (a, b) = registered(core, 2)
    now = T0 + 1
    if when != "idle":
        open_now(core)
    if when == "late":
        now = T0 + EPOCH_SECONDS
    if when in ("closed", "next"):
        declare(core, b)
        core.close(T0 + EPOCH_SECONDS, runner().run)
        now = T0 + EPOCH_SECONDS + 1
    if when == "next":
        open_now(core, now)
    epoch = (core.epoch or 0) + epoch_delta
    decl = declaration(a, epoch=epoch)
    before = fingerprint(core)
    with pytest.raises(InkindError) as info:
        core.check_declaration(decl, raw(a, decl), now)
    assert info.value.code == code
    assert fingerprint(core) == before


def test_replayed_nonce_and_second_declaration_are_refused() -> None:
    core = new_core()
    a, b = registered(core, 2)
    open_now(core)
    first = declare(core, a, n=7)
    before = fingerprint(core)
    for who, n, code in ((a, 7, "replay"), (b, 7, "replay"), (a, 8, "duplicate_declaration")):
        decl = declaration(who, epoch=0, n=n)
        with pytest.raises(InkindError) as info:
            core.check_declaration(decl, raw(who, decl), T0 + 2)
        assert info.value.code == code
    assert fingerprint(core) == before
    assert core.declarations[a.node_id] == first.record


def test_theta_outside_the_locations_support_is_refused() -> None:
    core = new_core(runner("narrow"))
    (a,) = registered(core, 1)
    core.apply(core.plan_open(T0, fees=(1,), q=(1,)))
    decl = declaration(a, theta=900_000)  # the prior is U[0, 0.8]
    with pytest.raises(InkindError) as info:
        core.check_declaration(decl, raw(a, decl), T0 + 1)
    assert info.value.code == "out_of_range"
    assert core.declarations == {}


def test_registration_outside_the_market_and_older_registrations_are_refused() -> None:
    core = new_core()
    a = node(0)
    for reg, code in ((registration(a, location=1), "out_of_range"),):
        with pytest.raises(InkindError) as info:
            core.check_registration(reg, raw(a, reg))
        assert info.value.code == code
    newer = registration(a, epoch=3)
    core.apply(core.check_registration(newer, raw(a, newer)))  # type: ignore[arg-type]
    older = registration(a, epoch=2, capacity=1)
    with pytest.raises(InkindError) as info:
        core.check_registration(older, raw(a, older))
    assert info.value.code == "stale_epoch"
    assert core.nodes[a.node_id].registration == newer
    assert core.check_registration(newer, raw(a, newer)) is None  # identical: idempotent


def test_a_replayed_registration_cannot_roll_back_a_newer_one_in_the_same_epoch() -> None:
    # A node restarted on a new port re-registers in the same epoch with a later `issued`;
    # an attacker replaying the old envelope must not restore the old endpoint.
    core = new_core()
    a = node(0)
    old = registration(a, endpoint="127.0.0.1:1111", issued=T0)
    core.apply(core.check_registration(old, raw(a, old)))  # type: ignore[arg-type]
    new = registration(a, endpoint="127.0.0.1:2222", issued=T0 + 5)
    core.apply(core.check_registration(new, raw(a, new)))  # type: ignore[arg-type]
    for replay in (old, registration(a, endpoint="127.0.0.1:3333", issued=T0 + 5),
                   registration(a, endpoint="127.0.0.1:4444")):
        with pytest.raises(InkindError) as info:
            core.check_registration(replay, raw(a, replay))
        assert info.value.code == "stale_epoch"
    assert core.nodes[a.node_id].registration == new
    assert core.check_registration(new, raw(a, new)) is None  # resent: idempotent


# --- closing ----------------------------------------------------------------------------


def test_close_allocates_to_declarants_and_issues_credentials() -> None:
    core = new_core()
    people = registered(core, 4)
    open_now(core)
    for p in people[:3]:
        declare(core, p, theta=950_000)
    declare(core, people[3], theta=10_000)  # below any threshold
    closed = core.close(T0 + EPOCH_SECONDS, runner().run)
    assert core.phase == Phase.CLOSED
    alloc = closed.allocation
    assert list(alloc.included) == sorted(p.node_id for p in people[:3])
    assert all(c > 0 for c in alloc.contributions)
    assert alloc.q[0] > 0
    _, opened = open_envelope(closed.envelope, Allocation, trusted={COORDINATOR.public_key})
    assert opened == alloc
    assert {c.credential.node_id for c in closed.credentials} == set(alloc.included)
    for c in closed.credentials:
        _, cred = open_envelope(c.envelope, Credential, trusted={COORDINATOR.public_key})
        assert cred.not_before == T0 + EPOCH_SECONDS
        assert cred.expires == T0 + EPOCH_SECONDS + PAUSE_SECONDS + EPOCH_SECONDS + GRACE
        assert cred.epoch == 0 and cred.location == 0


def test_close_with_no_declarations_includes_nobody() -> None:
    core = new_core()
    open_now(core)
    closed = core.close(T0 + EPOCH_SECONDS, runner().run)
    assert closed.allocation.included == () and closed.allocation.q == (0,)


def test_identical_declarations_give_byte_identical_allocations() -> None:
    envelopes = set()
    for order in (range(4), reversed(range(4))):
        core = new_core()
        people = registered(core, 4)
        open_now(core)
        for i in order:
            declare(core, people[i], theta=500_000 + 100_000 * i, now=T0 + 1 + i)
        envelopes.add(core.close(T0 + EPOCH_SECONDS, runner().run).envelope)
    assert len(envelopes) == 1


def test_a_failing_mechanism_leaves_the_epoch_open() -> None:
    core = new_core()
    (a,) = registered(core, 1)
    open_now(core)
    declare(core, a)

    def broken(_: object) -> None:
        raise RuntimeError("solver crashed")

    with pytest.raises(RuntimeError):
        core.close(T0 + EPOCH_SECONDS, broken)  # type: ignore[arg-type]
    assert core.phase == Phase.OPEN and a.node_id in core.declarations


def test_closing_refuses_declarations_while_the_mechanism_runs() -> None:
    core = new_core()
    _a, b = registered(core, 2)
    open_now(core)
    core.begin_close(T0 + 1)  # an admin close before the deadline
    decl = declaration(b)
    with pytest.raises(InkindError) as info:
        core.check_declaration(decl, raw(b, decl), T0 + 2)
    assert info.value.code == "epoch_closed"


def test_restore_gives_the_same_epoch_and_declarations() -> None:
    core = new_core()
    people = registered(core, 3)
    open_now(core)
    for p in people:
        declare(core, p)
    snap = Snapshot(nodes=tuple(core.nodes.values()), current=core.current,
                    declarations=tuple(core.declarations.values()))
    again = EpochCore.restore(snap, identity=COORDINATOR, settings=settings(runner()))
    assert again.phase == Phase.OPEN and again.epoch == 0
    assert again.declarations == core.declarations
    p = people[0]
    decl = declaration(p)  # the same nonce: the replay guard was rebuilt too
    with pytest.raises(InkindError) as info:
        again.check_declaration(decl, raw(p, decl), T0 + 2)
    assert info.value.code == "replay"
