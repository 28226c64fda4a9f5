"""Equal-contribution schemes (slides "Simple 'Equal Contribution' Schemes").

The slides' example is u(Q) = ⅔√Q, c(n, Q) = Q, θ ~ U[0, 1]. Independent checks: for
that example each scheme's equilibria can be parametrised by θ* in closed form,

(a) √Q = ⅔ n θ(1 − θ)/(1 − θ^n)  ⇒  SW = (2/9) n² θ(1 − θ)³ / (1 − θ^n),
(b) √φ = ⅔ θ S,  S = E√(1 + Bin(n − 1, 1 − θ))  ⇒  SW = (2/9) n θ (1 − θ)² S²,
(c) budget binding: √Q = ⅔ n θ(1 − θ)  ⇒  SW = (2/9) n² θ(1 − θ)³  (max 3n²/128 at 1/4),

and maximised over θ here by a separate bounded Brent search.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.equal_contribution import (
    Economy,
    expected_inverse_count,
    post_fee_and_size,
    post_fee_build_largest,
    post_fee_threshold,
    post_fee_welfare,
    post_size_share_cost,
    post_size_threshold,
    prob_some,
    slides_economy,
    slides_utility,
)
from coordinator.mechanism.result import Mechanism

NS = [1, 2, 5, 10, 100, 1000]


def _argmax_theta(sw: object, lo: float = 0.01, hi: float = 0.6) -> float:
    res = optimize.minimize_scalar(lambda t: -sw(t), bounds=(lo, hi),  # type: ignore[operator]
                                   method="bounded", options={"xatol": 1e-14})
    return -float(res.fun)


def _sw_a(n: int) -> float:
    return _argmax_theta(lambda t: 2 / 9 * n * n * t * (1 - t) ** 3 / (1 - t**n))


def _sw_b(n: int) -> float:
    k = np.arange(n)

    def sw(t: float) -> float:
        S = float(stats.binom.pmf(k, n - 1, 1 - t) @ np.sqrt(1.0 + k))
        return 2 / 9 * n * t * (1 - t) ** 2 * S * S

    return _argmax_theta(sw)


# -- exact binomial pieces --------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=300),
       # scipy's binom.pmf (the oracle) overflows for p near the smallest normal float
       st.floats(min_value=0.0, max_value=1.0).filter(lambda p: p == 0.0 or p > 1e-300))
def test_expected_inverse_count_matches_binomial_sum(n: int, p: float) -> None:
    k = np.arange(n)
    direct = float(stats.binom.pmf(k, n - 1, p) @ (1.0 / (1.0 + k)))
    assert float(expected_inverse_count(n, p)) == pytest.approx(direct, rel=1e-11, abs=1e-300)
    some = float(stats.binom.sf(0, n, p))  # P(Bin(n, p) ≥ 1), no cancellation
    assert float(prob_some(n, p)) == pytest.approx(some, rel=1e-12, abs=1e-300)


# -- (c) post a fee and a size: exactly 3n²/128 --------------------------------------------


@pytest.mark.parametrize("n", [*NS, 10000])
def test_post_fee_and_size_closed_form(n: int) -> None:
    m = post_fee_and_size(slides_economy(n))
    res = m.result
    assert res.mechanism == "equal_share_post_fee_and_size" and res.success
    assert res.welfare == pytest.approx(3 * n * n / 128, rel=1e-12)
    assert pytest.approx(n * n / 64, rel=1e-7) == m.Q
    assert m.phi == pytest.approx(n / 48, rel=1e-7)
    assert m.theta_star == pytest.approx(0.25, rel=1e-7)
    assert res.details["expected_budget_surplus"] == pytest.approx(0.0, abs=1e-9 * n * n)


@settings(max_examples=8, deadline=None)
@given(st.integers(min_value=1, max_value=400))
def test_post_fee_and_size_any_n(n: int) -> None:
    assert post_fee_and_size(slides_economy(n)).result.welfare == pytest.approx(
        3 * n * n / 128, rel=1e-12)


# -- (a) post a size, share the cost --------------------------------------------------------


@pytest.mark.parametrize("n", NS)
def test_post_size_share_cost_matches_parametric_form(n: int) -> None:
    e = slides_economy(n)
    m = post_size_share_cost(e)
    assert m.result.mechanism == "equal_share_post_size" and m.result.success
    assert m.result.welfare == pytest.approx(_sw_a(n), rel=1e-10)
    # θ* is a fixed point: θ* u(Q) = c(n, Q) E[1/X].
    p = 1 - m.theta_star
    share = m.Q * float(expected_inverse_count(n, p))
    assert m.theta_star * float(slides_utility(np.array(m.Q))) == pytest.approx(share, rel=1e-12)
    assert m.result.fees is not None and m.result.fees[0] == pytest.approx(share, rel=1e-14)
    # Scheme (a) is never worse than (c): its budget constraint is slightly looser.
    assert m.result.welfare >= 3 * n * n / 128 * (1 - 1e-12)


def test_post_size_n_equals_1() -> None:
    # One agent: SW = (2/9) max θ(1 − θ)² = 8/243, the same for schemes (a) and (b).
    e = slides_economy(1)
    assert post_size_share_cost(e).result.welfare == pytest.approx(8 / 243, rel=1e-12)
    assert post_fee_build_largest(e).result.welfare == pytest.approx(8 / 243, rel=1e-12)


def test_post_size_n_coefficient() -> None:
    # Slides: SW = 3n²/128 − n/384 + O(1), computed with the prior count X ~ Bin(n, p)
    # (test_slides_convention_recovers_the_printed_n_coefficients). Counting himself
    # (X = 1 + Bin(n − 1, p), the default): (SW − 3n²/128)/n = 0 to rounding at n = 1000
    # and 10000, since with the exact E[1/X] = (1 − θ^n)/(n(1 − θ)) the welfare is
    # (2/9) n² θ(1 − θ)³/(1 − θ^n) ≥ 3n²/128, equal up to a relative 4^-n.
    for n in (1000, 10000):
        sw = post_size_share_cost(slides_economy(n)).result.welfare
        coef = (sw - 3 * n * n / 128) / n
        assert coef == pytest.approx(0.0, abs=1e-9)
        assert abs(coef - (-1 / 384)) > 2e-3


# -- (b) post a fee, build the largest facility -----------------------------------------


@pytest.mark.parametrize("n", NS)
def test_post_fee_build_largest_matches_parametric_form(n: int) -> None:
    e = slides_economy(n)
    m = post_fee_build_largest(e)
    assert m.result.mechanism == "equal_share_post_fee" and m.result.success
    assert m.result.welfare == pytest.approx(_sw_b(n), rel=1e-10)
    # The direct formula E[θ | θ ≥ θ*] E[X u(Xφ)] − φ E[X], X ~ Bin(n, p).
    p = 1 - m.theta_star
    k = np.arange(n + 1)
    pmf = stats.binom.pmf(k, n, p)
    direct = (1 + m.theta_star) / 2 * float(pmf @ (k * slides_utility(k * m.phi))) - m.phi * n * p
    assert m.result.welfare == pytest.approx(direct, rel=1e-11)
    # θ* is a fixed point: θ* E[u((1 + B)φ)] = φ, B ~ Bin(n − 1, p).
    U = float(stats.binom.pmf(k[:-1], n - 1, p) @ slides_utility((1 + k[:-1]) * m.phi))
    assert m.theta_star * U == pytest.approx(m.phi, rel=1e-12)
    assert post_fee_threshold(e, m.phi) == m.theta_star
    assert post_fee_welfare(e, m.phi) == m.result.welfare
    assert m.result.Q is not None
    assert m.result.Q[0] == pytest.approx(n * p * m.phi, rel=1e-12)  # E[c⁻¹(Xφ)] = E[X]φ


def test_post_fee_n_coefficient() -> None:
    # Slides: SW = 3n²/128 + 7n/1536 + O(1) under the prior count X ~ Bin(n, p).
    # Counting himself (the default): (SW − 3n²/128)/n = 0.0058617363 at
    # n = 1000 and 0.0058596110 at n = 10000; the slope between them is 0.00585937 =
    # 9/1536 (= 3/512), not 7/1536 ≈ 0.0045573. Evidence: SW = (2/9) n θ(1 − θ)² S² with
    # S² = E√(1 + B)² = n(1 − θ) + 3θ/4 + O(1/n) (delta method, Var B/(4 E[1 + B]) → θ/4),
    # so at θ = 1/4 the n-term is (2/9)(3/4)θ²(1 − θ)² n = 9n/1536. Pinned, not tuned.
    r = {}
    for n in (1000, 10000):
        sw = post_fee_build_largest(slides_economy(n)).result.welfare
        r[n] = sw - 3 * n * n / 128
    assert r[1000] / 1000 == pytest.approx(0.0058617363, abs=1e-9)
    assert r[10000] / 10000 == pytest.approx(0.0058596110, abs=1e-9)
    slope = (r[10000] - r[1000]) / 9000
    assert slope == pytest.approx(9 / 1536, abs=1e-7)
    assert abs(slope - 7 / 1536) > 1e-3


def test_ordering_of_schemes() -> None:
    for n in (2, 5, 10, 100):
        e = slides_economy(n)
        c = post_fee_and_size(e).result.welfare
        a = post_size_share_cost(e).result.welfare
        b = post_fee_build_largest(e).result.welfare
        assert c <= a * (1 + 1e-12) and a < b
        assert b < n * n / 36 + n / 108  # the first best of the slides


# -- allocate: seeded Monte Carlo ----------------------------------------------------------


def _monte_carlo(mech: Mechanism, e: Economy, draws: int, seed: int) -> tuple[
        np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    welfare = np.empty(draws)
    surplus = np.empty(draws)
    types = e.dist.rvs((draws, e.n), rng)
    for k in range(draws):
        al = mech.allocate(types[k])
        assert al.location.tolist() == [0] * e.n and al.Q.shape == (1,)
        benefit = float(types[k][al.included].sum()) * float(np.asarray(e.u(al.Q))[0])
        welfare[k] = benefit - al.cost[0]
        surplus[k] = al.budget_surplus()[0]
    return welfare, surplus


@pytest.mark.parametrize("scheme", ["a", "b", "c"])
def test_allocate_monte_carlo(scheme: str) -> None:
    e = slides_economy(10)
    mech: Mechanism
    if scheme == "a":
        mech = post_size_share_cost(e)
    elif scheme == "b":
        mech = post_fee_build_largest(e)
    else:
        mech = post_fee_and_size(e)
    welfare, surplus = _monte_carlo(mech, e, 6000, 99)
    se = welfare.std(ddof=1) / np.sqrt(len(welfare))
    assert abs(welfare.mean() - mech.result.welfare) < 3 * se
    if scheme == "c":  # only the expected budget balances
        se_s = surplus.std(ddof=1) / np.sqrt(len(surplus))
        assert abs(surplus.mean()) < 3 * se_s
    else:  # (a) and (b) balance in every realisation
        assert np.max(np.abs(surplus)) < 1e-9


def test_allocate_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        post_fee_and_size(slides_economy(3)).allocate([0.5, 0.5])


# -- a general economy -------------------------------------------------------------------


def test_general_economy_without_inverse_cost() -> None:
    dist = TypeDistribution.beta(2.0, 3.0)

    def u(q: np.ndarray) -> np.ndarray:
        return np.asarray(np.sqrt(q), dtype=float)

    def c(n: int, q: np.ndarray) -> np.ndarray:
        return np.asarray(0.1 * np.asarray(q, dtype=float) ** 1.5, dtype=float)

    e = Economy(dist, 6, u, c)
    ma, mb, mc = post_size_share_cost(e), post_fee_build_largest(e), post_fee_and_size(e)
    assert ma.result.success and mb.result.success and mc.result.success
    assert mc.result.welfare <= ma.result.welfare * (1 + 1e-10)
    # fixed points
    assert post_size_threshold(e, ma.Q) == ma.theta_star
    p = float(dist.sf(ma.theta_star))
    share = float(c(6, np.array(ma.Q))) * float(expected_inverse_count(6, p))
    assert ma.theta_star * float(u(np.array(ma.Q))) == pytest.approx(share, rel=1e-10)
    assert float(c(6, e.size_for(np.array([2.5]))[0])) == pytest.approx(2.5, rel=1e-12)
    welfare, surplus = _monte_carlo(mb, e, 3000, 5)
    se = welfare.std(ddof=1) / np.sqrt(len(welfare))
    assert abs(welfare.mean() - mb.result.welfare) < 3 * se
    assert np.max(np.abs(surplus)) < 1e-9


# -- the slides' convention: X ~ Bin(n, p), the prior count, given X ≥ 1 ---------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=300),
       st.floats(min_value=0.0, max_value=1.0).filter(lambda p: p == 0.0 or p > 1e-300))
def test_slides_inverse_count_matches_conditional_binomial_sum(n: int, p: float) -> None:
    k = np.arange(1, n + 1)
    mass = float(stats.binom.sf(0, n, p))
    got = float(expected_inverse_count(n, p, "slides"))
    if mass < 1e-290:  # X given X ≥ 1 tends to 1 as p → 0
        assert got == pytest.approx(1.0, rel=1e-9)
        return
    direct = float(stats.binom.pmf(k, n, p) @ (1.0 / k)) / mass
    assert got == pytest.approx(direct, rel=1e-10)


def test_conventions_differ_only_in_the_count_and_agree_for_one_agent() -> None:
    p = np.array([0.0, 0.2, 0.9, 1.0])
    assert np.allclose(expected_inverse_count(1, p, "slides"), 1.0)
    assert np.allclose(expected_inverse_count(1, p, "bayes"), 1.0)
    # Counting himself makes X larger, so the share a participant expects is smaller.
    assert np.all(expected_inverse_count(10, p[1:3], "bayes")
                  < expected_inverse_count(10, p[1:3], "slides"))


def test_unknown_convention_is_refused() -> None:
    with pytest.raises(ValueError, match="convention"):
        slides_economy(5, "prior")  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [2, 5, 100])
def test_slides_convention_thresholds_are_fixed_points_of_the_prior_count(n: int) -> None:
    e = slides_economy(n, "slides")
    ma = post_size_share_cost(e)
    assert ma.result.details["convention"] == "slides"
    p = 1 - ma.theta_star
    k = np.arange(1, n + 1)
    pmf = stats.binom.pmf(k, n, p) / stats.binom.sf(0, n, p)
    share = ma.Q * float(pmf @ (1.0 / k))
    assert ma.theta_star * float(slides_utility(np.array(ma.Q))) == pytest.approx(share,
                                                                                 rel=1e-10)
    mb = post_fee_build_largest(e)
    p = 1 - mb.theta_star
    pmf = stats.binom.pmf(k, n, p) / stats.binom.sf(0, n, p)
    U = float(pmf @ slides_utility(k * mb.phi))
    assert mb.theta_star * U == pytest.approx(mb.phi, rel=1e-10)
    # Scheme (c) has no X in its participation rule: the convention changes nothing.
    assert post_fee_and_size(e).result.welfare == post_fee_and_size(
        slides_economy(n)).result.welfare


def test_slides_convention_recovers_the_printed_n_coefficients() -> None:
    # The slides print 3n²/128 − n/384 + O(1) for (a) and 3n²/128 + 7n/1536 + O(1) for
    # (b). With the participant not counting himself (X ~ Bin(n, p)) the thresholds move
    # by O(1/n) and the welfare's n-coefficient becomes exactly these: a delta-method
    # expansion gives −(2/3)θ² ∂SW/∂√Q = −n/384 for (a) and (4/9)θ(1−θ)(θ + 3θ²)/8 =
    # 7/1536 for (b) at θ = 1/4. The slope between n = 1000 and 10000 removes the O(1).
    for scheme, printed in ((post_size_share_cost, -1 / 384),
                            (post_fee_build_largest, 7 / 1536)):
        r = {n: scheme(slides_economy(n, "slides")).result.welfare - 3 * n * n / 128
             for n in (1000, 10000)}
        slope = (r[10000] - r[1000]) / 9000
        assert slope == pytest.approx(printed, abs=2e-7)


@pytest.mark.parametrize("scheme", ["a", "b"])
def test_slides_convention_welfare_is_the_welfare_as_played(scheme: str) -> None:
    # Beliefs set θ*; the realised count is Bin(n, p) whatever was believed, so the
    # reported welfare is what a Monte Carlo of allocate gives.
    e = slides_economy(10, "slides")
    mech: Mechanism = post_size_share_cost(e) if scheme == "a" else post_fee_build_largest(e)
    welfare, surplus = _monte_carlo(mech, e, 6000, 11)
    se = welfare.std(ddof=1) / np.sqrt(len(welfare))
    assert abs(welfare.mean() - mech.result.welfare) < 3 * se
    assert np.max(np.abs(surplus)) < 1e-9
