"""From declarations to the wire allocation: ordering, rounding, empty locations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_coordinator_support import market, node, runner

from coordinator.allocation import MechanismRunner, Outcome, Participant
from protocol import from_micro


def people(thetas: list[int], locations: list[int] | None = None) -> list[Participant]:
    locations = locations or [0] * len(thetas)
    return [Participant(node_id=node(i).node_id, public_key=node(i).public_key,
                        location=loc, theta=t)
            for i, (t, loc) in enumerate(zip(thetas, locations, strict=True))]


def test_included_ids_are_sorted_and_contributions_round_up() -> None:
    run = runner()
    ps = people([950_000, 900_000, 800_000, 100_000])
    out = run.run(ps)
    assert list(out.included) == sorted(out.included)
    mech = run.solved([4])
    order = sorted(ps, key=lambda p: (p.location, p.node_id))
    alloc = mech.allocate(np.array([from_micro(p.theta) for p in order]))
    exact = {p.node_id: float(alloc.payments[i]) for i, p in enumerate(order)
             if alloc.included[i]}
    assert set(out.included) == set(exact)
    for nid, c in zip(out.included, out.contributions, strict=True):
        assert c / 1e6 >= exact[nid] and c - exact[nid] * 1e6 < 1
    assert out.q[0] == round(float(alloc.Q[0]) * 1e6)
    assert out.expected_welfare == round(mech.result.welfare * 1e6)


def test_a_location_without_declarants_gets_nothing_and_is_left_out() -> None:
    run = runner("two", "second_best")
    out = run.run(people([950_000, 900_000], [1, 1]))
    assert out.q[0] == 0 and out.q[1] > 0
    assert len(out.included) == 2
    assert (0, 2) in run._cache  # solved for the populated location only


@pytest.mark.parametrize("name", ["two", "two_in_kind"])
def test_posted_fee_terms_are_binding_whatever_the_declarant_counts(name: str) -> None:
    # The spec says 3 agents per location; 1 and 4 declare. The announced plan still
    # decides: θ ≥ θ*_l, the announced fee (to the micro-unit), the announced Q*.
    run = MechanismRunner(market(name), "posted_fee")
    fees, q = run.announcement_terms()
    thresholds = run.solved([3, 3]).result.thresholds
    thetas = [900_000, 50_000, 999_999, 10_000, 600_000]
    ps = people(thetas, [0, 1, 1, 1, 1])
    out = run.run(ps)
    assert out.q == q
    expect = {p.node_id for p in ps if from_micro(p.theta) >= thresholds[p.location]}
    assert set(out.included) == expect and 0 < len(expect) < len(ps)
    by_id = {p.node_id: p for p in ps}
    assert out.contributions == tuple(fees[by_id[n].location] for n in out.included)
    assert (1, 4) not in run._cache  # never re-solved with the counts
    # The announced integers are what binds (a restarted coordinator applies those).
    posted = ((fees[0] + 1, fees[1] + 2), (q[0] + 3, q[1] + 4))
    bound = run.run(ps, posted=posted)
    assert bound.q == posted[1] and set(bound.included) == expect
    assert bound.contributions == tuple(posted[0][by_id[n].location] for n in bound.included)


def test_no_declarants_is_an_empty_outcome() -> None:
    assert runner("two").run([]) == Outcome.empty(2, "no declarations")


def test_in_kind_second_best_runs_on_two_locations() -> None:
    run = MechanismRunner(market("two_in_kind"), "second_best")
    out = run.run(people([950_000, 900_000, 700_000], [0, 1, 1]))
    assert out.q[0] > 0 and out.q[1] > 0 and out.included


def test_announcement_terms() -> None:
    fees, q = runner().announcement_terms()
    mech = runner().solved([4])
    assert fees == (math.ceil(mech.result.fees[0] * 1e6),)
    assert q[0] == round(mech.result.Q[0] * 1e6)
    assert runner("one", "second_best").announcement_terms() == ((), ())


def test_unknown_mechanism_is_refused() -> None:
    with pytest.raises(ValueError):
        MechanismRunner(market(), "first_best")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 1_000_000), min_size=1, max_size=4))
def test_outcomes_are_deterministic_and_independent_of_arrival_order(thetas: list[int]) -> None:
    ps = people(thetas)
    run = runner("one", "second_best")
    a = run.run(ps)
    b = run.run(list(reversed(ps)))
    assert a == b
    assert all(c >= 0 for c in a.contributions)
