"""Restitution: a free rider repays what it withheld before it is served again for free.

The pure arithmetic of penalty + debt (any B >= C, any schedule, any offence pattern:
free riding never beats truthful play), and the coordinator core end to end: detected ->
excluded L epochs -> readmitted owing contribution + debt -> short again is a new
offence -> delivers in full -> debt cleared; the debt survives a restart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from helpers.coordinator import (
    COORDINATOR,
    EPOCH_SECONDS,
    T0,
    commitment,
    declaration,
    open_now,
    raw,
    registered,
    runner,
    settings,
)
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from coordinator.enforcement import NO_COMMITMENT, SHORT_COMMITMENT, UNREACHABLE, shortfall
from coordinator.epoch import Closed, EpochCore
from coordinator.penalty import PenaltyPolicy, Standing, forgotten, repaid, sentence
from coordinator.store import Store
from protocol import Allocation, Identity, InkindError

# --- the arithmetic ------------------------------------------------------------------------


@settings_(max_examples=200, deadline=None)
@given(
    st.integers(1, 10**9), st.integers(0, 10**9),  # C, B - C (micro-units): B >= C
    st.integers(1, 6), st.floats(1.0, 4.0), st.floats(0.5, 50.0), st.integers(1, 64),
    # per readmitted epoch: the fraction (in 1/4) of what it owes the node delivers;
    # 4 is honest, 0 withholds everything
    st.lists(st.integers(0, 4), min_size=1, max_size=30),
)
def test_free_riding_never_pays_with_restitution(
        C: int, surplus: int, base: int, growth: float, half_life: float, max_epochs: int,
        pattern: list[int]) -> None:
    # The rider plays `pattern` in the epochs it is included in, then behaves until its
    # debt is repaid (a debt is what it must pay to be served again without offending).
    # Its cumulative utility against truthful play (B - C every epoch) is never positive.
    B = C + surplus
    policy = PenaltyPolicy(base_epochs=min(base, max(base, max_epochs)), growth=growth,
                           half_life=half_life, max_epochs=max(base, max_epochs))
    standing: Standing | None = None
    gain, epoch, step = 0, 0, 0
    while step < len(pattern) or (standing is not None and standing.debt > 0):
        if standing is not None and standing.excludes(epoch):
            gain -= B - C  # out: no service, no contribution
            epoch += 1
            continue
        quarters = pattern[step] if step < len(pattern) else 4
        step += 1
        debt = 0 if standing is None else standing.debt
        owed = C + debt  # what the allocation charges an included node
        delivered = owed * quarters // 4
        gain += (B - delivered) - (B - C)
        if delivered < owed:
            reason = NO_COMMITMENT if delivered == 0 else SHORT_COMMITMENT
            standing = sentence(policy, standing, "rider", epoch,
                                debt=shortfall(owed, delivered, [reason]))
            assert standing.debt == owed - delivered  # the unpaid debt stays owed
        elif standing is not None and debt > 0:
            standing = repaid(standing)
        epoch += 1
    assert gain <= 0
    if standing is not None:
        assert standing.debt == 0


def test_what_counts_as_delivered() -> None:
    assert shortfall(10, 4, [SHORT_COMMITMENT]) == 6
    assert shortfall(10, 0, [NO_COMMITMENT]) == 10
    assert shortfall(10, 12, [SHORT_COMMITMENT]) == 0
    # a host that committed but answered no probe (or refused someone it owed) cannot be
    # credited with what it committed
    assert shortfall(10, 10, [UNREACHABLE]) == 10
    assert shortfall(10, 4, [SHORT_COMMITMENT, UNREACHABLE]) == 10


def test_a_debt_is_never_forgotten_by_time_alone() -> None:
    policy = PenaltyPolicy()
    owing = sentence(policy, None, "n", 0, debt=5)
    assert not forgotten(policy, owing, 10_000)  # the score decayed long ago
    assert forgotten(policy, repaid(owing), 10_000)
    with pytest.raises(ValueError):
        sentence(policy, None, "n", 0, debt=-1)


@pytest.mark.parametrize("debts", [(0, 0), (1,), (1, 2, 3)])
def test_an_allocation_refuses_debts_that_are_all_zero_or_misaligned(
        debts: tuple[int, ...]) -> None:
    with pytest.raises(InkindError) as info:
        Allocation(epoch=0, mechanism="posted_fee", q=(1,), included=("a" * 64, "b" * 64),
                   contributions=(1, 2), expected_welfare=0, debts=debts)
    assert info.value.code == "out_of_range"


def test_an_allocation_owes_contribution_plus_debt_and_round_trips() -> None:
    a = Allocation(epoch=0, mechanism="posted_fee", q=(1,), included=("a" * 64, "b" * 64),
                   contributions=(1, 2), expected_welfare=0, debts=(0, 5))
    assert a.owed() == {"a" * 64: 1, "b" * 64: 7}
    assert (a.owed_of("b" * 64), a.debt_of("b" * 64), a.contribution_of("b" * 64)) == (7, 5, 2)
    assert a.owed_of("c" * 64) is None and a.debt_of("c" * 64) is None
    assert Allocation.from_payload(a.to_payload()) == a
    plain = dataclasses.replace(a, debts=None)
    assert "debts" not in plain.to_payload() and plain.debt_of("b" * 64) == 0


# --- through the coordinator core ----------------------------------------------------------


def play(core: EpochCore, people: list[Identity], e: int,
         delivers: dict[str, int] | None = None) -> Closed:
    """Open and close epoch ``e``; then everyone included commits what it owes
    (contribution + debt) unless ``delivers`` says otherwise (node id -> amount, -1: no
    commitment)."""
    now = T0 + 2 * e * EPOCH_SECONDS
    open_now(core, now)
    for p in people:
        d = declaration(p, epoch=e, theta=950_000)
        core.apply(core.check_declaration(d, raw(p, d), now + 1))
    closed = core.close(now + EPOCH_SECONDS, runner().run)
    for p in people:
        owed = closed.allocation.owed_of(p.node_id)
        if owed is None:
            continue
        amount = (delivers or {}).get(p.node_id, owed)
        if amount >= 0:
            c = commitment(p, epoch=e, amount=amount)
            core.apply(core.check_commitment(c, raw(p, c)))
    return closed


def test_detected_excluded_readmitted_owing_then_cleared(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    sett = settings(runner())
    core = EpochCore(identity=COORDINATOR, settings=sett)
    people = registered(core, 3)
    rider, honest = people[0], people[1:]
    rid = rider.node_id
    apply = core.apply

    def persisted(change: Any) -> None:
        store.persist(change)
        apply(change)

    core.apply = persisted  # type: ignore[method-assign]

    c0 = play(core, people, 0, {rid: -1})  # withholds everything
    C = c0.allocation.contribution_of(rid)
    assert C is not None and C > 0 and c0.allocation.debts is None
    c1 = play(core, people, 1)
    assert rid not in c1.allocation.included
    assert [(x.node_id, x.reason) for x in c1.exclusions] == [(rid, NO_COMMITMENT)]
    assert core.standings[rid].debt == C  # what it withheld
    c2 = play(core, people, 2)
    assert rid not in c2.allocation.included  # base 2: out of epochs 1 and 2

    # readmitted in 3, owing contribution + debt; it commits only the contribution
    c3 = play(core, people, 3, {rid: C})
    assert c3.allocation.debt_of(rid) == C and c3.allocation.owed_of(rid) == 2 * C
    assert all(c3.allocation.debt_of(p.node_id) == 0 for p in honest)
    c4 = play(core, people, 4)
    assert [(x.node_id, x.reason) for x in c4.exclusions] == [(rid, SHORT_COMMITMENT)]
    assert core.standings[rid].debt == C  # the unpaid part stays owed
    s = core.standings[rid]
    assert (s.offences, s.first_epoch, s.last_epoch) == (2, 4, 7)  # out 4 epochs now

    # a restart keeps the debt
    back = EpochCore.restore(store.snapshot(COORDINATOR.public_key), identity=COORDINATOR,
                             settings=sett)
    assert back.standings == core.standings

    for e in range(5, 8):
        assert rid not in play(core, people, e).allocation.included
    c8 = play(core, people, 8)  # readmitted, delivers contribution + debt in full
    assert c8.allocation.owed_of(rid) == c8.allocation.contribution_of(rid) + C
    c9 = play(core, people, 9)
    assert c9.exclusions == () and rid in c9.allocation.included
    assert core.standings[rid].debt == 0 and c9.allocation.debts is None  # cleared
    assert not {p.node_id for p in honest} & core.standings.keys()  # honest: no debt ever
    row = store._db.execute("SELECT debt FROM standings WHERE node_id = ?", (rid,)).fetchone()
    assert row == (0,)
    store.close()


def test_a_debt_owed_by_a_node_that_does_not_come_back_stays(tmp_path: Path) -> None:
    policy = PenaltyPolicy(base_epochs=1, growth=1.0, half_life=0.5, max_epochs=1)
    core = EpochCore(identity=COORDINATOR,
                     settings=dataclasses.replace(settings(runner()), penalty=policy))
    people = registered(core, 3)
    rid = people[0].node_id
    play(core, people, 0, {rid: -1})
    for e in range(1, 30):  # it never declares again: nothing is charged, nothing decays
        play(core, people[1:], e)
    assert core.standings[rid].debt > 0
    assert set(core.standings) == {rid}  # one row, only the debtor's
