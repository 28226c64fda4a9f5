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
    run = runner("two")
    out = run.run(people([950_000, 900_000], [1, 1]))
    assert out.q[0] == 0 and out.q[1] > 0
    assert len(out.included) == 2
    assert (0, 2) in run._cache  # solved for the populated location only


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
