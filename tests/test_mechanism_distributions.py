"""Type priors in the log domain, uniform refusals, and ironing (issue 9 items 2-4).

Far-tail priors are held against the same law given as scipy's ``truncnorm``; ironing
against the closed form for a two-step density; the ironed mechanisms against the IC
auditor and against brute-force maximisation of their own objective.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import integrate, optimize, stats
from scipy.special import log_ndtr

from coordinator.cli import main as coordinator_main
from coordinator.mechanism import solve
from coordinator.mechanism.audit import audit
from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.market import (
    Location,
    Market,
    PowerCost,
    PowerUtility,
    UnsupportedMarketError,
    load_market,
    market_from_dict,
)
from coordinator.mechanism.optimal import second_best
from coordinator.mechanism.posted_fee import plan_at, posted_fee
from coordinator.mechanism.provision import provision_for
from coordinator.mechanism.sums import partial_means, survival, thresholds


def _market(dist: TypeDistribution, n: int = 5, *, exclusion: bool = True) -> Market:
    return Market((Location("l", n, dist, PowerUtility(2 / 3, 0.5), PowerCost(1.0, 1.0)),),
                  np.eye(1), "money", exclusion)


# ---------------------------------------------------------------------------------
# item 2: the log domain
# ---------------------------------------------------------------------------------
# N(1, 0.08²) on [0, 0.3] sits 8.75 to 12.5 standard deviations below its mean; N(0, 0.08²)
# on [0.7, 1] as far above it. truncnorm computes the same laws in its own log domain.
LEFT = (TypeDistribution.from_scipy("norm", 0.0, 0.3, loc=1.0, scale=0.08),
        TypeDistribution.from_scipy("truncnorm", 0.0, 0.3, a=-12.5, b=-8.75, loc=1.0,
                                    scale=0.08))
RIGHT = (TypeDistribution.from_scipy("norm", 0.7, 1.0, loc=0.0, scale=0.08),
         TypeDistribution.from_scipy("truncnorm", 0.7, 1.0, a=8.75, b=12.5, loc=0.0,
                                     scale=0.08))


@pytest.mark.parametrize("pair", [LEFT, RIGHT], ids=["left-tail", "right-tail"])
def test_far_tail_normal_prior_has_the_same_f_F_and_g_as_truncnorm(
        pair: tuple[TypeDistribution, TypeDistribution]) -> None:
    norm, trunc = pair
    x = np.linspace(norm.low, norm.high, 41)[1:-1]
    np.testing.assert_allclose(norm.pdf(x), trunc.pdf(x), rtol=1e-8)
    np.testing.assert_allclose(norm.cdf(x), trunc.cdf(x), rtol=1e-8)
    np.testing.assert_allclose(norm.sf(x), trunc.sf(x), rtol=1e-8)
    np.testing.assert_allclose(norm.g(x), trunc.g(x), rtol=1e-8)
    u = np.linspace(0.01, 0.99, 9)
    np.testing.assert_allclose(norm.ppf(u), trunc.ppf(u), rtol=1e-9)


def test_g_far_in_the_left_tail_matches_the_exponential_limit() -> None:
    # Far below the mean the normal density is locally exponential with rate r = (μ − θ)/σ²:
    # (1 − F)/f on [θ, b] → (1 − e^{−r'(b − θ)})/r' to first order; here checked against a
    # direct quadrature of the untruncated density ratio in scaled form (no underflow).
    dist = LEFT[0]
    theta = 0.1
    ratio = integrate.quad(lambda t: math.exp(stats.norm.logpdf(t, 1.0, 0.08)
                                              - stats.norm.logpdf(theta, 1.0, 0.08)),
                           theta, 0.3, epsabs=0, epsrel=1e-13)[0]
    assert float(dist.g(np.array(theta))) == pytest.approx(theta - ratio, rel=1e-10)


@pytest.mark.parametrize("pair", [LEFT, RIGHT], ids=["left-tail", "right-tail"])
def test_far_tail_normal_prior_gives_the_same_second_best_as_truncnorm(
        pair: tuple[TypeDistribution, TypeDistribution]) -> None:
    a = second_best(_market(pair[0])).result
    b = second_best(_market(pair[1])).result
    assert a.success and b.success, (a.status, b.status)
    assert a.status == b.status
    assert a.thresholds is not None and b.thresholds is not None
    assert a.thresholds[0] == pytest.approx(b.thresholds[0], rel=1e-7)
    assert a.welfare == pytest.approx(b.welfare, rel=1e-7)


def test_left_tail_prior_binds_the_budget_constraint() -> None:
    # The bug this pins: g(θ) computed as θ − 0/f, so "first best implementable".
    r = second_best(_market(LEFT[0])).result
    assert r.status == "constraint binds"
    assert r.lambdas is not None and r.lambdas[0] > 0
    assert r.thresholds is not None and 0.1 < r.thresholds[0] < 0.2


def test_a_prior_is_refused_only_when_it_has_no_mass() -> None:
    # 50 standard deviations away: mass e^{−1250}, which underflows but is not zero.
    far = TypeDistribution.from_scipy("norm", 0.0, 1.0, loc=50.0)
    # F(x) = [Φ(x − 50) − Φ(−50)] / [Φ(−49) − Φ(−50)], evaluated here in the log domain.
    x = 0.99
    expected = (math.exp(log_ndtr(x - 50) - log_ndtr(-49))
                * -math.expm1(log_ndtr(-50) - log_ndtr(x - 50))
                / -math.expm1(log_ndtr(-50) - log_ndtr(-49)))
    assert far.cdf(np.array([x]))[0] == pytest.approx(expected, rel=1e-9)
    assert 0.9 < float(far.ppf(np.array(0.5))) < 1.0
    with pytest.raises(ValueError, match="no probability mass"):
        TypeDistribution.from_scipy("uniform", 0.0, 1.0, loc=2.0)


# ---------------------------------------------------------------------------------
# item 3: every bad input refused the same way, before solving
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, text, message", [
    (".toml", '[[locations]]\nn = 3\nutility = {A = inf}\n', "must be finite"),
    (".toml", '[[locations]]\nn = 3\ncost = {B = nan}\n', "must be finite"),
    (".toml", '[market]\nq_max = inf\n[[locations]]\nn = 3\n', "must be finite"),
    (".toml", '[[locations]]\nn = 3\ntype = {dist = "beta", a = 2.0, b = inf}\n',
     "must be finite"),
    (".toml", '[[locations]]\nn = 3\nn = 4\n', "."),  # tomllib refuses duplicates itself
    (".json", '{"locations": [{"n": 3, "utility": {"A": Infinity}}]}', "Infinity"),
    (".json", '{"locations": [{"n": 3, "cost": {"B": NaN}}]}', "NaN"),
    (".json", '{"locations": [{"n": 3, "type": {"dist": "uniform", "high": -Infinity}}]}',
     "Infinity"),
    (".json", '{"locations": [{"n": 3, "n": 4}]}', "duplicate key 'n'"),
    (".json", '{"market": {}, "market": {"payment": "in_kind"}, "locations": [{"n": 3}]}',
     "duplicate key 'market'"),
])
def test_spec_files_with_non_finite_numbers_or_duplicate_keys_are_refused(
        tmp_path: Path, suffix: str, text: str, message: str) -> None:
    p = tmp_path / f"bad{suffix}"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_market(p)


@pytest.mark.parametrize("spec", [
    {"locations": [{"n": 3, "utility": {"A": math.inf}}]},
    {"locations": [{"n": 3, "type": {"dist": "scipy", "name": "norm",
                                     "params": {"scale": math.nan}}}]},
    {"weights": [[math.nan]], "locations": [{"n": 3}]},
    {"market": {"levels": [0.0, math.nan]}, "locations": [{"n": 3}]},
])
def test_python_dict_specs_with_non_finite_numbers_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be finite"):
        market_from_dict(spec)


def test_direct_construction_refuses_non_finite_parameters() -> None:
    with pytest.raises(ValueError):
        PowerUtility(math.inf, 0.5)
    with pytest.raises(ValueError):
        PowerCost(1.0, math.inf)
    with pytest.raises(ValueError, match="q_max"):
        _market(TypeDistribution.uniform()).replace(q_max=math.inf)


_BETA22_NO_EXCLUSION = ('[market]\nexclusion = false\n[[locations]]\nn = 3\n'
                        'type = {dist = "beta", a = 2.0, b = 2.0}\n')


@pytest.mark.parametrize("mechanism", ["second_best", "second_best_no_exclusion",
                                       "second_best_balanced"])
def test_unsupported_markets_are_refused_before_solving_by_every_entry_point(
        mechanism: str) -> None:
    m = market_from_dict({"market": {"exclusion": False}, "locations": [
        {"n": 3, "type": {"dist": "beta", "a": 2.0, "b": 2.0}}]})
    with pytest.raises(UnsupportedMarketError, match="density vanishes"):
        solve(m, mechanism)


def test_equal_contribution_schemes_refuse_several_locations_the_same_way() -> None:
    m = market_from_dict({"locations": [{"n": 3, "name": "a"}, {"n": 3, "name": "b"}]})
    with pytest.raises(UnsupportedMarketError, match="one location"):
        solve(m, "equal_share_post_size")


@pytest.mark.parametrize("spec_text, suffix, mechanism, message", [
    ('{"locations": [{"n": 3, "cost": {"B": Infinity}}]}', ".json", "posted_fee",
     "Infinity"),
    ('[[locations]]\nn = 3\nutility = {A = nan}\n', ".toml", "posted_fee", "finite"),
    (_BETA22_NO_EXCLUSION, ".toml", "second_best", "density vanishes"),
])
def test_coordinator_refuses_a_bad_spec_at_start_up(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], spec_text: str, suffix: str,
        mechanism: str, message: str) -> None:
    spec = tmp_path / f"spec{suffix}"
    spec.write_text(spec_text)
    code = coordinator_main(["--spec", str(spec), "--mechanism", mechanism,
                             "--db", str(tmp_path / "c.db"), "--key", str(tmp_path / "k.pem")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("inkind-coordinator: ") and message in err
    assert not (tmp_path / "c.db").exists()  # refused before touching any state


# ---------------------------------------------------------------------------------
# item 4: ironing
# ---------------------------------------------------------------------------------
class _TwoStep(stats.rv_continuous):
    """Density s on [0, 1/2), 2 − s on [1/2, 1]: g jumps down at 1/2 when s > 1."""

    def _pdf(self, x: Any, s: Any) -> Any:
        return np.where(x < 0.5, s, 2.0 - s)

    def _cdf(self, x: Any, s: Any) -> Any:
        return np.where(x < 0.5, s * x, 0.5 * s + (2.0 - s) * (x - 0.5))

    def _sf(self, x: Any, s: Any) -> Any:
        return np.where(x < 0.5, 1.0 - s * x, (2.0 - s) * (1.0 - x))

    def _ppf(self, q: Any, s: Any) -> Any:
        return np.where(q < 0.5 * s, q / s, 0.5 + (q - 0.5 * s) / (2.0 - s))


_TWO_STEP = _TwoStep(a=0.0, b=1.0, name="two_step", shapes="s")


def _two_step(a: float) -> TypeDistribution:
    return TypeDistribution(_TWO_STEP(a), 0.0, 1.0, f"two-step({a:g})")


@pytest.mark.parametrize("a, lam", [(1.5, 1.0), (1.2, 0.4), (1.8, 3.0)])
def test_ironed_weight_matches_the_closed_form_for_a_two_step_density(a: float,
                                                                    lam: float) -> None:
    # w = θ + λ g is (1+2λ)θ − λ/a below 1/2 and (1+2λ)θ − λ above: a drop of
    # J' = λ(1 − 1/a). The ironed interval [1/2 − d₁, 1/2 + d₂] has w(ends) = its level
    # and ∫ (w − level) f = 0 across it: √a d₁ = √b d₂, d₁ + d₂ = J'/(1+2λ).
    b = 2.0 - a
    dist = _two_step(a)
    assert not dist.is_regular()
    J = lam * (1.0 - 1.0 / a) / (1.0 + 2.0 * lam)
    d1 = J * math.sqrt(b) / (math.sqrt(a) + math.sqrt(b))
    d2 = J * math.sqrt(a) / (math.sqrt(a) + math.sqrt(b))
    level = (1.0 + 2.0 * lam) * (0.5 - d1) - lam / a
    vw = dist.weight(lam)
    assert vw.intervals.shape == (1, 2)
    np.testing.assert_allclose(vw.intervals[0], [0.5 - d1, 0.5 + d2], rtol=1e-8, atol=1e-12)
    assert vw.levels[0] == pytest.approx(level, rel=1e-8, abs=1e-12)
    x = np.linspace(0.0, 1.0, 2001)
    w = vw.w(x)
    assert np.all(np.diff(w) >= -1e-12)
    # Outside the interval w̄ = w; the integral of ḡ f over the whole support is the same
    # as that of g f (both −θ(1 − F) between the ends), and bin by bin it is exact.
    raw = x + lam * dist.g(x)
    outside = (x < 0.5 - d1) | (x > 0.5 + d2)
    np.testing.assert_allclose(w[outside], raw[outside], rtol=1e-12, atol=1e-12)
    edges = np.linspace(0.0, 1.0, 17)
    exact = [integrate.quad(lambda t: (vw.w(np.array(t)) - t) / lam * dist.pdf(np.array(t)),
                            lo, hi, points=[0.5 - d1, 0.5, 0.5 + d2], epsabs=1e-13)[0]
             for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    np.testing.assert_allclose(vw.g_mass(edges), exact, atol=1e-9)
    assert float(vw.g_mass(np.array([0.0, 1.0]))[0]) == pytest.approx(0.0, abs=1e-12)


def test_regular_priors_are_never_ironed() -> None:
    for dist in (TypeDistribution.uniform(), TypeDistribution.beta(2.0, 3.0), LEFT[0]):
        assert not dist.weight(2.0).ironed


@pytest.mark.slow
@pytest.mark.parametrize("dist", [TypeDistribution.beta(0.5, 0.5), _two_step(1.8)],
                         ids=["beta-0.5-0.5", "two-step"])
def test_posted_fee_with_an_irregular_prior_solves_and_its_threshold_is_the_global_optimum(
        dist: TypeDistribution) -> None:
    m = _market(dist, n=8)
    mech = posted_fee(m)
    r = mech.result
    assert r.success, r.status
    assert r.lambdas is not None and r.thresholds is not None
    lam = float(r.lambdas[0])
    # For the solved λ, θ* must maximise ∫_θ* (θ + λ g) dF = ∫_θ* θ dF + λ θ*(1 − F(θ*))
    # over all θ* (brute force on a grid).
    def objective(t: float) -> float:
        mean = integrate.quad(lambda x: x * float(dist.pdf(np.array(x))), t, dist.high,
                              points=[0.5] if t < 0.5 else None, epsabs=1e-13)[0]
        return mean + lam * t * float(dist.sf(np.array(t)))

    best = max(objective(t) for t in np.linspace(dist.low, dist.high, 201)[:-1])
    assert objective(float(r.thresholds[0])) >= best - 1e-9
    # And the budget constraint binds at the plan.
    plan = plan_at(m, np.asarray(r.lambdas), [provision_for(loc, m) for loc in m.locations])
    assert abs(float(plan.constraints.sum())) < 1e-9


@pytest.mark.slow
def test_second_best_with_beta_half_half_is_ironed_incentive_compatible_and_budget_balanced(
) -> None:
    dist = TypeDistribution.beta(0.5, 0.5)
    m = _market(dist, n=4)
    mech = second_best(m)
    r = mech.result
    assert r.success, r.status
    assert r.details["revenue_identity_gap"] < 1e-7
    rng = np.random.default_rng(20261201)
    a = audit(mech, m, rng, samples=400, grid=15)
    assert a.ic_worst_gain <= 3 * a.ic_gain_se + 1e-9
    assert a.ir_worst <= 3 * a.ir_se + 1e-9
    assert abs(a.budget_ex_ante) <= 4 * a.budget_ex_ante_se
    assert abs(a.welfare_mc - r.welfare) <= 4 * a.welfare_mc_se


@pytest.mark.slow
def test_second_best_irons_when_the_multiplier_is_large_enough() -> None:
    # The two-step prior's ironed interval (around 1/2) lies among the included types:
    # allocation, V and payments must be flat across it.
    dist = _two_step(1.8)
    m = _market(dist, n=3)
    mech = second_best(m)
    assert mech.result.success, mech.result.status
    lam = float(mech.lambdas[0])
    vw = dist.weight(lam)
    assert vw.ironed
    lo, hi = vw.intervals[0]
    assert lo > mech.tables[0].theta0  # the ironed types are included
    inside = np.linspace(lo + 1e-6, hi - 1e-6, 5)
    pay = mech.tables[0].payment(inside)
    val = mech.tables[0].value(inside)
    np.testing.assert_allclose(val, val[0], rtol=1e-9)
    # P(θ) = θ V − ∫ V: with V flat, P is flat too.
    np.testing.assert_allclose(pay, pay[0], rtol=1e-6)
    # The density's jump at 1/2 is not a node of the quadrature rule, so (14) holds only
    # to the rule's accuracy across a jump (a smooth irregular prior gets 1e-7 above).
    assert mech.result.details["revenue_identity_gap"] < 1e-4
    a = audit(mech, m, np.random.default_rng(7), samples=300, grid=15)
    assert a.ic_worst_gain <= 3 * a.ic_gain_se + 1e-9


def test_json_dump_of_an_ironed_result_is_plain_json() -> None:
    r = posted_fee(_market(TypeDistribution.beta(0.5, 0.5))).result
    json.loads(json.dumps(r.as_dict()))


def test_myerson_ironing_of_beta_half_half_meets_the_tangency_condition() -> None:
    # F(θ) = (2/π) arcsin √θ. In quantiles H(u) = ∫₀ᵘ g(F⁻¹) = −F⁻¹(u)(1 − u); g starts
    # at 0, dips and rises, so the hull of H is a chord from the origin tangent to H at
    # u_b: the ironed level is H(u_b)/u_b and equals g(θ_b) there. Solve that directly.
    dist = TypeDistribution.beta(0.5, 0.5)

    def F(t: float) -> float:
        return 2.0 / math.pi * math.asin(math.sqrt(t))

    def g(t: float) -> float:
        return t - (1.0 - F(t)) * math.pi * math.sqrt(t * (1.0 - t))

    def tangency(t: float) -> float:
        return g(t) + t * (1.0 - F(t)) / F(t)

    tb = optimize.brentq(tangency, 0.05, 0.6, xtol=1e-15)
    level = -tb * (1.0 - F(tb)) / F(tb)
    lam = 1e7  # (w̄ − θ)/λ → Myerson's ironed g as λ → ∞
    vw = dist.weight(lam)
    assert vw.intervals.shape == (1, 2)
    assert vw.intervals[0, 0] == 0.0
    assert vw.intervals[0, 1] == pytest.approx(tb, rel=1e-6)
    assert vw.levels[0] / lam == pytest.approx(level, rel=1e-6)
    assert g(tb) == pytest.approx(level, rel=1e-9)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (1.0, 3.0), (-0.5, 0.5)])
def test_uniform_closed_forms_agree_with_the_general_log_domain_path(low: float,
                                                                     high: float) -> None:
    # U[low, high] skips scipy on the hot paths; the same law through scipy.stats.uniform
    # takes the general route. Every quantity the engine uses must agree.
    fast = TypeDistribution.uniform(low, high)
    slow = TypeDistribution.from_scipy("uniform", low, high, loc=low, scale=high - low)
    x = np.linspace(low, high, 101)
    for name in ("pdf", "cdf", "sf", "g"):
        np.testing.assert_allclose(getattr(fast, name)(x), getattr(slow, name)(x),
                                   rtol=1e-12, atol=1e-12, err_msg=name)
    lam = np.array([0.0, 0.3, 1.0, 7.5])
    np.testing.assert_allclose(thresholds([fast] * 4, lam), thresholds([slow] * 4, lam),
                               rtol=1e-12, atol=1e-12)
    t = np.linspace(low, high, 4)
    np.testing.assert_allclose(survival([fast] * 4, t), survival([slow] * 4, t), atol=1e-12)
    np.testing.assert_allclose(partial_means([fast] * 4, t), partial_means([slow] * 4, t),
                               rtol=1e-12, atol=1e-12)
