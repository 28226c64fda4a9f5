"""Making an ex-ante budget-balanced mechanism balance ex post: Lemma 5, eq. (33).

Given an incentive-compatible, individually rational scheme whose payments cover the
cost in expectation (7), the Cramton-Gibbons-Klemperer transfer (33)

    p̂_i = P_i(θ_i) + c(Q)/n − E[c | θ_i]/n − 1/(n−1) Σ_{j≠i} [P_j(θ_j) − E P_j]
          + 1/(n−1) Σ_{j≠i} 1/n [E[c | θ_j] − E c]

keeps every interim payment E[p̂_i | θ_i] = P_i(θ_i) (so IC and IR are untouched) and
makes Σ_i p̂_i = c(Q) + Σ_j E P_j − E c, which is c(Q) exactly when the ex-ante
constraint binds. It is applied per budget: the pooled one for money, one per location
for payments in kind (each location's agents balance that location's cost). As the
paper notes (Theorem 2), the transfers may charge or pay excluded agents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import interpolate

from .declared import Resolver
from .market import Market
from .optimal import TABLE_POINTS, LagrangianMechanism, _groups, second_best
from .result import MechanismResult, Outcome
from .sums import virtual_weight

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BalancedMechanism:
    """A :class:`LagrangianMechanism` with payments transformed by (33)."""

    base: LagrangianMechanism
    result: MechanismResult
    cond_cost: list[Callable[[FloatArray], FloatArray]]  # θ ↦ E[c_budget | θ_i = θ], per location k
    mean_cost: FloatArray  # E c per budget group
    mean_payment: FloatArray  # E P_k(θ) per agent of location k
    mean_cond_cost: FloatArray  # E over θ of E[c_budget | θ] per location k (= E c)
    # Solutions for other counts of declarants (the rule depends on n): see allocate.
    others: Resolver = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "others", Resolver(self._rebuild))

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None) -> Outcome:
        """(33) for the declarants that came (:class:`Mechanism`); other counts than the
        spec's are allocated by the balanced mechanism solved for them."""
        return self.others.allocate(self.base.market, self.result, types, locations,
                                    self._fixed)

    def _rebuild(self, market: Market) -> BalancedMechanism:
        return balance_ex_post(second_best(market, exclusion=self.base.exclusion))

    def _fixed(self, theta: FloatArray) -> Outcome:
        base = self.base.allocate(theta)
        m = self.base.market
        loc = base.location
        P = base.payments  # interim P_i(θ_i) for included agents, 0 otherwise
        Ec = np.empty_like(theta)
        for k in range(m.L):
            sel = loc == k
            Ec[sel] = self.cond_cost[k](theta[sel])
        budget = np.zeros_like(loc) if m.payment == "money" else loc
        G = int(budget.max()) + 1
        n = np.bincount(budget, minlength=G).astype(float)
        cost = (np.array([base.cost.sum()]) if m.payment == "money" else base.cost)
        dP = P - self.mean_payment[loc]
        dC = Ec - self.mean_cond_cost[loc]
        sum_dP = np.bincount(budget, weights=dP, minlength=G)
        sum_dC = np.bincount(budget, weights=dC, minlength=G)
        nb = n[budget]
        with np.errstate(divide="ignore", invalid="ignore"):
            others = np.where(nb > 1, 1.0 / (nb - 1.0), 0.0)
        pay = (P + cost[budget] / nb - Ec / nb
               - others * (sum_dP[budget] - dP)
               + others * (sum_dC[budget] - dC) / nb)
        return Outcome(included=base.included, Q=base.Q, payments=pay, location=loc,
                       cost=base.cost, result=self.result)


def balance_ex_post(mech: LagrangianMechanism) -> BalancedMechanism:
    """Apply (33) to a solved second-best mechanism."""
    ev = mech.evaluation
    if ev is None or not mech.pay_interim:
        raise ValueError("(33) needs a solved second-best mechanism with interim payments")
    m = mech.market
    L = m.L
    cond: list[Callable[[FloatArray], FloatArray]] = []
    mean_pay, mean_cond = np.zeros(L), np.zeros(L)
    for k, loc in enumerate(m.locations):
        grp = _groups(m, ev.lambdas, mech.exclusion, 0)[k]
        lo = loc.dist.low
        if not np.isfinite(virtual_weight(loc.dist, ev.lambdas[k], lo)):
            lo = float(loc.dist.ppf(1e-12))
        grid = np.linspace(lo, loc.dist.high, TABLE_POINTS)
        # Include the threshold itself so the spline does not straddle the jump there.
        grid = np.unique(np.concatenate([grid, [grp.theta0]]))
        w = virtual_weight(loc.dist, ev.lambdas[k], grid)
        inc = w > 0.0 if mech.exclusion else np.ones(grid.shape, dtype=bool)
        budget_locs = range(L) if m.payment == "money" else [k]
        vals = np.zeros_like(grid)
        for l in budget_locs:
            x = np.where(inc, m.weights[k, l] / (1.0 + ev.lambdas[l]) * w, 0.0)
            vals += ev.laws[l].given(mech.provisions[l].cost, k, x)
        # E[c | θ] is flat below the threshold and smooth above it: interpolate the two
        # pieces separately.
        t0 = grp.theta0
        above = grid >= t0
        spl = interpolate.CubicSpline(grid[above], vals[above]) if above.sum() > 3 else None
        below_val = float(vals[~above][-1]) if (~above).any() else float(vals[0])

        def cc(t: FloatArray, spl: interpolate.CubicSpline | None = spl, t0: float = t0,
               b: float = below_val) -> FloatArray:
            t = np.asarray(t, dtype=float)
            return np.asarray(np.where(t >= t0, spl(t) if spl is not None else b, b),
                              dtype=np.float64)

        cond.append(cc)
        mean_pay[k] = loc.dist.expect(mech.tables[k].payment, t0)
        mean_cond[k] = loc.dist.expect(cc)
    mean_cost = ev.cost if m.payment == "in_kind" else np.array([ev.cost.sum()])
    r = mech.result
    result = MechanismResult(
        mechanism=r.mechanism + "_balanced", success=r.success,
        status=r.status + "; payments made ex-post budget balanced by (33)",
        welfare=r.welfare, lambdas=r.lambdas, thresholds=r.thresholds,
        details={**r.details, "mean_cond_cost_check": mean_cond},
    )
    return BalancedMechanism(mech, result, cond, mean_cost, mean_pay, mean_cond)
