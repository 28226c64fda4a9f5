"""The law of the weighted sum Z behind every mechanism (coordinator.mechanism.sums).

The two exact methods (moments, lattice) are held against each other, against closed
forms for the uniform prior, and against seeded Monte Carlo for a function the moment
method cannot integrate. Thresholds are held against their defining property.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.provision import Power
from coordinator.mechanism.sums import (
    Group,
    SumLaw,
    sum_law,
    threshold,
    thresholds,
    virtual_weight,
)

UNIFORM = TypeDistribution.uniform()
BETA23 = TypeDistribution.beta(2.0, 3.0)  # density 0 at both ends: g(low) = −∞
TRUNCNORM = TypeDistribution.from_scipy(
    "truncnorm", 0.0, 1.0, a=-4.0 / 3.0, b=2.0, loc=0.4, scale=0.3)
SHIFTED = TypeDistribution.uniform(1.0, 3.0)

DISTS = {"uniform": UNIFORM, "beta23": BETA23, "truncnorm": TRUNCNORM}
POWERS = [Power(1.0, 1.0), Power(0.5, 2.0), Power(2.0, 3.0)]
GIVEN_X = np.linspace(0.0, 2.0, 7)


def _assert_laws_agree(mom: SumLaw, lat: SumLaw, ngroups: int, rel: float) -> None:
    assert mom.method == "moments"
    assert lat.method == "lattice"
    for phi in POWERS:
        assert lat.expect(phi) == pytest.approx(mom.expect(phi), rel=rel, abs=0)
        for k in range(ngroups):
            t_mom = mom.tilted(phi, k)
            t_lat = lat.tilted(phi, k)
            # E[θ π φ(Z)] and E[g(θ) π φ(Z)]
            assert t_lat[0] == pytest.approx(t_mom[0], rel=rel, abs=0)
            assert t_lat[1] == pytest.approx(t_mom[1], rel=rel, abs=1e-15)
            np.testing.assert_allclose(lat.given(phi, k, GIVEN_X), mom.given(phi, k, GIVEN_X),
                                       rtol=rel, atol=0)


# ---------------------------------------------------------------------------------
# moments vs lattice
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.2])
@pytest.mark.parametrize("dist_name", sorted(DISTS))
def test_moment_and_lattice_methods_agree_for_one_group_with_exclusion(dist_name: str,
                                                                     lam: float) -> None:
    groups = [Group(7, DISTS[dist_name], lam, 0.8, True)]
    mom = sum_law(groups, POWERS, "moments")
    lat = sum_law(groups, POWERS, "lattice")
    _assert_laws_agree(mom, lat, 1, rel=1e-7)


@pytest.mark.parametrize("dist", [UNIFORM, BETA23, TRUNCNORM, SHIFTED],
                         ids=["uniform", "beta23", "truncnorm", "U[1,3]"])
def test_moment_and_lattice_methods_agree_without_exclusion_when_weights_are_nonnegative(
        dist: TypeDistribution) -> None:
    # λ = 0 (weights θ ≥ 0), and U[1, 3] at λ = 0.3 (θ + 0.3(2θ − 3) ≥ 0.7): Z ≥ 0, so
    # the moment method applies even though nobody may be excluded.
    lams = [0.0, 0.3] if dist is SHIFTED else [0.0]
    for lam in lams:
        groups = [Group(6, dist, lam, 1.0, False)]
        mom = sum_law(groups, POWERS, "moments")
        lat = sum_law(groups, POWERS, "lattice")
        _assert_laws_agree(mom, lat, 1, rel=1e-7)
        assert sum_law(groups, POWERS).method == "moments"  # auto picks the exact one


@pytest.mark.parametrize("dist_name", sorted(DISTS))
def test_moment_and_lattice_methods_agree_for_two_groups_with_different_weights(
        dist_name: str) -> None:
    # With two groups of different coefficients the lattice bins cannot be aligned with
    # both supports, so Richardson extrapolation leaves an O(δ²) remainder of a few 1e-7
    # (measured up to 5.3e-7); hence 1e-6 here rather than the single-group 1e-7.
    groups = [Group(7, DISTS[dist_name], 1.2, 0.8, True), Group(4, UNIFORM, 0.5, 0.5, True)]
    mom = sum_law(groups, POWERS, "moments")
    lat = sum_law(groups, POWERS, "lattice")
    _assert_laws_agree(mom, lat, 2, rel=1e-6)


def test_moment_method_is_refused_when_the_sum_can_be_negative() -> None:
    # No exclusion and λ > 0: an agent with θ < λ/(1+2λ) has a negative weight, so
    # E[(Z⁺)^m] is not a polynomial in the moments of Z.
    groups = [Group(5, UNIFORM, 0.4, 1.0, False)]
    with pytest.raises(ValueError, match="moment method"):
        sum_law(groups, POWERS, "moments")
    assert sum_law(groups, POWERS).method == "lattice"


def test_moment_method_is_refused_for_a_non_integer_power() -> None:
    groups = [Group(5, UNIFORM, 0.4, 1.0, True)]
    with pytest.raises(ValueError, match="moment method"):
        sum_law(groups, [Power(1.0, 1.5)], "moments")
    assert sum_law(groups, [Power(1.0, 1.5)]).method == "lattice"


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        sum_law([Group(3, UNIFORM, 0.1, 1.0, True)], POWERS, "simpson")


def test_auto_uses_moments_without_exclusion_once_a_negative_sum_is_negligible() -> None:
    # Z = Σ (1.6 θ − 0.3) over n agents: negative with probability ~exp(−c n); the
    # Chernoff bound admits the moment method for large n, not for small n.
    few = [Group(3, UNIFORM, 0.3, 1.0, False)]
    many = [Group(300, UNIFORM, 0.3, 1.0, False)]
    assert sum_law(few, POWERS).method == "lattice"
    law = sum_law(many, POWERS)
    assert law.method == "moments"
    lat = sum_law(many, POWERS, "lattice")
    phi = Power(1.0, 2.0)
    assert lat.expect(phi) == pytest.approx(law.expect(phi), rel=1e-9)
    assert lat.tilted(phi, 0) == pytest.approx(law.tilted(phi, 0), rel=1e-9)


# ---------------------------------------------------------------------------------
# closed forms for the uniform prior
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["moments", "lattice"])
@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_uniform_prior_moments_match_closed_form(lam: float, method: str) -> None:
    # U[0, 1]: g = 2θ − 1, x = (1+2λ)θ − λ above θ₀ = λ/(1+2λ), 0 below, so
    # E[x^r] = (1+λ)^(r+1) / ((r+1)(1+2λ)).
    n = 9
    law = sum_law([Group(n, UNIFORM, lam, 1.0, True)], POWERS, method)

    def m(r: int) -> float:
        return (1 + lam) ** (r + 1) / ((r + 1) * (1 + 2 * lam))

    m1, m2, m3 = m(1), m(2), m(3)
    ez = n * m1
    ez2 = n * m2 + n * (n - 1) * m1**2
    ez3 = n * m3 + 3 * n * (n - 1) * m2 * m1 + n * (n - 1) * (n - 2) * m1**3
    assert law.expect(Power(1.0, 1.0)) == pytest.approx(ez, rel=1e-12)
    assert law.expect(Power(0.5, 2.0)) == pytest.approx(0.5 * ez2, rel=1e-12)
    assert law.expect(Power(2.0, 3.0)) == pytest.approx(2.0 * ez3, rel=1e-12)


@pytest.mark.parametrize("method", ["moments", "lattice"])
def test_tilted_and_given_match_quadrature_for_the_uniform_prior(method: str) -> None:
    # For φ(Z) = Z²: E[y(θ₁) π₁ (x₁ + Z₋)²] = E[yπx²] + 2 E[yπx] E Z₋ + E[yπ] E Z₋², and
    # E[(x + Z₋)²] = x² + 2x E Z₋ + E Z₋², with one-agent integrals by scipy quad.
    n, lam = 6, 0.7
    t0 = lam / (1 + 2 * lam)

    def x(t: float) -> float:
        return (1 + 2 * lam) * t - lam

    def one(f: object) -> float:
        return float(integrate.quad(f, t0, 1.0, epsabs=1e-13, epsrel=1e-12)[0])  # type: ignore[arg-type]

    m1 = one(x)
    m2 = one(lambda t: x(t) ** 2)
    ez = (n - 1) * m1
    ez2 = (n - 1) * m2 + (n - 1) * (n - 2) * m1**2
    law = sum_law([Group(n, UNIFORM, lam, 1.0, True)], POWERS, method)
    phi = Power(1.0, 2.0)
    for k, y in enumerate((lambda t: t, lambda t: 2 * t - 1)):
        want = (one(lambda t, y=y: y(t) * x(t) ** 2) + 2 * one(lambda t, y=y: y(t) * x(t)) * ez
                + one(y) * ez2)
        assert law.tilted(phi, 0)[k] == pytest.approx(want, rel=1e-9)
    xs = np.array([0.0, 0.25, 1.0, 3.0])
    np.testing.assert_allclose(law.given(phi, 0, xs), xs**2 + 2 * xs * ez + ez2, rtol=1e-9)


# ---------------------------------------------------------------------------------
# lattice vs Monte Carlo for a function the moment method cannot handle
# ---------------------------------------------------------------------------------
def _log1p_pos(z: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(np.asarray(z, dtype=float), 0.0))


def _sample_x(grp: Group, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Types and contributions x = coef·π·(θ + λg) of `size` × n agents of one group."""
    th = grp.dist.rvs((size, grp.n), rng)
    w = virtual_weight(grp.dist, grp.lam, th)
    inc = w > 0.0 if grp.exclusion else np.ones(th.shape, dtype=bool)
    return th, np.where(inc, grp.coef * w, 0.0)


@pytest.mark.parametrize("exclusion", [True, False], ids=["exclusion", "no-exclusion"])
def test_lattice_matches_seeded_monte_carlo_for_log1p(exclusion: bool) -> None:
    groups = [Group(5, UNIFORM, 0.6, 0.9, exclusion), Group(3, TRUNCNORM, 0.6, 0.4, exclusion)]
    law = sum_law(groups, [_log1p_pos])
    assert law.method == "lattice"
    rng = np.random.default_rng(20261126)
    S = 100_000
    draws = [_sample_x(g, rng, S) for g in groups]
    Z = sum(x.sum(axis=1) for _, x in draws)
    phi = _log1p_pos(Z)

    def close(value: float, samples: np.ndarray) -> None:
        se = samples.std(ddof=1) / math.sqrt(samples.size)
        assert abs(value - samples.mean()) < 3.5 * se, (value, samples.mean(), se)

    close(law.expect(_log1p_pos), phi)
    for k, grp in enumerate(groups):
        th, x = draws[k]
        w0 = virtual_weight(grp.dist, grp.lam, th[:, 0])
        pi0 = (w0 > 0.0) if exclusion else np.ones(S, dtype=bool)
        e_theta, e_g = law.tilted(_log1p_pos, k)
        close(e_theta, np.where(pi0, th[:, 0], 0.0) * phi)
        close(e_g, np.where(pi0, grp.dist.g(th[:, 0]), 0.0) * phi)
        z_minus = Z - x[:, 0]
        for xv in (0.0, 0.4, 1.5):
            close(float(law.given(_log1p_pos, k, np.array([xv]))[0]), _log1p_pos(xv + z_minus))


# ---------------------------------------------------------------------------------
# thresholds
# ---------------------------------------------------------------------------------
def test_threshold_of_uniform_prior_is_lambda_over_one_plus_two_lambda() -> None:
    for lam in (0.0, 0.1, 0.5, 1.0, 7.0, 1e6):
        assert threshold(UNIFORM, lam) == pytest.approx(lam / (1 + 2 * lam), abs=1e-14)


@pytest.mark.parametrize("dist", [UNIFORM, BETA23, TRUNCNORM, SHIFTED,
                                  TypeDistribution.beta(2.0, 2.0)],
                         ids=["uniform", "beta23", "truncnorm", "U[1,3]", "beta22"])
def test_threshold_separates_negative_from_positive_weights(dist: TypeDistribution) -> None:
    for lam in (0.05, 0.5, 3.0):
        t0 = threshold(dist, lam)
        assert dist.low <= t0 < dist.high
        above = np.linspace(t0, dist.high, 50)[1:]
        assert np.all(virtual_weight(dist, lam, above) > 0.0)
        if t0 > dist.low:
            below = np.linspace(dist.low, t0, 50)[1:-1]
            w = virtual_weight(dist, lam, below)
            assert np.all(np.where(np.isfinite(w), w, -np.inf) <= 0.0)
            assert float(virtual_weight(dist, lam, t0)) == pytest.approx(0.0, abs=1e-12)


def test_thresholds_vectorised_equals_scalar_threshold() -> None:
    beta22 = TypeDistribution.beta(2.0, 2.0)
    dists = [UNIFORM, BETA23, UNIFORM, TRUNCNORM, SHIFTED, BETA23, beta22, UNIFORM, SHIFTED,
             TypeDistribution.uniform(), TypeDistribution.beta(2.0, 3.0)]  # equal specs
    lams = np.array([0.0, 0.0, 0.4, 0.9, 0.2, 2.5, 0.7, 50.0, 5.0, 1.3, 0.45])
    vec = thresholds(dists, lams)
    scal = np.array([threshold(d, float(lam)) for d, lam in zip(dists, lams, strict=True)])
    np.testing.assert_allclose(vec, scal, rtol=0, atol=1e-12)
    # λ = 0: nobody has a negative weight, so nobody is excluded.
    assert vec[0] == 0.0 and vec[1] == 0.0


def test_virtual_weight_at_lambda_zero_is_the_type_even_where_g_is_infinite() -> None:
    t = np.array([0.0, 0.5, 1.0])
    np.testing.assert_array_equal(virtual_weight(BETA23, 0.0, t), t)
    assert virtual_weight(BETA23, 0.5, np.array([1.0]))[0] == pytest.approx(1.5)  # g(high) = high
