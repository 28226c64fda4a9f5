"""The pure epoch state machine: transition table, declarations, close, restore."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.coordinator import (
    COORDINATOR,
    EPOCH_SECONDS,
    GRACE,
    PAUSE_SECONDS,
    T0,
    audit_report,
    commitment,
    declaration,
    new_core,
    node,
    open_now,
    raw,
    receipt,
    refusal,
    registered,
    registration,
    runner,
    settings,
)
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from coordinator.epoch import (
    CLOCK_SKEW,
    TRANSITIONS,
    Declared,
    EpochCore,
    Event,
    Phase,
    Snapshot,
    step,
)
from coordinator.penalty import PenaltyPolicy, forgotten, sentence
from coordinator.store import Store
from protocol import Allocation, Credential, Identity, InkindError, open_envelope
from protocol.errors import WrongPhaseError


def declare(core: EpochCore, who: Identity, now: int = T0 + 1, **kw: int) -> Declared:
    decl = declaration(who, epoch=core.epoch or 0, **kw)
    change = core.check_declaration(decl, raw(who, decl), now)
    core.apply(change)
    return change


def fingerprint(core: EpochCore) -> tuple[object, ...]:
    return (core.phase, core.epoch, dict(core.declarations), dict(core.nodes),
            list(core.sanctions), dict(core.standings),
            core.audit and dict(core.audit.commitments))


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
            core.check_registration(reg, raw(a, reg), now=T0)
        assert info.value.code == code
    open_now(core)  # epoch 0 open: registrations may name epochs 0 and 1
    newer = registration(a, epoch=1)
    core.apply(core.check_registration(newer, raw(a, newer), now=T0))  # type: ignore[arg-type]
    older = registration(a, epoch=0, capacity=1)
    with pytest.raises(InkindError) as info:
        core.check_registration(older, raw(a, older), now=T0)
    assert info.value.code == "stale_epoch"
    assert core.nodes[a.node_id].registration == newer
    assert core.check_registration(newer, raw(a, newer), now=T0) is None  # identical: idempotent


@pytest.mark.parametrize(("changes", "code"), [
    ({"issued": T0 + CLOCK_SKEW + 1}, "not_yet_valid"),
    ({"issued": T0 + 10**9}, "not_yet_valid"),
    ({"epoch": 1}, "future_epoch"),  # nothing opened yet: the next epoch is 0
    ({"epoch": 10**6, "issued": T0}, "future_epoch"),
])
def test_registrations_dated_in_the_future_are_refused_and_cannot_lock_updates(
        changes: dict[str, int], code: str) -> None:
    core = new_core()
    a = node(0)
    future = registration(a, **changes)
    with pytest.raises(InkindError) as info:
        core.check_registration(future, raw(a, future), now=T0)
    assert info.value.code == code and core.nodes == {}
    # Within the skew is fine, and the node can still update itself later.
    soon = registration(a, issued=T0 + CLOCK_SKEW)
    core.apply(core.check_registration(soon, raw(a, soon), now=T0))  # type: ignore[arg-type]
    later = registration(a, issued=T0 + CLOCK_SKEW + 1, capacity=7)
    change = core.check_registration(later, raw(a, later), now=T0 + 1)
    assert change is not None and change.node.registration.capacity == 7


def test_the_audit_judges_credential_windows_with_the_gates_skew() -> None:
    # A host whose clock is 30 s slow grants an included roamer just after the credential
    # became valid (host time before not_before) and then refuses it for capacity: its
    # receipt must count, so the refusal is justified and nobody is excluded.
    core, (a, b, c), _ = closed_epoch_with_outsider()
    assert core.audit is not None
    not_before = core.audit.windows[b.node_id][0]
    owed = dict(zip(core.audit.allocation.included, core.audit.allocation.contributions,
                    strict=True))
    for p in (a, b, c):
        cm = commitment(p, amount=owed[p.node_id])
        core.apply(core.check_commitment(cm, raw(p, cm)))
    slow = not_before - 30
    report = core.check_audit(b.node_id, audit_report(b, [
        receipt(a, b, amount=owed[a.node_id], time=slow, n=1),
        refusal(a, b, reason="capacity_exhausted", time=slow + 1, n=2, amount=1)]))
    assert len(report.new_items) == 2
    core.apply(report)
    open_now(core, T0 + 2 * EPOCH_SECONDS)
    plan = core.begin_close(T0 + 3 * EPOCH_SECONDS)
    assert plan.exclusions == ()


def test_a_replayed_registration_cannot_roll_back_a_newer_one_in_the_same_epoch() -> None:
    # A node restarted on a new port re-registers in the same epoch with a later `issued`;
    # an attacker replaying the old envelope must not restore the old endpoint.
    core = new_core()
    a = node(0)
    old = registration(a, endpoint="127.0.0.1:1111", issued=T0)
    core.apply(core.check_registration(old, raw(a, old), now=T0))  # type: ignore[arg-type]
    new = registration(a, endpoint="127.0.0.1:2222", issued=T0 + 5)
    core.apply(core.check_registration(new, raw(a, new), now=T0))  # type: ignore[arg-type]
    for replay in (old, registration(a, endpoint="127.0.0.1:3333", issued=T0 + 5),
                   registration(a, endpoint="127.0.0.1:4444")):
        with pytest.raises(InkindError) as info:
            core.check_registration(replay, raw(a, replay), now=T0)
        assert info.value.code == "stale_epoch"
    assert core.nodes[a.node_id].registration == new
    assert core.check_registration(new, raw(a, new), now=T0) is None  # resent: idempotent


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


# --- graded exclusion (coordinator/penalty.py) ---------------------------------------------


def play_with_a_free_rider(core: EpochCore, people: list[Identity], epochs: int,
                           offends: Callable[[int], bool] = lambda e: True,
                           after: Callable[[int], None] = lambda e: None) -> list[int]:
    """Epochs 0 .. epochs-1; people[0] commits nothing when ``offends(epoch)``, the
    others commit what they owe. The epochs the rider was included in."""
    rider = people[0]
    included = []
    for e in range(epochs):
        now = T0 + 2 * e * EPOCH_SECONDS
        open_now(core, now)
        for p in people:
            declare(core, p, now + 1, theta=950_000)
        closed = core.close(now + EPOCH_SECONDS, runner().run)
        owed = dict(zip(closed.allocation.included, closed.allocation.contributions,
                        strict=True))
        if rider.node_id in owed:
            included.append(e)
        for p in people:
            if p.node_id in owed and (p is not rider or not offends(e)):
                c = commitment(p, epoch=e, amount=owed[p.node_id])
                core.apply(core.check_commitment(c, raw(p, c)))
        after(e)
    return included


def test_a_persistent_free_rider_is_out_longer_each_time_never_every_other_epoch() -> None:
    core = new_core()
    people = registered(core, 3)
    # Caught at 0: out 1-2 (base 2); caught at 3 with no readmitted epoch to decay: out
    # 4-7; caught at 8: out 9-16.
    assert play_with_a_free_rider(core, people, 14) == [0, 3, 8]
    s = core.standings[people[0].node_id]
    assert (s.offences, s.first_epoch, s.last_epoch) == (3, 9, 16)
    honest = {p.node_id for p in people[1:]}
    assert not honest & core.standings.keys()  # nobody honest was ever penalised
    assert [x.offence.reason for x in core.sanctions] == ["no_commitment"] * 3
    assert [x.last_epoch for x in core.sanctions] == [2, 7, 16]


def test_forgiveness_decays_while_readmitted() -> None:
    policy = PenaltyPolicy(base_epochs=2, growth=2.0, half_life=4.0, max_epochs=64)
    first = sentence(policy, None, "n", 0)
    assert (first.score, first.first_epoch, first.last_epoch) == (1.0, 1, 2)
    at_once = sentence(policy, first, "n", 3)  # caught at readmission: no decay
    assert (at_once.score, at_once.last_epoch - at_once.first_epoch + 1) == (2.0, 4)
    later = sentence(policy, first, "n", 3 + 4)  # four clean epochs: half the score
    assert later.score == pytest.approx(1.5) and later.last_epoch - later.first_epoch + 1 == 3
    much_later = sentence(policy, first, "n", 3 + 400)
    assert much_later.last_epoch - much_later.first_epoch + 1 == policy.base_epochs
    assert sentence(policy, at_once, "n", 3) is at_once  # idempotent per epoch
    assert not forgotten(policy, first, 2)  # still excluded
    assert forgotten(policy, first, 3 + 4 * 5)  # 1/32 < FORGET_BELOW, served


@settings_(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.floats(1.0, 4.0), st.floats(0.5, 50.0),
       st.lists(st.integers(0, 12), min_size=1, max_size=12), st.floats(0.0, 1.0))
def test_free_riding_never_pays_above_the_documented_ratio(
        base: int, growth: float, half_life: float, waits: list[int], extra: float) -> None:
    # A rider saving its contribution C in each epoch it is caught, losing the net
    # benefit B - C of each epoch it is out; readmitted, it waits `w` honest epochs
    # before offending again. At B/C >= 1 + 1/base (README "Graded exclusion") no
    # schedule of offences gains anything, and every exclusion is at least base long.
    policy = PenaltyPolicy(base_epochs=base, growth=growth, half_life=half_life,
                           max_epochs=max(64, base))
    C = 1.0
    B = C * (1.0 + 1.0 / base) * (1.0 + extra)
    standing, epoch, gain = None, 0, 0.0
    for w in waits:
        epoch += w
        standing = sentence(policy, standing, "rider", epoch)
        out = standing.last_epoch - standing.first_epoch + 1
        assert base <= out <= policy.max_epochs
        gain += C - out * (B - C)
        epoch = standing.last_epoch + 1
    assert gain <= 1e-9


@pytest.mark.parametrize("kwargs", [
    {"base_epochs": 0}, {"base_epochs": 5, "max_epochs": 4}, {"growth": 0.5},
    {"growth": math.nan}, {"half_life": 0.0}, {"half_life": math.inf},
    {"history_epochs": -1}])
def test_penalty_policy_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PenaltyPolicy(**kwargs)


def test_exclusion_history_is_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    policy = PenaltyPolicy(base_epochs=1, growth=1.0, half_life=1.0, max_epochs=1,
                           history_epochs=2)
    run = runner()
    sett = dataclasses.replace(settings(run), penalty=policy)
    store = Store(tmp_path / "c.db")
    core = EpochCore(identity=COORDINATOR, settings=sett)
    people = []
    for p in (node(i) for i in range(3)):
        r = registration(p)
        change = core.check_registration(r, raw(p, r), now=T0)
        assert change is not None
        store.persist(change)
        core.apply(change)
        people.append(p)
    sizes = []

    def persist_last(e: int) -> None:
        sizes.append((store.count("exclusions"), store.count("standings"), len(core.sanctions)))

    # Drive through the store: wrap apply so every change is persisted first.
    apply = core.apply

    def persisted(change: Any) -> None:
        store.persist(change)
        apply(change)

    core.apply = persisted  # type: ignore[method-assign]
    included = play_with_a_free_rider(core, people, 12, after=persist_last)
    assert included == list(range(0, 12, 2))  # max 1 epoch out: the policy allows it
    # Offences listed only while within history_epochs of their exclusion's end.
    assert max(n for n, _, _ in sizes) <= 2 and max(k for _, _, k in sizes) <= 2
    assert all(s <= 1 for _, s, _ in sizes)
    back = EpochCore.restore(store.snapshot(COORDINATOR.public_key), identity=COORDINATOR,
                             settings=sett)
    assert back.standings == core.standings and back.sanctions == core.sanctions
    store.close()


# --- evidence flooding ---------------------------------------------------------------------


def closed_epoch_with_outsider(quota: int = 100_000) -> tuple[EpochCore, list[Identity],
                                                              Identity]:
    """Epoch 0 closed with three included nodes; a fourth is registered, never included."""
    core = EpochCore(identity=COORDINATOR,
                     settings=dataclasses.replace(settings(runner()),
                                                  max_evidence_per_signer=quota))
    *people, outsider = registered(core, 4)
    open_now(core)
    for p in people:
        declare(core, p, theta=950_000)
    core.close(T0 + EPOCH_SECONDS, runner().run)
    assert core.audit is not None and set(core.audit.allocation.included) == {
        p.node_id for p in people}
    return core, people, outsider


def test_evidence_that_cannot_matter_is_not_stored_and_honest_reports_still_are() -> None:
    core, (a, b, c), outsider = closed_epoch_with_outsider()
    t = T0 + EPOCH_SECONDS + 10
    junk = [receipt(outsider, a, amount=1, time=t, n=i) for i in range(20)]  # never included
    junk += [refusal(outsider, b, reason="not_included", time=t, n=100 + i) for i in range(20)]
    junk += [refusal(a, outsider, reason="not_included", time=t, n=200)]  # not a member asked
    junk += [receipt(a, a, amount=5, time=t, n=201)]  # to itself
    before = T0 + EPOCH_SECONDS - 2 * CLOCK_SKEW - 1  # before b's window, even skewed
    junk += [refusal(a, b, reason="not_included", time=before, n=203)]
    flood = core.check_audit(outsider.node_id, audit_report(outsider, junk))
    assert flood.n_items == len(junk) and flood.new_items == ()  # verified, accepted, dropped
    core.apply(flood)
    honest = [refusal(a, b, reason="not_included", time=t, n=300),
              refusal(a, c, reason="capacity_exhausted", time=t, n=301, amount=1),
              receipt(b, c, amount=1, time=t, n=302)]
    report = core.check_audit(c.node_id, audit_report(c, honest))
    assert len(report.new_items) == 3
    core.apply(report)
    assert core.audit is not None and len(core.audit.evidence) == 3


def test_a_host_flooding_its_own_evidence_fills_only_its_own_quota() -> None:
    core, (a, b, c), _ = closed_epoch_with_outsider(quota=5)
    t = T0 + EPOCH_SECONDS + 10
    own = [receipt(a, b, amount=1, time=t, n=i) for i in range(12)]
    first = core.check_audit(a.node_id, audit_report(a, own))
    assert len(first.new_items) == 5  # a's quota
    core.apply(first)
    again = core.check_audit(a.node_id,
                             audit_report(a, [receipt(a, c, amount=1, time=t, n=50)]))
    assert again.new_items == ()
    # Evidence signed by another host is stored whoever reports it.
    other = core.check_audit(c.node_id, audit_report(c, [
        refusal(b, c, reason="not_included", time=t, n=60),
        receipt(c, b, amount=1, time=t, n=61)]))
    assert len(other.new_items) == 2
