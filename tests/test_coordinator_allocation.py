"""From declarations to the wire allocation: ordering, rounding, empty locations, the one
seam into the mechanism, and an epoch core free of numpy."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.coordinator import market, node, runner
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.allocation import MechanismRunner
from coordinator.decision import Decision, Participant
from coordinator.mechanism import solve
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
    mech = run.solved()
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
    run = runner("two", "optimal")
    out = run.run(people([950_000, 900_000], [1, 1]))
    assert out.q[0] == 0 and out.q[1] > 0
    assert len(out.included) == 2
    # Solved for the populated location only, with its actual count: the same decision
    # as the optimal mechanism of a market with that one location and two agents.
    m = market("two")
    alone = solve(m.replace(locations=(m.locations[1],), weights=m.weights[1:, 1:])
                  .with_sizes([2]), "optimal")
    a = alone.allocate(np.array([0.95, 0.9]))
    assert out.q[1] == round(float(a.Q[0]) * 1e6)
    assert out.expected_welfare == round(alone.result.welfare * 1e6)


@pytest.mark.parametrize("name", ["two", "two_in_kind"])
def test_posted_fee_terms_are_binding_whatever_the_declarant_counts(name: str) -> None:
    # The spec says 3 agents per location; 1 and 4 declare. The announced plan still
    # decides: θ ≥ θ*_l, the announced fee (to the micro-unit), the announced Q*.
    run = MechanismRunner(market(name), "posted_fee")
    fees, q = run.announcement_terms()
    thresholds = run.solved().result.thresholds
    thetas = [900_000, 50_000, 999_999, 10_000, 600_000]
    ps = people(thetas, [0, 1, 1, 1, 1])
    out = run.run(ps)
    assert out.q == q
    expect = {p.node_id for p in ps if from_micro(p.theta) >= thresholds[p.location]}
    assert set(out.included) == expect and 0 < len(expect) < len(ps)
    by_id = {p.node_id: p for p in ps}
    assert out.contributions == tuple(fees[by_id[n].location] for n in out.included)
    assert run.run(ps, posted=(fees, q)) == out


def test_announced_terms_this_coordinator_cannot_honour_include_nobody() -> None:
    # A coordinator restarted with another spec mid-epoch: the fees nodes were told are
    # not this mechanism's, so nobody is charged fees nobody announced.
    run = runner("two")
    fees, q = run.announcement_terms()
    ps = people([900_000, 999_999], [0, 1])
    for posted in (((fees[0] + 1, fees[1]), q), (fees, (q[0], q[1] + 4)), ((), ())):
        out = run.run(ps, posted=posted)
        assert out.included == () and out.q == (0, 0) and out.status.startswith("failed")


def test_no_declarants_is_an_empty_outcome() -> None:
    assert runner("two").run([]) == Decision.empty(2, "no declarations")


def test_in_kind_second_best_runs_on_two_locations() -> None:
    run = MechanismRunner(market("two_in_kind"), "optimal")
    out = run.run(people([950_000, 900_000, 700_000], [0, 1, 1]))
    assert out.q[0] > 0 and out.q[1] > 0 and out.included


def test_announcement_terms() -> None:
    fees, q = runner().announcement_terms()
    mech = runner().solved()
    assert mech.result.fees is not None and mech.result.Q is not None
    assert fees == (math.ceil(mech.result.fees[0] * 1e6),)
    assert q[0] == round(mech.result.Q[0] * 1e6)
    assert runner("one", "optimal").announcement_terms() == ((), ())


@pytest.mark.parametrize("name", ["first_best", "optimal_balanced", "bogus", "optimal "])
def test_mechanisms_the_wire_cannot_name_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        MechanismRunner(market(), name)


def test_second_best_is_the_documented_alias_of_optimal() -> None:
    assert MechanismRunner(market(), "second_best").mechanism == "optimal"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 1_000_000), min_size=1, max_size=4))
def test_outcomes_are_deterministic_and_independent_of_arrival_order(thetas: list[int]) -> None:
    ps = people(thetas)
    run = runner("one", "optimal")
    a = run.run(ps)
    b = run.run(list(reversed(ps)))
    assert a == b
    assert all(c >= 0 for c in a.contributions)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1_000_000), st.integers(0, 1)), max_size=7),
       st.sampled_from(["posted_fee", "optimal"]))
def test_the_runner_decides_what_the_mechanisms_allocate_says(
        declared: list[tuple[int, int]], mechanism: str) -> None:
    # Any number of declarants per location (zero included): the decision is the solved
    # mechanism's allocate on them, converted to micro-units, with nothing added.
    ps = people([t for t, _ in declared], [loc for _, loc in declared])
    run = runner("two", mechanism)
    out = run.run(ps)
    if not ps:
        return
    order = sorted(ps, key=lambda p: (p.location, p.node_id))
    a = run.solved().allocate(np.array([from_micro(p.theta) for p in order]),
                              np.array([p.location for p in order]))
    assert out.q == tuple(round(float(x) * 1e6) for x in a.Q)
    assert out.included == tuple(sorted(p.node_id for i, p in enumerate(order)
                                        if a.included[i]))
    owed = {p.node_id: math.ceil(float(a.payments[i]) * 1e6 - 1e-6)
            for i, p in enumerate(order) if a.included[i]}
    assert all(abs(c - owed[n]) <= 1 for n, c in zip(out.included, out.contributions,
                                                       strict=True))
    for loc in (0, 1):
        if not any(p.location == loc for p in ps) and mechanism == "optimal":
            assert out.q[loc] == 0


def test_the_coordinator_never_names_a_mechanism() -> None:
    # One seam: no module of the coordinator outside the engine compares against a
    # mechanism's name (a branch on which mechanism runs).
    root = Path(__file__).resolve().parent.parent / "coordinator"
    names = {"posted_fee", "optimal", "second_best", "first_best"}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node_ in ast.walk(tree):
            if isinstance(node_, ast.Compare):
                consts = [c.value for c in ast.walk(node_) if isinstance(c, ast.Constant)]
                assert not names & set(consts), f"{path.name}:{node_.lineno} branches on " \
                                                 "a mechanism name"


def test_importing_the_epoch_core_loads_neither_numpy_nor_scipy() -> None:
    code = ("import sys, coordinator.epoch; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'scipy')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"


@settings(max_examples=15, deadline=None)
@given(st.permutations(list(range(7))), st.sampled_from(["posted_fee", "optimal"]))
def test_allocate_is_the_same_for_the_spec_population_in_any_order(
        perm: list[int], mechanism: str) -> None:
    # The spec's own population passed with locations, in any order, is allocated as the
    # location-ordered vector is: the declarant seam adds no behaviour of its own.
    m = market("two")  # 3 + 3 agents
    mech = runner("two", mechanism).solved()
    types = np.array([0.95, 0.2, 0.6, 0.9, 0.4, 0.7])
    locs = np.array([0, 0, 0, 1, 1, 1])
    ref = mech.allocate(types)
    p = np.array([i for i in perm if i < 6])
    got = mech.allocate(types[p], locs[p])
    np.testing.assert_array_equal(got.included, ref.included[p])
    np.testing.assert_allclose(got.payments, ref.payments[p], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.Q, ref.Q, rtol=0, atol=1e-12)
    assert m.L == 2


@pytest.mark.parametrize("mechanism", ["posted_fee", "optimal"])
def test_allocate_refuses_bad_declarants(mechanism: str) -> None:
    mech = runner("two", mechanism).solved()
    for types, locs in (([0.5], [2]), ([0.5], [-1]), ([1.5], [0]), ([math.nan], [0]),
                        ([0.5, 0.5], [0]), ([0.5], [0.0])):
        with pytest.raises(ValueError):
            mech.allocate(np.array(types), np.array(locs))
    none = mech.allocate(np.zeros(0), np.zeros(0, dtype=np.int64))
    assert none.included.shape == (0,) and none.Q.shape == (2,)
