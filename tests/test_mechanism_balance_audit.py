"""Ex-post budget balance by (33) (coordinator.mechanism.balance) and the numerical
auditors of IC, IR and budget balance (coordinator.mechanism.audit).

The transform must balance every profile exactly while leaving every agent's interim
payment, hence IC and IR, untouched; the auditor must pass the paper's mechanisms and
catch mechanisms that are not incentive compatible or individually rational.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.mechanism.audit import audit
from coordinator.mechanism.balance import BalancedMechanism, balance_ex_post
from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.market import Location, Market, PowerCost, PowerUtility, slides_market
from coordinator.mechanism.optimal import LagrangianMechanism, first_best, second_best
from coordinator.mechanism.posted_fee import posted_fee
from coordinator.mechanism.result import MechanismResult, Outcome


def _two_towns(payment: str) -> Market:
    locs = (Location("centre", 5, TypeDistribution.uniform(), PowerUtility(1.0, 0.5),
                     PowerCost(1.0, 1.0)),
            Location("campus", 3, TypeDistribution.beta(2.0, 2.0), PowerUtility(0.8, 0.5),
                     PowerCost(1.5, 1.0)))
    return Market(locs, np.array([[1.0, 0.6], [0.3, 1.0]]), payment)


MARKETS = ["slides6", "two-towns-money", "two-towns-in-kind"]


@functools.cache
def solved(name: str) -> tuple[Market, LagrangianMechanism, BalancedMechanism]:
    m = {"slides6": lambda: slides_market(6),
         "two-towns-money": lambda: _two_towns("money"),
         "two-towns-in-kind": lambda: _two_towns("in_kind")}[name]()
    base = second_best(m)
    assert base.result.success, base.result.status
    return m, base, balance_ex_post(base)


def _budgets(market: Market, alloc: Outcome) -> np.ndarray:
    s = alloc.budget_surplus()
    return np.array([s.sum()]) if market.payment == "money" else s


# ---------------------------------------------------------------------------------
# (33)
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MARKETS)
def test_balanced_payments_sum_to_cost_per_budget_on_every_profile(name: str) -> None:
    m, _base, bal = solved(name)
    rng = np.random.default_rng(33)
    for types in m.sample_types(rng, 150):
        al = bal.allocate(types)
        np.testing.assert_allclose(_budgets(m, al), 0.0, rtol=0, atol=1e-6)
    # Extreme profiles too: nobody included (Q = 0), everybody at the top.
    lows = np.array([loc.dist.low for loc in m.locations])[m.agent_locations()]
    highs = np.array([loc.dist.high for loc in m.locations])[m.agent_locations()]
    for types in (lows, highs):
        np.testing.assert_allclose(_budgets(m, bal.allocate(types)), 0.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MARKETS)
def test_balanced_mechanism_keeps_the_allocation_and_the_welfare(name: str) -> None:
    m, base, bal = solved(name)
    assert bal.result.welfare == base.result.welfare
    assert bal.result.success
    rng = np.random.default_rng(34)
    for types in m.sample_types(rng, 50):
        a, b = base.allocate(types), bal.allocate(types)
        np.testing.assert_array_equal(a.included, b.included)
        np.testing.assert_array_equal(a.Q, b.Q)
        np.testing.assert_array_equal(a.cost, b.cost)


@pytest.mark.parametrize("name, location", [("slides6", 0), ("two-towns-in-kind", 1)])
def test_balanced_interim_payment_equals_the_base_interim_payment(name: str,
                                                                  location: int) -> None:
    # E[p̂_i | θ_i = θ] = P_i(θ) (Lemma 5), also below the threshold where P = 0.
    m, base, bal = solved(name)
    dist = m.locations[location].dist
    agent = int(np.concatenate([[0], np.cumsum(m.sizes)])[location])
    t0 = base.tables[location].theta0
    rng = np.random.default_rng(55 + location)
    S = 600
    others = m.sample_types(rng, S)
    thetas = [0.5 * (dist.low + t0), float(dist.ppf(0.7))]
    for theta in thetas:
        pay = np.empty(S)
        for s in range(S):
            prof = others[s].copy()
            prof[agent] = theta
            pay[s] = bal.allocate(prof).payments[agent]
        want = float(base.tables[location].payment(np.array([theta]))[0])
        se = pay.std(ddof=1) / math.sqrt(S)
        assert abs(pay.mean() - want) < 3 * se + 1e-9, (theta, pay.mean(), want, se)


def test_balanced_transfers_may_charge_or_pay_excluded_agents() -> None:
    # Theorem 2's construction balances the budget by transfers that reach excluded
    # agents too; the base mechanism charges them nothing.
    m, base, bal = solved("slides6")
    rng = np.random.default_rng(7)
    seen = False
    for types in m.sample_types(rng, 100):
        a, b = base.allocate(types), bal.allocate(types)
        out = ~a.included
        assert np.all(a.payments[out] == 0.0)
        if out.any() and np.any(np.abs(b.payments[out]) > 1e-6):
            seen = True
    assert seen


def test_balance_refuses_a_mechanism_without_interim_payments() -> None:
    with pytest.raises(ValueError, match="interim payments"):
        balance_ex_post(first_best(slides_market(4)))


# ---------------------------------------------------------------------------------
# auditors
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, location", [("slides6", 0), ("two-towns-in-kind", 0),
                                            ("two-towns-in-kind", 1)])
def test_audit_passes_the_second_best(name: str, location: int) -> None:
    m, base, _ = solved(name)
    a = audit(base, m, np.random.default_rng(7 + location), samples=200, grid=7,
              location=location)
    assert a.samples == 200
    assert a.ic_worst_gain <= 3 * a.ic_gain_se + 1e-9
    assert a.ir_worst <= 3 * a.ir_se + 1e-9
    # Ex-ante balance binds for the second best: payments cover the cost on average.
    assert abs(a.budget_ex_ante) <= 3 * a.budget_ex_ante_se
    assert abs(a.welfare_mc - base.result.welfare) <= 3 * a.welfare_mc_se
    # Interim payments are not balanced profile by profile.
    assert a.budget_ex_post_worst_deficit > 1e-3


@pytest.mark.parametrize("name", ["slides6", "two-towns-in-kind"])
def test_audit_passes_the_balanced_mechanism_with_no_deficit_on_any_profile(name: str) -> None:
    m, base, bal = solved(name)
    a = audit(bal, m, np.random.default_rng(200), samples=150, grid=6)
    assert a.ic_worst_gain <= 3 * a.ic_gain_se + 1e-9
    assert a.ir_worst <= 3 * a.ir_se + 1e-9
    assert a.budget_ex_post_worst_deficit <= 1e-6
    assert abs(a.budget_ex_ante) <= 1e-6
    assert abs(a.welfare_mc - base.result.welfare) <= 3 * a.welfare_mc_se


@pytest.mark.parametrize("market", ["slides6", "two-towns-in-kind"])
def test_audit_passes_the_posted_fee_which_balances_only_ex_ante(market: str) -> None:
    m = solved(market)[0]
    mech = posted_fee(m)
    a = audit(mech, m, np.random.default_rng(300), samples=600, grid=7)
    assert a.ic_worst_gain <= 3 * a.ic_gain_se + 1e-9
    assert a.ir_worst <= 3 * a.ir_se + 1e-9
    assert a.budget_ex_post_worst_deficit > 1e-3  # not ex-post balanced
    assert abs(a.budget_ex_ante) <= 3 * a.budget_ex_ante_se  # ex-ante balanced
    assert abs(a.welfare_mc - mech.result.welfare) <= 3 * a.welfare_mc_se


@dataclass(frozen=True)
class _FlatMechanism:
    """Everyone in, Q fixed; each agent pays share·(declared θ)·u(Q) + fee."""

    market: Market
    Q: float
    share: float
    fee: float
    result: MechanismResult = field(default_factory=lambda: MechanismResult(
        mechanism="flat", success=True, status="test", welfare=math.nan))

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None) -> Outcome:
        assert locations is None  # the audit draws whole populations
        theta = self.market.split_types(types)
        loc = self.market.locations[0]
        u = float(loc.utility(self.Q))
        return Outcome(included=np.ones(theta.shape, dtype=bool), Q=np.array([self.Q]),
                       payments=self.share * theta * u + self.fee,
                       location=self.market.agent_locations(),
                       cost=np.array([float(loc.cost(loc.n, self.Q))]), result=self.result)


def test_audit_detects_a_profitable_misreport() -> None:
    # Paying half the declared value: under-reporting saves money at no loss.
    m = slides_market(4)
    a = audit(_FlatMechanism(m, Q=1.0, share=0.5, fee=0.0), m, np.random.default_rng(1),
              samples=50, grid=5)
    assert a.ic_worst_gain > 3 * a.ic_gain_se + 1e-9
    true_t, report = a.ic_worst_at
    assert report < true_t
    # Worst case: the top grid type reports the bottom one, gain ½ (θ − θ') u(1).
    th = (np.arange(5) + 0.5) / 5
    assert a.ic_worst_gain == pytest.approx(0.5 * (th[-1] - th[0]) * (2 / 3), rel=1e-12)


def test_audit_detects_an_individual_rationality_violation() -> None:
    # A flat fee above the low types' value of the facility.
    m = slides_market(4)
    fee = 0.3
    a = audit(_FlatMechanism(m, Q=1.0, share=0.0, fee=fee), m, np.random.default_rng(2),
              samples=50, grid=5)
    assert a.ic_worst_gain <= 1e-12
    assert a.ir_worst > 3 * a.ir_se + 1e-9
    assert a.ir_worst == pytest.approx(fee - 0.1 * (2 / 3), rel=1e-12)  # lowest grid type 0.1
