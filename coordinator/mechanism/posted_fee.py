"""The asymptotically optimal posted-fee mechanism P̂(n): eqs. (18)-(23), Theorem 1.

Location i's agents are included iff θ ≥ θ*_i and each included agent pays the fixed
fee θ*_i Σ_l u_il(Q*_l) of (21) (money, or in kind: resource units of its own
location), whatever the others declare; sizes Q*_l are fixed in advance. (Q*, θ*)
maximise the expected welfare (18) subject to the budget constraint (19)/(23) for
money, or one constraint per location for payments in kind (the in-kind analogue of
(24)). The objective printed as (22) omits the factor ∫_θ* θ dF_i of (18); we follow
(18) and the slides' P* (the printed (22) is a typo: it would weigh every included
agent as if θ = 1).

Solution by the same Lagrangian as (25), now with deterministic π and Q: for fixed
multipliers λ the problem separates, θ*_i is the zero of θ + λ_i g_i(θ) and
Q*_l = argmax (Σ_i W_il n_i m_i(λ_i)) / (1+λ_l) · u_l(Q) − c_l(Q), with
m_i = ∫_{θ*_i} (θ + λ_i g_i) dF_i; λ is then chosen so the constraints bind. Using
∫_{θ*} g dF = θ* (1 − F(θ*)), the constraint terms are exactly (23)'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize

from .declared import declarants
from .distributions import TypeDistribution
from .market import Market, PowerCost, PowerUtility, check_solvable
from .multipliers import kkt_multipliers
from .provision import Power, Provision, provision_for
from .result import MechanismResult, Outcome
from .sums import Groups, distribution_groups, partial_means, survival, thresholds

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PostedFeePlan:
    thresholds: FloatArray
    Q: FloatArray
    welfare: float
    constraints: FloatArray  # per location (in kind) or one pooled entry (money)
    fees: FloatArray


@dataclass(frozen=True, slots=True)
class PlanForms:
    """What :func:`plan_at` needs that depends only on the market: the locations grouped
    by distinct prior (one vectorised call each) and, for power forms, the coefficient
    arrays of Q(a) = q_k a^q_e, u = A Q^α, c = B n^δ Q^β (None for other forms)."""

    dists: list[TypeDistribution]
    groups: Groups
    power: tuple[FloatArray, ...] | None

    @classmethod
    def of(cls, market: Market, provisions: list[Provision]) -> PlanForms:
        locs = market.locations
        dists = [loc.dist for loc in locs]
        groups = distribution_groups(dists)
        power = None
        qs = [p.q for p in provisions]
        us = [loc.utility for loc in locs]
        cs = [loc.cost for loc in locs]
        if (all(isinstance(q, Power) for q in qs) and all(isinstance(u, PowerUtility) for u in us)
                and all(isinstance(c, PowerCost) for c in cs)):
            power = (np.array([q.coef for q in qs if isinstance(q, Power)]),
                     np.array([q.exponent for q in qs if isinstance(q, Power)]),
                     np.array([u.A for u in us if isinstance(u, PowerUtility)]),
                     np.array([u.alpha for u in us if isinstance(u, PowerUtility)]),
                     np.array([c.B * float(loc.n) ** c.delta
                               for c, loc in zip(cs, locs, strict=True)
                               if isinstance(c, PowerCost)]),
                     np.array([c.beta for c in cs if isinstance(c, PowerCost)]))
        return cls(dists, groups, power)


def plan_at(market: Market, lambdas: FloatArray, provisions: list[Provision],
            forms: PlanForms | None = None) -> PostedFeePlan:
    """θ*, Q* and the value of (18), (19)/(23) for given multipliers (``forms``: what
    depends only on the market, built once per solve; built here when None)."""
    forms = PlanForms.of(market, provisions) if forms is None else forms
    W = market.weights
    n = market.sizes.astype(float)
    th = thresholds(forms.dists, lambdas, forms.groups)
    survive = survival(forms.dists, th, forms.groups)
    mean_in = partial_means(forms.dists, th, forms.groups)
    g_in = th * survive  # ∫_{θ*} g dF = θ*(1 − F(θ*))
    m = mean_in + lambdas * g_in
    a = (W.T @ (n * m)) / (1.0 + lambdas)
    Q, u, c = _sizes(market, provisions, a, forms)
    benefit = W @ u  # Σ_l u_il(Q_l) for an agent of location i
    welfare = float(np.sum(n * mean_in * benefit) - c.sum())
    per_location = n * g_in * benefit - c
    constraints = per_location if market.payment == "in_kind" else np.array([per_location.sum()])
    return PostedFeePlan(th, Q, welfare, constraints, th * benefit)


def _sizes(market: Market, provisions: list[Provision], a: FloatArray,
           forms: PlanForms) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Q_l = argmax a_l u_l − c_l and u_l(Q_l), c_l(Q_l); one array pass for power forms."""
    if forms.power is not None:
        qk, qe, A, al, Bn, be = forms.power
        Q = qk * np.power(np.maximum(a, 0.0), qe)
        return Q, A * np.power(Q, al), Bn * np.power(Q, be)
    locs = market.locations
    Q = np.array([float(provisions[l].q(np.array([a[l]]))[0]) for l in range(market.L)])
    u = np.array([float(locs[l].utility(Q[l])) for l in range(market.L)])
    c = np.array([float(locs[l].cost(locs[l].n, Q[l])) for l in range(market.L)])
    return Q, u, c


@dataclass(frozen=True)
class PostedFeeMechanism:
    market: Market
    result: MechanismResult
    plan: PostedFeePlan

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None) -> Outcome:
        """The posted terms applied to the declarants that came (:class:`Mechanism`):
        θ ≥ θ*_l, the fee of l, Q* and its cost, whatever the counts (the terms are
        posted before anyone declares and are binding)."""
        m = self.market
        theta, loc = declarants(m, types, locations)
        included = theta >= self.plan.thresholds[loc]
        pay = np.where(included, self.plan.fees[loc], 0.0)
        cost = np.array([float(m.locations[l].cost(m.locations[l].n, self.plan.Q[l]))
                         for l in range(m.L)])
        return Outcome(included=included, Q=self.plan.Q.copy(), payments=pay,
                       location=loc, cost=cost, result=self.result)


def _failed(market: Market, status: str) -> PostedFeeMechanism:
    L = market.L
    nan = np.full(L, np.nan)
    plan = PostedFeePlan(nan, np.zeros(L), math.nan, nan, nan)
    return PostedFeeMechanism(market, MechanismResult(
        mechanism="posted_fee", success=False, status=status, welfare=math.nan), plan)


def posted_fee(market: Market) -> PostedFeeMechanism:
    """Solve P̂(n) (18)-(23) for money or payments in kind.

    θ*_i is where the ironed weight w̄ = θ + λ ḡ crosses zero, the global maximiser of
    ∫_θ* (θ + λ g) dF even where g decreases (an irregular prior), so the plan is the
    optimum of (18) for the multipliers; the fee revenue θ*(1 − F(θ*)) is exact either
    way. Raises :class:`~coordinator.mechanism.market.UnsupportedMarketError` before
    solving for a market it cannot handle.
    """
    check_solvable(market, "posted_fee")
    provisions = [provision_for(loc, market) for loc in market.locations]
    L = market.L

    forms = PlanForms.of(market, provisions)

    def pooled(lam: float) -> float:
        return float(plan_at(market, np.full(L, lam), provisions, forms).constraints.sum())

    status = "constraint binds"
    ok = True
    if pooled(0.0) >= 0.0:
        lam = 0.0
        status = "constraint slack at λ = 0"
    else:
        t_hi = 0.5
        while pooled(t_hi / (1 - t_hi)) < 0.0 and t_hi < 1 - 1e-12:
            t_hi = 1 - (1 - t_hi) / 4
        if pooled(t_hi / (1 - t_hi)) < 0.0:
            return _failed(market, "no multiplier makes the budget constraint hold: no "
                           "posted fee covers the cost")
        t = optimize.brentq(lambda s: pooled(s / (1 - s)), 0.0, t_hi, xtol=1e-14)
        lam = t / (1 - t)
    lambdas = np.full(L, lam)
    if market.payment == "in_kind" and L > 1:
        scale = max(1.0, abs(plan_at(market, np.zeros(L), provisions, forms).welfare))

        def values(lv: FloatArray) -> tuple[float, FloatArray]:
            p = plan_at(market, lv, provisions, forms)
            return p.welfare, p.constraints

        lambdas, ok, status = kkt_multipliers(values, lambdas, scale)
    plan = plan_at(market, lambdas, provisions, forms)
    details: dict[str, Any] = {"constraint_values": plan.constraints, "payment": market.payment,
                               "lambda_note": "multipliers of (19)/(23)"}
    result = MechanismResult(
        mechanism="posted_fee", success=ok and all(math.isfinite(x) for x in plan.Q),
        status=status, welfare=plan.welfare, lambdas=lambdas, thresholds=plan.thresholds,
        Q=plan.Q, fees=plan.fees, details=details)
    return PostedFeeMechanism(market, result, plan)
