"""The bridge example (slides "Example: A Bridge" to "An fixed-fee design")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.mechanism.bridge import (
    RULES,
    BridgeMechanism,
    Rule,
    RuleReport,
    analyse_rule,
    first_best,
    fixed_fee_welfare,
    interim,
    second_best,
    slide_rule,
    slide_rule_reports,
    solution_rule,
)
from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.result import Mechanism

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@pytest.fixture(scope="module")
def reports() -> dict[str, RuleReport]:
    return slide_rule_reports()


# -- the three welfare numbers of the slides -------------------------------------------


def test_first_best_is_one_sixth() -> None:
    fb = first_best()
    assert fb.welfare == pytest.approx(1 / 6, rel=1e-13)
    assert fb.t == pytest.approx(1.0, abs=1e-14)
    assert fb.lam == 0.0


def test_second_best_threshold_lambda_and_welfare() -> None:
    sb = second_best()
    assert sb.welfare == pytest.approx(9 / 64, rel=1e-13)
    assert sb.t == pytest.approx(1.25, abs=1e-13)
    assert sb.lam == pytest.approx(0.5, abs=1e-13)
    assert sb.theta_min == pytest.approx(0.25, abs=1e-13)
    assert sb.prob_build == pytest.approx(9 / 32, rel=1e-13)
    assert abs(sb.budget) < 1e-15


def test_fixed_fee_is_one_eighth() -> None:
    assert fixed_fee_welfare() == pytest.approx(1 / 8, rel=1e-13)
    assert fixed_fee_welfare() < second_best().welfare < first_best().welfare


def test_lemma1_payment_is_the_slides_rule_a_with_P0_zero() -> None:
    sb = second_best()
    th = np.linspace(0.0, 1.0, 257)
    expected = np.where(th > 0.25, th**2 / 2 - 1 / 32, 0.0)
    np.testing.assert_allclose(sb.lemma1_payment(th), expected, atol=1e-14)
    assert sb.lemma1_payment(np.array([0.0]))[0] == 0.0
    np.testing.assert_allclose(sb.V(th), np.clip(th - 0.25, 0.0, 1.0), atol=1e-14)


# -- the payment rules ------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_is_interim_ic_ir_and_ex_ante_balanced(
    reports: dict[str, RuleReport], rule: Rule
) -> None:
    rep = reports[rule]
    assert rep.matches_lemma1.holds and rep.matches_lemma1.violation < 1e-13
    assert rep.payment_at_low == pytest.approx(0.0, abs=1e-15)  # P(0) = 0
    assert rep.interim_ic.holds
    assert rep.interim_ir.holds
    assert rep.ex_ante_budget_balance.holds and rep.ex_ante_budget_balance.violation < 1e-14


@pytest.mark.parametrize("rule", RULES)
def test_interim_payment_of_each_rule(rule: Rule) -> None:
    # Rule (c) too gives P(θ) = θ²/2 − 1/32 above 1/4 and 0 below.
    sb = second_best()
    th = np.linspace(0.0, 1.0, 33)
    for agent in (0, 1):
        V, P = interim(sb, slide_rule(rule), th, agent)
        np.testing.assert_allclose(P, np.where(th > 0.25, th**2 / 2 - 1 / 32, 0.0), atol=1e-14)
        np.testing.assert_allclose(V, np.clip(th - 0.25, 0.0, 1.0), atol=1e-14)


def test_rule_a_is_not_ex_post_balanced(reports: dict[str, RuleReport]) -> None:
    rep = reports["a"]
    # Slide: "p1 + p2 ≠ 1{θ1+θ2≥1.25}". Worst at (5/8, 5/8): 1 − (25/64 − 1/16) = 43/64.
    assert not rep.ex_post_budget_balance.holds
    assert rep.ex_post_budget_balance.violation == pytest.approx(43 / 64, abs=1e-14)
    assert rep.ex_post_budget_balance.at == (0.625, 0.625)
    assert rep.nonnegative_payments.holds
    assert rep.ex_post_ir_if_built.holds
    # ... but it charges when nothing is built: (0, 1) pays 1/2 − 1/32 for no bridge.
    assert not rep.zero_payment_if_not_built.holds
    assert rep.zero_payment_if_not_built.violation == pytest.approx(15 / 32, abs=1e-14)
    assert not rep.ex_post_ir_if_not_built.holds


def test_rule_b_balances_but_pays_negative_and_breaks_ex_post_ir(
    reports: dict[str, RuleReport],
) -> None:
    rep = reports["b"]
    assert rep.ex_post_budget_balance.holds  # the slide's claim p1 + p2 = 1{build}
    assert rep.ex_post_budget_balance.violation < 1e-15
    # "still unsatisfactory": (0, 1) is paid 3/32 although nothing is built, and when
    # built at (1/4, 1) user 1 pays 13/32 > 1/4 = θ1.
    assert not rep.nonnegative_payments.holds
    assert rep.nonnegative_payments.extreme == pytest.approx(-3 / 32, abs=1e-15)
    assert not rep.zero_payment_if_not_built.holds
    assert not rep.ex_post_ir_if_built.holds
    assert rep.ex_post_ir_if_built.extreme == pytest.approx(-5 / 32, abs=1e-15)
    assert rep.ex_post_ir_if_built.at == (0.25, 1.0)
    assert not rep.ex_post_ir_if_not_built.holds


def test_rule_c_has_its_properties_but_ex_post_ir_only_weakly(
    reports: dict[str, RuleReport],
) -> None:
    rep = reports["c"]
    for check in (rep.ex_post_budget_balance, rep.nonnegative_payments,
                  rep.zero_payment_if_not_built, rep.ex_post_ir_if_built,
                  rep.ex_post_ir_if_not_built):
        assert check.holds
    # The slide claims θ1 − p1 > 0 when built; the minimum is exactly 0, at (1/4, 1):
    # θ1 − p1 = 1/4 − (⅓(1/4 − 1) + ½) = 0.  So only the weak inequality holds.
    assert rep.ex_post_ir_if_built.extreme == pytest.approx(0.0, abs=1e-15)
    assert rep.ex_post_ir_if_built.at == (0.25, 1.0)
    built, p1, _ = slide_rule("c")(np.array([0.25]), np.array([1.0]))
    assert built[0] and 0.25 - p1[0] == pytest.approx(0.0, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(unit, unit)
def test_slide_rules_pointwise(t1: float, t2: float) -> None:
    a1, a2 = np.array([t1]), np.array([t2])
    built, p1, p2 = slide_rule("b")(a1, a2)
    assert p1[0] + p2[0] == pytest.approx(float(built[0]), abs=1e-14)
    built, p1, p2 = slide_rule("c")(a1, a2)
    assert p1[0] + p2[0] == pytest.approx(float(built[0]), abs=1e-14)
    assert min(p1[0], p2[0]) >= -1e-15
    if built[0]:
        assert t1 - p1[0] >= -1e-15 and t2 - p2[0] >= -1e-15
    else:
        assert p1[0] == 0.0 and p2[0] == 0.0
    # Rule (a) charges P(θ_i) whatever happens.
    _, q1, _ = slide_rule("a")(a1, a2)
    assert q1[0] == pytest.approx(t1**2 / 2 - 1 / 32 if t1 > 0.25 else 0.0, abs=1e-15)


@pytest.mark.parametrize("rule", RULES)
def test_solved_rules_equal_the_slides_formulas(rule: Rule) -> None:
    sb = second_best()
    rng = np.random.default_rng(7)
    t1, t2 = rng.random(2000), rng.random(2000)
    away = np.abs(t1 + t2 - 1.25) > 1e-9
    got = solution_rule(sb, rule)(t1[away], t2[away])
    want = slide_rule(rule)(t1[away], t2[away])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, float), np.asarray(w, float), atol=1e-12)


# -- the mechanism --------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_allocate_monte_carlo_matches_expected_welfare_and_budget(rule: Rule) -> None:
    mech: Mechanism = BridgeMechanism(rule)
    res = mech.result
    assert res.mechanism == "bridge_second_best" and res.success
    assert res.welfare == pytest.approx(9 / 64, rel=1e-13)
    assert res.thresholds is not None and res.thresholds[0] == pytest.approx(1.25, abs=1e-13)
    assert res.lambdas is not None and res.lambdas[0] == pytest.approx(0.5, abs=1e-13)
    assert res.details["first_best_welfare"] == pytest.approx(1 / 6, rel=1e-13)
    assert res.details["fixed_fee_welfare"] == pytest.approx(1 / 8, rel=1e-13)
    rng = np.random.default_rng(2024)
    draws = rng.random((4000, 2))
    welfare = np.empty(len(draws))
    surplus = np.empty(len(draws))
    for k, th in enumerate(draws):
        al = mech.allocate(th)
        assert al.included.all() and al.location.tolist() == [0, 0]
        welfare[k] = al.Q[0] * th.sum() - al.cost[0]
        surplus[k] = al.budget_surplus()[0]
        if rule != "a":
            assert abs(surplus[k]) < 1e-12
    se = welfare.std(ddof=1) / np.sqrt(len(welfare))
    assert abs(welfare.mean() - 9 / 64) < 3 * se
    se_b = surplus.std(ddof=1) / np.sqrt(len(surplus))
    assert abs(surplus.mean()) < 3 * se_b + 1e-12


def test_allocate_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError):
        BridgeMechanism().allocate([0.5, 0.5, 0.5])


# -- a general prior -------------------------------------------------------------------


@pytest.mark.slow
def test_general_prior_budget_binds_and_monte_carlo_agrees() -> None:
    dist = TypeDistribution.beta(2.0, 2.0)
    sb = second_best(dist)
    fb = first_best(dist)
    assert abs(sb.budget) < 1e-12 and sb.lam > 0
    assert fixed_fee_welfare(dist) < sb.welfare < fb.welfare
    rng = np.random.default_rng(11)
    th = dist.rvs((200000, 2), rng)
    built = sb.build(th[:, 0], th[:, 1])
    w = (th.sum(axis=1) - 1.0) * built
    assert abs(w.mean() - sb.welfare) < 3 * w.std(ddof=1) / np.sqrt(len(w))
    w_fb = np.maximum(th.sum(axis=1) - 1.0, 0.0)
    assert abs(w_fb.mean() - fb.welfare) < 3 * w_fb.std(ddof=1) / np.sqrt(len(w_fb))
    # Rules (a) and (b) generalise (Lemma 1); rule (c) is the slides' U[0, 1] formula.
    generalised: tuple[Rule, ...] = ("a", "b")
    for rule in generalised:
        rep = analyse_rule(solution_rule(sb, rule), sb, rule, grid=64)
        assert rep.matches_lemma1.violation < 1e-12
        assert rep.interim_ic.holds and rep.interim_ir.holds
        assert rep.ex_ante_budget_balance.violation < 1e-12
    with pytest.raises(ValueError):
        BridgeMechanism("c", TypeDistribution.beta(2.0, 2.0))
