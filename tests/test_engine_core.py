"""Core engine behaviour pinned against the slides' closed forms and Monte Carlo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator.mechanism.balance import balance_ex_post
from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.market import (
    Location,
    Market,
    PowerCost,
    PowerUtility,
    market_from_dict,
    slides_market,
)
from coordinator.mechanism.optimal import first_best, second_best
from coordinator.mechanism.posted_fee import posted_fee
from coordinator.mechanism.provision import Power
from coordinator.mechanism.sums import Group, sum_law

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n", [2, 5, 100])
def test_first_best_matches_slides_closed_form(n: int) -> None:
    assert first_best(slides_market(n)).result.welfare == pytest.approx(
        n * n / 36 + n / 108, rel=1e-12)


@pytest.mark.parametrize("n", [2, 10, 1000])
def test_posted_fee_matches_slides_Q_fee_and_welfare(n: int) -> None:
    r = posted_fee(slides_market(n)).result
    assert r.welfare == pytest.approx(3 * n * n / 128, rel=1e-10)
    assert r.Q is not None and r.fees is not None and r.thresholds is not None
    assert r.Q[0] == pytest.approx(n * n / 64, rel=1e-10)
    assert r.fees[0] == pytest.approx(n / 48, rel=1e-10)
    assert r.thresholds[0] == pytest.approx(0.25, abs=1e-12)


def test_second_best_expansion_has_n_coefficient_7_over_384_and_constant_minus_1_over_162() -> None:
    ns = (1000, 2000, 4000, 8000, 16000)
    A = np.array([[n * n, n, 1.0, 1.0 / n, 1.0 / n**2] for n in ns])
    v = np.array([second_best(slides_market(n)).result.welfare for n in ns])
    a, b, c, _, _ = np.linalg.solve(A, v)
    assert a == pytest.approx(3 / 128, rel=1e-9)
    assert b == pytest.approx(7 / 384, rel=1e-5)
    assert b != pytest.approx(7 / 348, rel=1e-2)
    assert c == pytest.approx(-1 / 162, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 5, 10])
def test_second_best_welfare_agrees_with_monte_carlo_of_allocate(n: int) -> None:
    m = slides_market(n)
    mech = second_best(m)
    rng = np.random.default_rng(20261126 + n)
    S = 6000
    types = m.sample_types(rng, S)
    welfare = np.empty(S)
    surplus = np.empty(S)
    for s in range(S):
        al = mech.allocate(types[s])
        u = float(m.locations[0].utility(al.Q[0]))
        welfare[s] = float(np.sum(types[s][al.included]) * u - al.cost.sum())
        surplus[s] = float(al.budget_surplus().sum())
    se = welfare.std(ddof=1) / np.sqrt(S)
    assert abs(welfare.mean() - mech.result.welfare) < 3 * se
    # Ex-ante budget balance: payments cover the cost on average (constraint binds).
    assert abs(surplus.mean()) < 3 * surplus.std(ddof=1) / np.sqrt(S)


def test_second_best_revenue_identity_and_interim_monotonicity() -> None:
    mech = second_best(slides_market(7))
    assert mech.result.details["revenue_identity_gap"] < 1e-10
    t = np.linspace(mech.tables[0].theta0 + 1e-9, 1.0, 200)
    V = mech.tables[0].value(t)
    P = mech.tables[0].payment(t)
    assert np.all(np.diff(V) >= -1e-12)  # Lemma 4
    assert np.all(t * V - P >= -1e-12)  # individual rationality (10)


@pytest.mark.slow
def test_no_exclusion_is_below_the_slides_relaxed_formula_and_relaxation_reproduces_it() -> None:
    from coordinator.mechanism.claims import relaxed_no_exclusion_welfare

    n = 10
    formula = n * (np.sqrt(1 + 3 * n) - 1) / 27
    true = second_best(slides_market(n), exclusion=False).result.welfare
    assert true == pytest.approx(1.651670135, rel=1e-7)
    assert true < formula - 0.03
    assert relaxed_no_exclusion_welfare(n) == pytest.approx(formula, rel=1e-10)


def test_ex_post_balanced_payments_sum_to_cost_on_every_profile() -> None:
    m = slides_market(6)
    mech = balance_ex_post(second_best(m))
    rng = np.random.default_rng(3)
    for types in m.sample_types(rng, 200):
        al = mech.allocate(types)
        assert al.budget_surplus()[0] == pytest.approx(0.0, abs=1e-6)


def test_moment_and_lattice_laws_agree() -> None:
    for dist in (TypeDistribution.uniform(), TypeDistribution.beta(2.0, 3.0)):
        groups = [Group(7, dist, 0.4, 0.8, True), Group(3, dist, 0.2, 0.5, True)]
        phis = [Power(1.3, 2.0), Power(0.7, 1.0)]
        mom = sum_law(groups, phis, "moments")
        lat = sum_law(groups, phis, "lattice")
        for phi in phis:
            assert lat.expect(phi) == pytest.approx(mom.expect(phi), rel=1e-6)
            for k in range(2):
                assert lat.tilted(phi, k) == pytest.approx(mom.tilted(phi, k), rel=1e-6)


@pytest.mark.slow
def test_in_kind_has_a_multiplier_per_location_and_never_beats_money() -> None:
    U = TypeDistribution.uniform()
    locs = tuple(Location(name, n, U, PowerUtility(1.0, 0.5), PowerCost(b, 1.0))
                 for name, n, b in (("a", 12, 1.0), ("b", 6, 2.0)))
    W = np.array([[1.0, 0.4], [0.4, 1.0]])
    money = second_best(Market(locs, W, "money", True)).result
    kind = second_best(Market(locs, W, "in_kind", True)).result
    assert kind.lambdas is not None and kind.lambdas.shape == (2,)
    cons = kind.details["constraint_values"]
    assert np.all(cons > -1e-8)
    assert kind.welfare <= money.welfare + 1e-9
    pf = posted_fee(Market(locs, W, "in_kind", True)).result
    assert pf.welfare <= kind.welfare + 1e-9  # Theorem 1: Φ*_n ≤ Φ_n


@pytest.mark.parametrize("bad, message", [
    ({"locations": [{"n": 0}]}, "n must be in"),
    ({"locations": [{"n": "3"}]}, "must be an integer"),
    ({"locations": [{"n": 3, "colour": 1}]}, "unknown keys"),
    ({"locations": [{"n": 3, "type": {"dist": "cauchyish"}}]}, "type.dist"),
    ({"locations": [{"n": 3}], "weights": [[-1.0]]}, "nonnegative"),
    ({"locations": [{"n": 3}, {"n": 2, "name": "b"}], "weights": [[1.0]]}, "2x2"),
])
def test_bad_market_specs_are_refused_with_a_clear_message(bad: dict[str, object],
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market_from_dict(bad)


def test_solve_script_json_has_the_promised_fields() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "solve.py"),
         str(ROOT / "scripts/specs/slides.toml"), "--mechanism", "posted_fee", "--json"],
        capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    for key in ("mechanism", "welfare", "lambda", "thresholds", "Q", "fees"):
        assert key in data
    assert data["welfare"] == pytest.approx(3 * 100**2 / 128)


def test_first_best_welfare_agrees_with_monte_carlo_of_allocate_in_three_towns() -> None:
    from coordinator.mechanism.audit import realised_welfare
    from coordinator.mechanism.market import load_market

    m = load_market(ROOT / "scripts/specs/three-towns.toml").with_sizes([6, 4, 3])
    mech = first_best(m)
    rng = np.random.default_rng(7)
    S = 4000
    types = m.sample_types(rng, S)
    w = np.array([realised_welfare(m, types[s], mech.allocate(types[s])) for s in range(S)])
    se = w.std(ddof=1) / np.sqrt(S)
    assert abs(w.mean() - mech.result.welfare) < 3 * se
