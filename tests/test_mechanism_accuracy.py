"""Six significant digits where the weighted sum's law is only known numerically (issue 9
item 1): discrete sizes (the bridge through the general engine) and singular power
terms without exclusion, held against closed forms; the tolerance is the caller's, and
a result whose error estimate exceeds it is not a success.
"""

from __future__ import annotations

import math

import pytest
from scipy import integrate, optimize

from coordinator.mechanism import market_from_dict, solve
from coordinator.mechanism import sums as sums_module
from coordinator.mechanism.market import Market
from coordinator.mechanism.optimal import first_best, second_best


def _market(n: int, *, alpha: float, beta: float, exclusion: bool = True,
            levels: list[float] | None = None) -> Market:
    m: dict[str, object] = {"payment": "money", "exclusion": exclusion}
    if levels is not None:
        m["levels"] = levels
    return market_from_dict({"market": m, "locations": [
        {"n": n, "utility": {"A": 1.0, "alpha": alpha}, "cost": {"B": 1.0, "beta": beta}}]})


def test_bridge_through_the_general_engine_has_lambda_one_half_and_threshold_one_quarter() -> None:
    # Slides "Example: A Bridge": two users, θ ~ U[0, 1], build (Q = 1) or not at cost 1.
    # Build iff Σ (θ + λ g) ≥ 1 + λ with λ = 1/2: θ1 + θ2 ≥ 5/4, threshold 1/4, SW = 9/64.
    r = second_best(_market(2, alpha=1.0, beta=1.0, levels=[0.0, 1.0])).result
    assert r.success, r.status
    assert r.lambdas is not None and r.thresholds is not None
    assert float(r.lambdas[0]) == pytest.approx(0.5, rel=1e-9, abs=0)
    assert float(r.thresholds[0]) == pytest.approx(0.25, rel=1e-9, abs=0)
    assert r.welfare == pytest.approx(9 / 64, rel=1e-9, abs=0)
    fb = first_best(_market(2, alpha=1.0, beta=1.0, levels=[0.0, 1.0])).result
    assert fb.welfare == pytest.approx(1 / 6, rel=1e-9, abs=0)


def _irwin_hall_pdf(n: int, s: float) -> float:
    """Density of the sum of n independent U[0, 1] at s."""
    if not 0.0 < s < n:
        return 0.0
    return sum((-1) ** k * math.comb(n, k) * (s - k) ** (n - 1)
               for k in range(math.floor(s) + 1)) / math.factorial(n - 1)


def _reference_constraint(n: int, alpha: float, beta: float, lam: float) -> float:
    """E[Σ_j g(θ_j) u(Q) − c(Q)] of the λ-pointwise solution without exclusion, for
    θ ~ U[0, 1] (g = 2θ − 1), u = Q^α, c = Q^β, by quadrature over S = Σ θ_j.

    Z = Σ (θ + λ g)/(1 + λ) = ((1 + 2λ) S − n λ)/(1 + λ); Q = K (Z⁺)^r with
    r = 1/(β − α), K = (α/β)^r; the integrand is singular where Z = 0.
    """
    r = 1.0 / (beta - alpha)
    K = (alpha / beta) ** r

    def integrand(s: float) -> float:
        z = max(((1 + 2 * lam) * s - n * lam) / (1 + lam), 0.0)
        q = K * z ** r
        return ((2 * s - n) * q ** alpha - q ** beta) * _irwin_hall_pdf(n, s)

    # Piece by piece between the density's knots and the kink Z = 0 (below which the
    # integrand vanishes); on each piece it is smooth inside, singular at most at an end.
    kink = n * lam / (1 + 2 * lam)
    edges = sorted({float(k) for k in range(n + 1) if k > kink} | {kink})
    return sum(float(integrate.quad(integrand, a, b, limit=200, epsabs=1e-16,
                                    epsrel=1e-12)[0])
               for a, b in zip(edges[:-1], edges[1:], strict=True))


@pytest.mark.parametrize("alpha, beta", [(1 / 3, 1.0), (0.5, 2.0)],
                         ids=["u=Q^(1/3),c=Q", "u=sqrt(Q),c=Q^2"])
def test_no_exclusion_with_a_singular_power_term_converges_to_the_closed_form(
        alpha: float, beta: float) -> None:
    n = 5
    exact = optimize.brentq(lambda lam: _reference_constraint(n, alpha, beta, lam), 0.05, 5.0,
                            xtol=1e-15, rtol=1e-15)
    errors = []
    for tol in (1e-5, 1e-6, 1e-7):
        r = second_best(_market(n, alpha=alpha, beta=beta, exclusion=False), tol=tol).result
        assert r.success, r.status
        assert r.details["relative_error_estimate"] <= tol
        assert r.lambdas is not None
        err = abs(float(r.lambdas[0]) - exact) / exact
        assert err <= tol  # the estimate is honest: the true error is inside it
        errors.append(err)
    assert errors[-1] <= errors[0]
    assert errors[-1] < 1e-8  # six significant digits with room to spare


def test_a_result_whose_error_estimate_exceeds_its_tolerance_is_not_a_success(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A lattice capped far below what the tolerance needs cannot meet it.
    monkeypatch.setattr(sums_module, "MAX_FFT", 1 << 11)
    r = second_best(_market(5, alpha=1 / 3, beta=1.0, exclusion=False), tol=1e-10).result
    assert not r.success
    assert "exceeds the tolerance" in r.status
    assert r.details["relative_error_estimate"] > r.details["tolerance"] == 1e-10


@pytest.mark.parametrize("tol", [0.0, -1e-6, 1.0, math.nan])
def test_a_meaningless_tolerance_is_refused(tol: float) -> None:
    with pytest.raises(ValueError, match="tol"):
        second_best(_market(3, alpha=0.5, beta=1.0), tol=tol)


def test_discrete_levels_at_several_agents_meet_the_default_tolerance() -> None:
    # Three sizes, five agents: the engine's own estimate is within its default tolerance,
    # and the answer agrees with a much tighter solve to six digits.
    m = _market(5, alpha=0.5, beta=1.5, levels=[0.0, 1.0, 2.0, 3.0])
    loose = solve(m, "optimal").result
    tight = second_best(m, tol=1e-7).result
    assert loose.success and tight.success, (loose.status, tight.status)
    assert loose.lambdas is not None and tight.lambdas is not None
    assert float(loose.lambdas[0]) == pytest.approx(float(tight.lambdas[0]), rel=1e-6)
    assert loose.welfare == pytest.approx(tight.welfare, rel=1e-6)
