"""The posted-fee mechanism P̂(n) (coordinator.mechanism.posted_fee), eqs. (18)-(23).

Held against the slides' closed forms, a direct optimisation of (18)-(19) that shares
no code with the engine, a direct constrained optimisation for several locations,
Monte Carlo of ``allocate``, and the bridge (discrete sizes) in closed form.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import integrate, optimize

from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.market import Location, Market, PowerCost, PowerUtility, slides_market
from coordinator.mechanism.posted_fee import PostedFeeMechanism, posted_fee
from coordinator.mechanism.sums import virtual_weight

UNIFORM = TypeDistribution.uniform()
BETA23 = TypeDistribution.beta(2.0, 3.0)
TRUNCNORM = TypeDistribution.from_scipy(
    "truncnorm", 0.0, 1.0, a=-4.0 / 3.0, b=2.0, loc=0.4, scale=0.3)


def _partial_mean(dist: TypeDistribution, t: float) -> float:
    """∫_t^high θ f(θ) dθ: closed forms for U[lo, hi] and Beta(2, 2), else scipy quad
    (either way independent of the engine's quadrature)."""
    spec = dist.spec
    t = min(max(t, dist.low), dist.high)
    if spec.get("dist") == "uniform":
        return (dist.high**2 - t * t) / (2 * (dist.high - dist.low))
    if spec.get("dist") == "beta" and (spec["a"], spec["b"], dist.low, dist.high) == (2, 2, 0, 1):
        return 2 * (1 - t**3) - 1.5 * (1 - t**4)  # f = 6θ(1 − θ)
    return float(integrate.quad(lambda x: x * float(dist.pdf(x)), t, dist.high,
                                epsabs=1e-14, epsrel=1e-12, limit=200)[0])


# ---------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1000])
def test_posted_fee_on_slides_market_is_3n2_over_128_with_Q_n2_over_64_and_fee_n_over_48(
        n: int) -> None:
    r = posted_fee(slides_market(n)).result
    assert r.success
    assert r.welfare == pytest.approx(3 * n * n / 128, rel=1e-9)
    assert r.Q is not None and r.fees is not None and r.thresholds is not None
    assert r.Q[0] == pytest.approx(n * n / 64, rel=1e-9)
    assert r.fees[0] == pytest.approx(n / 48, rel=1e-9)
    assert r.thresholds[0] == pytest.approx(0.25, rel=1e-9)
    assert r.lambdas is not None and r.lambdas[0] == pytest.approx(0.5, rel=1e-9)
    # The fee is θ* u(Q*) (21): the threshold type is indifferent.
    assert r.fees[0] == pytest.approx(0.25 * (2 / 3) * math.sqrt(r.Q[0]), rel=1e-12)


def _direct_posted_fee(n: int, dist: TypeDistribution, A: float, alpha: float, B: float,
                       beta: float, delta: float) -> tuple[float, float, float]:
    """Maximise (18) over θ subject to (19), one location, without the engine.

    For a fixed θ the welfare n m(θ) A Q^α − B n^δ Q^β is concave in Q with maximiser
    Q_fb(θ), and (19) n (1 − F(θ)) θ A Q^α ≥ B n^δ Q^β holds exactly for Q ≤ Q_b(θ); so
    Q(θ) = min(Q_fb, Q_b) and only θ is searched (a grid, then a bounded Brent search).
    """
    Bn = B * n**delta
    r = 1.0 / (beta - alpha)

    def plan(t: float) -> tuple[float, float]:
        m = _partial_mean(dist, t)
        q_fb = (n * m * A * alpha / (Bn * beta)) ** r
        q_b = (n * float(dist.sf(t)) * t * A / Bn) ** r if t > 0 else 0.0
        q = min(q_fb, q_b)
        return n * m * A * q**alpha - Bn * q**beta, q

    grid = np.linspace(dist.low, dist.high, 61)
    vals = [plan(float(t))[0] for t in grid]
    i = int(np.argmax(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = optimize.minimize_scalar(lambda t: -plan(t)[0], bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-12})
    t = float(res.x)
    w, q = plan(t)
    return w, t, q


@pytest.mark.parametrize("n, dist, A, alpha, B, beta, delta", [
    (5, UNIFORM, 2 / 3, 0.5, 1.0, 1.0, 0.0),
    (8, BETA23, 1.2, 0.3, 0.7, 1.4, 0.5),
    (4, TRUNCNORM, 0.9, 0.7, 1.3, 2.0, 1.0),
    (12, TypeDistribution.uniform(0.2, 1.7), 1.0, 0.5, 2.0, 1.0, 0.2),
], ids=["slides5", "beta23", "truncnorm", "U[0.2,1.7]"])
def test_posted_fee_matches_a_direct_optimisation_of_18_and_19(
        n: int, dist: TypeDistribution, A: float, alpha: float, B: float, beta: float,
        delta: float) -> None:
    m = Market((Location("x", n, dist, PowerUtility(A, alpha), PowerCost(B, beta, delta)),),
               np.eye(1))
    r = posted_fee(m).result
    assert r.success
    w, t, q = _direct_posted_fee(n, dist, A, alpha, B, beta, delta)
    assert r.welfare == pytest.approx(w, rel=1e-8)
    assert r.thresholds is not None and r.Q is not None
    assert r.thresholds[0] == pytest.approx(t, abs=1e-5)
    assert r.Q[0] == pytest.approx(q, rel=1e-4)


def test_posted_fee_with_slack_budget_includes_everyone_at_the_first_best_size() -> None:
    # θ ~ U[1, 2]: charging the lowest type its value covers the cost with room to spare.
    n = 5
    m = Market((Location("rich", n, TypeDistribution.uniform(1.0, 2.0),
                         PowerUtility(2 / 3, 0.5), PowerCost(1.0, 1.0)),), np.eye(1))
    r = posted_fee(m).result
    assert r.success
    assert r.lambdas is not None and r.lambdas[0] == 0.0
    assert r.thresholds is not None and r.thresholds[0] == 1.0
    a = n * 1.5  # n E θ
    assert r.Q is not None and r.Q[0] == pytest.approx((a / 3) ** 2, rel=1e-12)
    assert r.welfare == pytest.approx(a * a / 9, rel=1e-12)
    assert r.details["constraint_values"][0] > 0.5


# ---------------------------------------------------------------------------------
# several locations
# ---------------------------------------------------------------------------------
def _towns(payment: str, towns: int) -> Market:
    if towns == 2:
        locs = (Location("centre", 6, UNIFORM, PowerUtility(1.0, 0.5), PowerCost(1.0, 1.0)),
                Location("campus", 4, TypeDistribution.beta(2.0, 2.0), PowerUtility(1.0, 0.5),
                         PowerCost(2.0, 1.0)))
        return Market(locs, np.array([[1.0, 0.8], [0.1, 1.0]]), payment)
    locs = (Location("centre", 6, UNIFORM, PowerUtility(1.0, 0.5), PowerCost(1.0, 1.0)),
            Location("rich", 4, TypeDistribution.uniform(1.0, 2.0), PowerUtility(1.0, 0.5),
                     PowerCost(1.0, 1.0)),
            Location("poor", 3, TRUNCNORM, PowerUtility(0.8, 0.5), PowerCost(1.5, 1.0, 0.5)))
    return Market(locs, np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.0], [0.2, 0.0, 1.0]]), payment)


@functools.cache
def town_posted_fee(payment: str, towns: int) -> PostedFeeMechanism:
    return posted_fee(_towns(payment, towns))


def _plan_values(m: Market, th: np.ndarray, Q: np.ndarray) -> tuple[float, np.ndarray]:
    """Welfare (18) and per-location budget terms n_i (1−F_i(θ_i)) θ_i Σ_l W_il u_l − c_i."""
    u = np.array([float(loc.utility(Q[l])) for l, loc in enumerate(m.locations)])
    c = np.array([float(loc.cost(loc.n, Q[l])) for l, loc in enumerate(m.locations)])
    benefit = m.weights @ u
    n = m.sizes.astype(float)
    mean_in = np.array([_partial_mean(loc.dist, float(t)) for loc, t in zip(m.locations, th,
                                                                            strict=True)])
    sf = np.array([float(loc.dist.sf(t)) for loc, t in zip(m.locations, th, strict=True)])
    return float(np.sum(n * mean_in * benefit) - c.sum()), n * sf * th * benefit - c


@pytest.mark.parametrize("payment", ["money", "in_kind"])
@pytest.mark.parametrize("towns", [2, 3])
def test_multi_location_posted_fee_reports_its_own_plan_consistently(towns: int,
                                                                     payment: str) -> None:
    mech = town_posted_fee(payment, towns)
    m = mech.market
    r = mech.result
    assert r.success, r.status
    assert r.thresholds is not None and r.Q is not None and r.fees is not None
    assert r.lambdas is not None
    welfare, per_loc = _plan_values(m, r.thresholds, r.Q)
    assert r.welfare == pytest.approx(welfare, rel=1e-9)
    cons = np.asarray(r.details["constraint_values"])
    want = per_loc if payment == "in_kind" else np.array([per_loc.sum()])
    scale = max(1.0, abs(r.welfare))
    np.testing.assert_allclose(cons, want, rtol=0, atol=1e-9 * scale)
    # Fees (21): θ*_i Σ_l W_il u_l(Q*_l); thresholds are zeros of θ + λ_i g_i(θ).
    u = np.array([float(loc.utility(r.Q[l])) for l, loc in enumerate(m.locations)])
    np.testing.assert_allclose(r.fees, r.thresholds * (m.weights @ u), rtol=1e-12)
    for k, loc in enumerate(m.locations):
        t = r.thresholds[k]
        if loc.dist.low < t < loc.dist.high:
            assert float(virtual_weight(loc.dist, float(r.lambdas[k]), t)) == pytest.approx(
                0.0, abs=1e-9)


@pytest.mark.parametrize("payment", ["money", "in_kind"])
@pytest.mark.parametrize("towns", [2, 3])
def test_multi_location_posted_fee_constraints_hold_and_bind_where_priced(
        towns: int, payment: str) -> None:
    r = town_posted_fee(payment, towns).result
    cons = np.asarray(r.details["constraint_values"])
    assert cons.shape == ((towns,) if payment == "in_kind" else (1,))
    scale = max(1.0, abs(r.welfare))
    assert np.all(cons >= -1e-9 * scale)
    lams = r.lambdas if payment == "in_kind" else r.lambdas[:1]  # type: ignore[index]
    assert lams is not None
    for lam, c in zip(lams, cons, strict=True):
        if lam > 1e-8:
            assert abs(c) <= 1e-9 * scale
        else:
            assert c >= 0.0
    if payment == "in_kind" and towns == 3:
        # "rich" (types in [1, 2]) covers its own cost with everyone in: λ = 0, slack.
        assert lams[1] <= 1e-8 and cons[1] > 1.0
        assert r.thresholds is not None and r.thresholds[1] == 1.0


@pytest.mark.parametrize("towns", [2, 3])
def test_posted_fee_in_kind_never_beats_money(towns: int) -> None:
    money = town_posted_fee("money", towns).result.welfare
    kind = town_posted_fee("in_kind", towns).result.welfare
    assert kind <= money + 1e-10 * abs(money)


def _direct_two_town_optimum(m: Market) -> float:
    """max (18) over (θ_0, θ_1, Q_0, Q_1) subject to the per-location (in kind) or pooled
    (money) budget, by SLSQP from several starts; independent of the engine."""

    def values(x: np.ndarray) -> tuple[float, np.ndarray]:
        th = np.clip(x[:2], 0.0, 1.0)
        Q = np.maximum(x[2:], 0.0)
        return _plan_values(m, th, Q)

    cons = ({"type": "ineq", "fun": lambda x: values(x)[1]} if m.payment == "in_kind"
            else {"type": "ineq", "fun": lambda x: np.array([values(x)[1].sum()])})
    best = -math.inf
    for start in ([0.3, 0.3, 4.0, 2.0], [0.5, 0.5, 1.0, 1.0]):
        res = optimize.minimize(lambda x: -values(x)[0], np.array(start), method="SLSQP",
                                bounds=[(0, 1), (0, 1), (0, 100), (0, 100)],
                                constraints=cons, options={"ftol": 1e-13, "maxiter": 500})
        if res.success and np.all(np.atleast_1d(cons["fun"](res.x)) >= -1e-9):
            best = max(best, -float(res.fun))
    return best


@pytest.mark.parametrize("payment", ["money", "in_kind"])
def test_two_town_posted_fee_matches_a_direct_constrained_optimisation(payment: str) -> None:
    mech = town_posted_fee(payment, 2)
    direct = _direct_two_town_optimum(mech.market)
    assert math.isfinite(direct)
    assert mech.result.welfare == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("payment", ["money", "in_kind"])
@pytest.mark.parametrize("towns", [2, 3])
def test_posted_fee_allocation_matches_its_expected_welfare_and_budget(towns: int,
                                                                      payment: str) -> None:
    mech = town_posted_fee(payment, towns)
    m = mech.market
    rng = np.random.default_rng(4000 + towns)
    S = 2500
    types = m.sample_types(rng, S)
    welfare = np.empty(S)
    surplus = np.empty((S, m.L))
    for s in range(S):
        al = mech.allocate(types[s])
        np.testing.assert_array_equal(al.Q, mech.result.Q)  # sizes fixed in advance
        u = np.array([float(loc.utility(al.Q[l])) for l, loc in enumerate(m.locations)])
        c = np.array([float(loc.cost(loc.n, al.Q[l])) for l, loc in enumerate(m.locations)])
        benefit = (m.weights @ u)[m.agent_locations()]
        welfare[s] = float(np.sum(np.where(al.included, types[s] * benefit, 0.0)) - c.sum())
        surplus[s] = al.budget_surplus()
    se = welfare.std(ddof=1) / math.sqrt(S)
    assert abs(welfare.mean() - mech.result.welfare) < 3 * se
    cons = np.asarray(mech.result.details["constraint_values"])
    budgets = surplus if payment == "in_kind" else surplus.sum(axis=1, keepdims=True)
    for j in range(budgets.shape[1]):
        b_se = budgets[:, j].std(ddof=1) / math.sqrt(S)
        assert abs(budgets[:, j].mean() - cons[j]) < 3 * b_se + 1e-9
    # Balanced only on average: some profiles leave a deficit.
    assert np.min(budgets) < -1e-3


# ---------------------------------------------------------------------------------
# discrete sizes: the bridge
# ---------------------------------------------------------------------------------
def _bridge(n: int, cost: float) -> Market:
    return Market((Location("bridge", n, UNIFORM, PowerUtility(1.0, 1.0),
                            PowerCost(cost, 1.0)),), np.eye(1), levels=(0, 1))


@pytest.mark.parametrize("n, cost", [(4, 1.0), (6, 1.0), (10, 1.0), (2, 0.5), (3, 0.6)])
def test_posted_fee_bridge_builds_at_the_smallest_feasible_threshold(n: int, cost: float) -> None:
    # Build (Q = 1) and charge θ*: n (1 − θ*) θ* ≥ c; welfare n (1 − θ*²)/2 − c decreases
    # in θ*, so θ* = (1 − √(1 − 4c/n))/2, the smaller root.
    r = posted_fee(_bridge(n, cost)).result
    assert r.success
    t = (1 - math.sqrt(1 - 4 * cost / n)) / 2
    assert r.Q is not None and r.Q.tolist() == [1.0]
    assert r.thresholds is not None and r.thresholds[0] == pytest.approx(t, abs=1e-7)
    assert r.fees is not None and r.fees[0] == pytest.approx(t, abs=1e-7)
    assert r.welfare == pytest.approx(n * (1 - t * t) / 2 - cost, rel=1e-7)


@pytest.mark.parametrize("n", [2, 3])
def test_posted_fee_bridge_is_not_built_when_no_fee_covers_the_cost(n: int) -> None:
    # max_θ n θ (1 − θ) = n/4 < 1: no posted fee pays for the bridge.
    mech = posted_fee(_bridge(n, 1.0))
    r = mech.result
    assert r.success
    assert r.Q is not None and r.Q.tolist() == [0.0]
    assert r.welfare == 0.0
    al = mech.allocate(np.full(n, 0.99))
    assert al.Q.tolist() == [0.0] and al.cost.tolist() == [0.0]
    assert np.all(al.budget_surplus() >= 0.0)


def test_posted_fee_bridge_allocation_charges_the_fee_to_those_above_threshold() -> None:
    mech = posted_fee(_bridge(6, 1.0))
    t = float(mech.result.thresholds[0])  # type: ignore[index]
    al = mech.allocate(np.array([0.0, t - 1e-6, t, 0.5, 0.9, 1.0]))
    assert al.included.tolist() == [False, False, True, True, True, True]
    np.testing.assert_allclose(al.payments, [0, 0, t, t, t, t], rtol=1e-12)
    assert al.Q.tolist() == [1.0] and al.cost.tolist() == [1.0]
