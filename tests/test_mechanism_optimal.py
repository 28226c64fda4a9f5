"""First and second best (coordinator.mechanism.optimal) against closed forms, Monte
Carlo of ``allocate``, the paper's orderings, and random small markets.

Every Monte Carlo here is seeded and recomputes the realised welfare from the market's
own utilities and costs (not from the engine's bookkeeping), so it checks that the
solver's expectation and the allocation rule describe the same mechanism.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from coordinator.mechanism import solve
from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.market import (
    Location,
    Market,
    PowerCost,
    PowerUtility,
    UnsupportedMarketError,
    slides_market,
)
from coordinator.mechanism.optimal import LagrangianMechanism, first_best, second_best
from coordinator.mechanism.posted_fee import posted_fee

UNIFORM = TypeDistribution.uniform()


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------
def realised_welfare(market: Market, types: np.ndarray, included: np.ndarray,
                     Q: np.ndarray) -> float:
    """Σ_i π_i θ_i Σ_l W[i, l] u_l(Q_l) − Σ_l c_l(n_l, Q_l), from the spec alone."""
    u = np.array([float(loc.utility(Q[l])) for l, loc in enumerate(market.locations)])
    c = np.array([float(loc.cost(loc.n, Q[l])) for l, loc in enumerate(market.locations)])
    benefit = (market.weights @ u)[market.agent_locations()]
    return float(np.sum(np.where(included, types * benefit, 0.0)) - c.sum())


def monte_carlo(mech: LagrangianMechanism, market: Market, seed: int,
                samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Realised welfare and per-location budget surplus on seeded random profiles."""
    rng = np.random.default_rng(seed)
    types = market.sample_types(rng, samples)
    welfare = np.empty(samples)
    surplus = np.empty((samples, market.L))
    for s in range(samples):
        al = mech.allocate(types[s])
        welfare[s] = realised_welfare(market, types[s], al.included, al.Q)
        surplus[s] = al.budget_surplus()
    return welfare, surplus


def mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.shape[0]))


@functools.cache
def slides_second_best(n: int, exclusion: bool) -> LagrangianMechanism:
    return second_best(slides_market(n), exclusion=exclusion)


def no_exclusion_formula(n: int) -> float:
    """The slides' printed second-best welfare without exclusion."""
    return n * (math.sqrt(1 + 3 * n) - 1) / 27


# ---------------------------------------------------------------------------------
# first best
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 1000])
def test_first_best_welfare_is_n2_over_36_plus_n_over_108(n: int) -> None:
    mech = first_best(slides_market(n))
    assert mech.result.success
    assert mech.result.welfare == pytest.approx(n * n / 36 + n / 108, rel=1e-10)
    assert mech.lambdas.tolist() == [0.0]


def test_first_best_for_a_beta_prior_is_A2_E_S2_over_4B() -> None:
    # u = A √Q, c = B n^δ Q: Q = (A S / (2 B n^δ))², welfare A² S² / (4 B n^δ), S = Σ θ.
    n, A, B, delta = 6, 1.5, 0.8, 0.5
    dist = TypeDistribution.beta(2.0, 3.0)
    mu, var = 2 / 5, 2 * 3 / (5**2 * 6)
    m = Market((Location("b", n, dist, PowerUtility(A, 0.5), PowerCost(B, 1.0, delta)),),
               np.eye(1))
    ES2 = n * var + (n * mu) ** 2
    assert first_best(m).result.welfare == pytest.approx(
        A * A * ES2 / (4 * B * n**delta), rel=1e-10)


def test_first_best_is_the_second_best_when_the_budget_is_slack() -> None:
    # θ ~ U[1, 2]: g = 2θ − 2 ≥ 0 and E[Σ g u − c] > 0 at the first best, so λ = 0.
    m = Market((Location("rich", 5, TypeDistribution.uniform(1.0, 2.0),
                         PowerUtility(2 / 3, 0.5), PowerCost(1.0, 1.0)),), np.eye(1))
    sb = second_best(m)
    assert sb.result.success
    assert sb.lambdas.tolist() == [0.0]
    assert sb.result.details["constraint_values"][0] > 0.1
    assert sb.result.welfare == pytest.approx(first_best(m).result.welfare, rel=1e-12)
    assert sb.result.thresholds is not None and sb.result.thresholds[0] == 1.0


# ---------------------------------------------------------------------------------
# second best on the slides' example
# ---------------------------------------------------------------------------------
def test_second_best_expansion_is_3n2_over_128_plus_7n_over_384_minus_1_over_162() -> None:
    # The slides print 7/148 and 7/348 for the n coefficient (typos); the constant −1/162
    # agrees with the engine.
    ns = np.array([1000, 2000, 4000, 8000, 16000], dtype=float)
    mechs = [second_best(slides_market(int(n))) for n in ns]
    values = np.array([m.result.welfare for m in mechs])
    X = np.stack([ns**2, ns, np.ones_like(ns), 1 / ns, 1 / ns**2], axis=1)
    a, b, c, _, _ = np.linalg.solve(X, values)
    assert a == pytest.approx(3 / 128, rel=1e-4)
    assert b == pytest.approx(7 / 384, rel=1e-4)
    assert c == pytest.approx(-1 / 162, rel=1e-4)
    assert b != pytest.approx(7 / 348, rel=1e-2)
    assert b != pytest.approx(7 / 148, rel=1e-2)
    lams = np.array([m.lambdas[0] for m in mechs])
    th = np.array([m.result.thresholds[0] for m in mechs])  # type: ignore[index]
    # λ → 1/2 and θ₀ = λ/(1+2λ) → 1/4, monotonically.
    assert np.all(np.diff(np.abs(lams - 0.5)) < 0) and abs(lams[-1] - 0.5) < 1e-4
    assert np.all(np.diff(np.abs(th - 0.25)) < 0) and abs(th[-1] - 0.25) < 1e-4
    np.testing.assert_allclose(th, lams / (1 + 2 * lams), rtol=1e-12)


@pytest.mark.parametrize("n", [2, 5, 10])
def test_second_best_without_exclusion_is_below_the_slides_formula(n: int) -> None:
    mech = slides_second_best(n, False)
    assert mech.result.success
    assert mech.result.mechanism == "optimal_no_exclusion"
    value = mech.result.welfare
    assert value < no_exclusion_formula(n) * (1 - 1e-3)
    assert value <= slides_second_best(n, True).result.welfare


def test_second_best_without_exclusion_value_at_n10() -> None:
    assert slides_second_best(10, False).result.welfare == pytest.approx(1.651670135, rel=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 30, 100])
def test_slides_no_exclusion_formula_is_the_relaxation_that_ignores_Q_nonnegative(n: int) -> None:
    # Let v = √Q follow the pointwise rule v = A(θ, λ)/3 even when A < 0. With S = Σ θ,
    # v = a S + b is affine, so welfare (2/3) E[S v] − E v² and the constraint
    # (2/3) E[(2S − n) v] − E v² need only E S = n/2, E S² = n/12 + n²/4.
    ES, ES2 = n / 2, n / 12 + n * n / 4

    def parts(lam: float) -> tuple[float, float]:
        a = (1 + 2 * lam) / (3 * (1 + lam))
        b = -lam * n / (3 * (1 + lam))
        ESv = a * ES2 + b * ES
        Ev = a * ES + b
        Ev2 = a * a * ES2 + 2 * a * b * ES + b * b
        return (2 / 3) * ESv - Ev2, (2 / 3) * (2 * ESv - n * Ev) - Ev2

    if parts(0.0)[1] >= 0:
        lam = 0.0
    else:
        lam = optimize.brentq(lambda x: parts(x)[1], 0.0, 1e3, xtol=1e-15)
    assert parts(lam)[0] == pytest.approx(no_exclusion_formula(n), rel=1e-10)


def test_second_best_without_exclusion_matches_monte_carlo_and_Q_nonnegative_binds() -> None:
    n = 10
    m = slides_market(n)
    mech = slides_second_best(n, False)
    lam = float(mech.lambdas[0])
    engine = mech.result.welfare
    # (a) Monte Carlo of the allocation itself.
    rng = np.random.default_rng(1010)
    types = m.sample_types(rng, 3000)
    welfare = np.empty(types.shape[0])
    for s, ty in enumerate(types):
        al = mech.allocate(ty)
        assert al.included.all()
        # The allocation is Q = (A⁺/3)², A = Σ(θ + λ(2θ − 1))/(1 + λ): the rule that a
        # vectorised re-implementation below uses.
        S = float(ty.sum())
        A = (S + lam * (2 * S - n)) / (1 + lam)
        assert al.Q[0] == pytest.approx((max(A, 0.0) / 3) ** 2, rel=1e-12, abs=1e-15)
        welfare[s] = realised_welfare(m, ty, al.included, al.Q)
    mc, se = mean_se(welfare)
    assert abs(mc - engine) < 3 * se
    # (b) A large vectorised Monte Carlo at the engine's λ separates the engine's value from
    # the printed formula, and Q = 0 (A < 0) happens on a positive fraction of profiles.
    T = np.random.default_rng(1011).random((200_000, n))
    S = T.sum(axis=1)
    A = (S + lam * (2 * S - n)) / (1 + lam)
    Q = (np.maximum(A, 0.0) / 3) ** 2
    big, big_se = mean_se((2 / 3) * S * np.sqrt(Q) - Q)
    assert abs(big - engine) < 3 * big_se
    assert no_exclusion_formula(n) - big > 10 * big_se
    assert 0.05 < float(np.mean(A < 0)) < 0.5


def test_second_best_without_exclusion_refuses_the_moment_method() -> None:
    with pytest.raises(ValueError, match="moment method"):
        second_best(slides_market(4), exclusion=False, method="moments")


@pytest.mark.parametrize("n", [2, 5, 10, 30, 100])
def test_second_best_lies_between_posted_fee_and_first_best(n: int) -> None:
    m = slides_market(n)
    sb = slides_second_best(n, True).result.welfare
    assert posted_fee(m).result.welfare <= sb  # Theorem 1: Φ*_n ≤ Φ_n
    assert sb <= first_best(m).result.welfare


def test_second_best_with_exclusion_matches_monte_carlo_for_a_beta_prior() -> None:
    m = Market((Location("b", 6, TypeDistribution.beta(2.0, 3.0), PowerUtility(1.0, 0.5),
                         PowerCost(0.5, 1.0)),), np.eye(1))
    mech = second_best(m)
    assert mech.result.success and mech.lambdas[0] > 0
    welfare, surplus = monte_carlo(mech, m, seed=66, samples=3000)
    mc, se = mean_se(welfare)
    assert abs(mc - mech.result.welfare) < 3 * se
    s_mc, s_se = mean_se(surplus[:, 0])
    assert abs(s_mc) < 3 * s_se  # ex-ante budget balance (3) binds


def test_second_best_without_exclusion_refuses_a_prior_whose_density_vanishes_at_the_bottom(
) -> None:
    # Beta(2, 2) (the README's "campus" prior): f(0) = 0 so θ + λ g(θ) → −∞ as θ → 0 and,
    # without exclusion, every agent's weight enters the sum with an unbounded lower tail.
    # The engine must not return a number it cannot vouch for (it once returned ≈ 0 here,
    # against a first best of 0.72 and a Monte Carlo of its own allocation of 0.72).
    m = Market((Location("campus", 5, TypeDistribution.beta(2.0, 2.0),
                         PowerUtility(2 / 3, 0.5), PowerCost(1.0, 1.0)),), np.eye(1))
    # Refused before solving, the same way every mechanism refuses (UnsupportedMarketError,
    # a ValueError), so a coordinator fails at start-up instead of at every close.
    with pytest.raises(UnsupportedMarketError, match="density vanishes"):
        second_best(m, exclusion=False)
    with pytest.raises(UnsupportedMarketError, match="density vanishes"):
        solve(m, "second_best_no_exclusion")
    # With exclusion the same prior is fine: the excluded bottom never enters the sum.
    sb = second_best(m)
    assert sb.result.success and 0 < sb.result.welfare <= first_best(m).result.welfare


@pytest.mark.parametrize("exclusion", [True, False], ids=["exclusion", "no-exclusion"])
def test_equivalent_truncated_normal_specs_give_the_same_second_best(exclusion: bool) -> None:
    # N(0.4, 0.3²) truncated to [0, 1], written two ways. scipy's truncnorm puts the bottom
    # of its support at 0.4 + (−4/3)·0.3 = 5.6e-17 (rounding), so its pdf at exactly θ = 0
    # is 0 although the density there is 0.62: that must not make the prior look like one
    # whose density vanishes at the bottom (which the no-exclusion solver refuses).
    def market(dist: TypeDistribution) -> Market:
        return Market((Location("c", 3, dist, PowerUtility(2 / 3, 0.5), PowerCost(1.0, 1.0)),),
                      np.eye(1))

    norm = TypeDistribution.from_scipy("norm", 0.0, 1.0, loc=0.4, scale=0.3)
    trunc = TypeDistribution.from_scipy("truncnorm", 0.0, 1.0, a=-4.0 / 3.0, b=2.0, loc=0.4,
                                        scale=0.3)
    a = second_best(market(norm), exclusion=exclusion).result
    b = second_best(market(trunc), exclusion=exclusion).result
    assert a.success, a.status
    assert b.success, b.status
    assert b.welfare == pytest.approx(a.welfare, rel=1e-6)


# ---------------------------------------------------------------------------------
# interim quantities: (8), (12), (14), Lemma 1
# ---------------------------------------------------------------------------------
def _two_town_market(payment: str) -> Market:
    locs = (Location("centre", 6, UNIFORM, PowerUtility(1.0, 0.5), PowerCost(1.0, 1.0)),
            Location("campus", 4, TypeDistribution.beta(2.0, 2.0), PowerUtility(1.0, 0.5),
                     PowerCost(2.0, 1.0)))
    return Market(locs, np.array([[1.0, 0.8], [0.1, 1.0]]), payment)


def _three_town_market(payment: str) -> Market:
    # "rich" has types in [1, 2]: its own constraint is slack when paying in kind.
    locs = (Location("centre", 6, UNIFORM, PowerUtility(1.0, 0.5), PowerCost(1.0, 1.0)),
            Location("rich", 4, TypeDistribution.uniform(1.0, 2.0), PowerUtility(1.0, 0.5),
                     PowerCost(1.0, 1.0)),
            Location("poor", 3, UNIFORM, PowerUtility(0.8, 0.5), PowerCost(1.5, 1.0, 0.5)))
    W = np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.0], [0.2, 0.0, 1.0]])
    return Market(locs, W, payment)


@functools.cache
def town_mechanisms(towns: int, payment: str) -> tuple[Market, LagrangianMechanism,
                                                      LagrangianMechanism, float]:
    m = _two_town_market(payment) if towns == 2 else _three_town_market(payment)
    return m, second_best(m), first_best(m), posted_fee(m).result.welfare


INTERIM_CASES = ["slides7", "slides7-no-exclusion", "two-towns-in-kind"]


@functools.cache
def interim_case(name: str) -> tuple[Market, LagrangianMechanism]:
    if name == "slides7":
        return slides_market(7), slides_second_best(7, True)
    if name == "slides7-no-exclusion":
        return slides_market(7), slides_second_best(7, False)
    m, sb, _, _ = town_mechanisms(2, "in_kind")
    return m, sb


@pytest.mark.parametrize("case", INTERIM_CASES)
def test_interim_payments_satisfy_revenue_identity_14(case: str) -> None:
    _, mech = interim_case(case)
    d = mech.result.details
    scale = max(1.0, float(np.max(np.abs(d["expected_payments"]))))
    tol = 1e-10 if d["method"] == "moments" else 1e-6
    assert d["revenue_identity_gap"] <= tol * scale


@pytest.mark.parametrize("case", INTERIM_CASES)
def test_interim_V_and_P_are_monotone_and_net_benefit_is_the_integral_of_V(case: str) -> None:
    m, mech = interim_case(case)
    for k, table in enumerate(mech.tables):
        dist = m.locations[k].dist
        t = np.linspace(table.theta0, dist.high, 401)[1:]
        V = table.value(t)
        P = table.payment(t)
        scale = max(1.0, float(np.max(np.abs(V))), float(np.max(np.abs(P))))
        assert np.all(np.diff(V) >= -1e-10 * scale)  # Lemma 1: V nondecreasing
        assert np.all(np.diff(P) >= -1e-10 * scale)  # P' = θ V' ≥ 0
        net = t * V - P
        assert np.all(net >= -1e-9 * scale)  # individual rationality
        # Lemma 1 / (12): θ V(θ) − P(θ) = ∫_{θ₀}^θ V, lowest included type nets zero.
        lo = table.theta0 if np.isfinite(dist.g(np.array([table.theta0]))[0]) else float(
            dist.ppf(1e-12))
        for tt in (t[0], t[100], t[250], t[-1]):
            integral = integrate.quad(lambda x, T=table: float(T.V(x)), lo, tt, limit=200,
                                      epsabs=1e-12, epsrel=1e-10)[0]
            assert tt * float(table.value(np.array([tt]))[0]) - float(
                table.payment(np.array([tt]))[0]) == pytest.approx(integral, rel=1e-7, abs=1e-10)
        # Types below the threshold are excluded, get nothing and pay nothing.
        if table.theta0 > dist.low:
            below = np.linspace(dist.low, table.theta0, 5)[:-1]
            assert np.all(table.value(below) == 0.0) and np.all(table.payment(below) == 0.0)


@pytest.mark.parametrize("case", INTERIM_CASES)
def test_interim_V_matches_monte_carlo_of_allocate(case: str) -> None:
    # V_k(θ) of (8) = E[π Σ_l W_kl u_l(Q_l) | θ_i = θ]: fix one agent's type, draw the others.
    m, mech = interim_case(case)
    rng = np.random.default_rng(8)
    starts = np.concatenate([[0], np.cumsum(m.sizes)])
    S = 600
    others = m.sample_types(rng, S)
    for k, table in enumerate(mech.tables):
        agent = int(starts[k])
        for q in (0.45, 0.9):
            theta = float(m.locations[k].dist.ppf(q))
            assert theta > table.theta0
            benefit = np.empty(S)
            for s in range(S):
                prof = others[s].copy()
                prof[agent] = theta
                al = mech.allocate(prof)
                u = np.array([float(loc.utility(al.Q[l])) for l, loc in enumerate(m.locations)])
                benefit[s] = float(al.included[agent]) * float(m.weights[k] @ u)
            mc, se = mean_se(benefit)
            assert abs(float(table.value(np.array([theta]))[0]) - mc) < 4 * se + 1e-12


# ---------------------------------------------------------------------------------
# several locations: money vs in kind
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("towns", [2, 3])
def test_in_kind_has_one_multiplier_per_location_with_complementary_slackness(towns: int) -> None:
    _m, sb, _, _ = town_mechanisms(towns, "in_kind")
    r = sb.result
    assert r.success
    assert r.lambdas is not None and r.lambdas.shape == (towns,)
    assert np.all(r.lambdas >= 0)
    cons = np.asarray(r.details["constraint_values"])
    assert cons.shape == (towns,)
    scale = max(1.0, float(np.sum(r.details["expected_cost"])))
    assert np.all(cons >= -1e-8 * scale)
    for lam, c in zip(r.lambdas, cons, strict=True):
        if lam > 1e-8:
            assert abs(c) <= 1e-8 * scale
        if c > 1e-6 * scale:
            assert lam <= 1e-8
    if towns == 3:
        # The rich town pays its own way with room to spare: λ = 0, constraint slack.
        assert r.lambdas[1] <= 1e-8 and cons[1] > 1.0
        assert r.lambdas[0] > 0.1 and r.lambdas[2] > 0.1


def test_in_kind_multipliers_are_found_when_one_location_values_only_the_other() -> None:
    # Location 1 values location 0's facility fully (W[1, 0] = 1) but not vice versa, so
    # location 1's own budget is slack. The KKT point is λ = (1.2479470600, 0): location
    # 0's constraint binds, location 1's is slack (0.0418). By Lagrangian sufficiency this
    # is the optimum; an infeasible λ (constraint 0 < 0) must never be returned.
    U = TypeDistribution.uniform()
    locs = (Location("loc0", 2, U, PowerUtility(1.5, 0.5), PowerCost(1.0, 1.0)),
            Location("loc1", 2, U, PowerUtility(1.0, 0.5), PowerCost(1.0, 1.0)))
    m = Market(locs, np.array([[1.0, 0.0], [1.0, 1.0]]), "in_kind")
    r = second_best(m).result
    assert r.success, r.status
    assert r.lambdas is not None
    assert r.lambdas[0] == pytest.approx(1.2479470600, rel=1e-6)
    assert r.lambdas[1] == pytest.approx(0.0, abs=1e-8)
    cons = np.asarray(r.details["constraint_values"])
    assert cons[0] == pytest.approx(0.0, abs=1e-9)
    assert cons[1] == pytest.approx(0.0418188752, rel=1e-5)
    assert r.welfare == pytest.approx(2.1104772295, rel=1e-8)


@pytest.mark.parametrize("towns", [2, 3])
def test_money_has_one_pooled_constraint_that_binds(towns: int) -> None:
    _m, sb, _, _ = town_mechanisms(towns, "money")
    r = sb.result
    assert r.success
    cons = np.asarray(r.details["constraint_values"])
    assert cons.shape == (1,)
    scale = max(1.0, float(np.sum(r.details["expected_cost"])))
    assert abs(cons[0]) <= 1e-8 * scale
    assert r.lambdas is not None and np.all(r.lambdas == r.lambdas[0]) and r.lambdas[0] > 0


@pytest.mark.parametrize("towns", [2, 3])
def test_in_kind_welfare_never_exceeds_money_welfare(towns: int) -> None:
    # Payments in kind add constraints (one budget per location instead of one pool).
    money = town_mechanisms(towns, "money")[1].result.welfare
    kind = town_mechanisms(towns, "in_kind")[1].result.welfare
    assert kind <= money + 1e-10 * abs(money)
    assert kind < money  # here some location subsidises another under money


@pytest.mark.parametrize("payment", ["money", "in_kind"])
@pytest.mark.parametrize("towns", [2, 3])
def test_multi_location_second_best_lies_between_posted_fee_and_first_best(
        towns: int, payment: str) -> None:
    _, sb, fb, pf = town_mechanisms(towns, payment)
    assert pf <= sb.result.welfare <= fb.result.welfare


@pytest.mark.parametrize("towns", [2, 3])
def test_in_kind_second_best_matches_monte_carlo_per_location(towns: int) -> None:
    m, sb, _, _ = town_mechanisms(towns, "in_kind")
    welfare, surplus = monte_carlo(sb, m, seed=300 + towns, samples=1500)
    mc, se = mean_se(welfare)
    assert abs(mc - sb.result.welfare) < 3 * se
    # Each location's expected payments minus expected cost is its constraint value (24).
    cons = np.asarray(sb.result.details["constraint_values"])
    for l in range(m.L):
        s_mc, s_se = mean_se(surplus[:, l])
        assert abs(s_mc - cons[l]) < 3 * s_se + 1e-9


# ---------------------------------------------------------------------------------
# random small markets
# ---------------------------------------------------------------------------------
@st.composite
def small_markets(draw: st.DrawFn) -> Market:
    """1 location with any power exponents, or 2 locations (money or in kind) whose
    exponents α/(β−α), β/(β−α) are integers (the moment method), so that each example
    solves in about a second. β − α ≥ 0.3 keeps Q ∝ a^(1/(β−α)) from being so
    heavy-tailed that a few thousand Monte Carlo profiles could not estimate its mean."""
    L = draw(st.integers(1, 2))
    payment = draw(st.sampled_from(["money", "in_kind"])) if L == 2 else "money"
    locs = []
    for l in range(L):
        n = draw(st.integers(2, 30 if L == 1 else 12))
        A = draw(st.floats(0.5, 2.0))
        B = draw(st.floats(0.5, 2.0))
        delta = draw(st.floats(0.0, 1.0))
        if L == 1:
            alpha = draw(st.floats(0.2, 0.9, exclude_min=True, exclude_max=True))
            beta = draw(st.floats(max(1.0, alpha + 0.3), 2.0))
        else:
            k = draw(st.sampled_from([1, 2]))
            beta = draw(st.floats(1.0, 1.3))
            alpha = beta * k / (k + 1)
        if draw(st.booleans()):
            low = draw(st.floats(0.0, 0.5))
            dist = TypeDistribution.uniform(low, low + draw(st.floats(0.5, 1.5)))
        else:
            # Integer shape parameters: scipy's Beta sf is ~3x slower otherwise.
            shapes = st.sampled_from([1.0, 2.0, 3.0])
            dist = TypeDistribution.beta(draw(shapes), draw(shapes))
        locs.append(Location(f"loc{l}", n, dist, PowerUtility(A, alpha),
                             PowerCost(B, beta, delta)))
    W = np.eye(L)
    if L == 2:
        W[0, 1] = draw(st.floats(0.0, 1.0))
        W[1, 0] = draw(st.floats(0.0, 1.0))
    return Market(tuple(locs), W, payment)


# No shrinking: an example costs about a second, and shrinking a failure would take
# minutes; the unshrunk failing market is reported as is.
@pytest.mark.slow
@settings(max_examples=5, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(m=small_markets(), seed=st.integers(0, 2**32 - 1))
def test_second_best_on_random_small_markets(m: Market, seed: int) -> None:
    mech = second_best(m)
    r = mech.result
    assert r.success, r.status
    d = r.details
    scale = max(1.0, float(np.sum(d["expected_cost"])), abs(r.welfare))
    # Budget constraint(s) (3)/(24): feasible, and binding wherever λ > 0.
    cons = np.asarray(d["constraint_values"])
    lams = r.lambdas if m.payment == "in_kind" else r.lambdas[:1]  # type: ignore[index]
    for lam, c in zip(lams, cons, strict=True):
        assert c >= -1e-6 * scale
        if lam > 1e-8:
            assert abs(c) < 1e-6 * scale
    # Ordering: never above the first best.
    assert r.welfare <= first_best(m).result.welfare + 1e-6 * scale
    # Interim V nondecreasing, IR, revenue identity.
    for k, table in enumerate(mech.tables):
        dist = m.locations[k].dist
        t = np.linspace(table.theta0, dist.high, 201)[1:]
        V = table.value(t)
        P = table.payment(t)
        vs = max(1.0, float(np.max(np.abs(V))), float(np.max(np.abs(P))))
        assert np.all(np.diff(V) >= -1e-9 * vs)
        assert np.all(t * V - P >= -1e-9 * vs)
    # (14) holds to the lattice's accuracy; the worst seen is 1.7e-5 on payments of 0.19
    # (n = 2, α = 0.2: u' is unbounded at Q = 0, so E[φ(x + Z₋)] is least smooth there).
    assert d["revenue_identity_gap"] <= 1e-4 * max(1.0, float(np.max(d["expected_payments"])))
    # Expected welfare: independent Monte Carlo of allocate.
    welfare, _ = monte_carlo(mech, m, seed=seed, samples=1500)
    mc, se = mean_se(welfare)
    assert abs(mc - r.welfare) < 4 * se + 1e-9 * scale, (r.welfare, mc, se)
