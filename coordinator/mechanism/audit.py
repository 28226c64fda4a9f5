"""Auditors: numerical checks of IC, IR and budget balance for any mechanism.

They use nothing but a mechanism's ``allocate`` and the market's priors, so they check
the posted-fee, optimal and equal-contribution mechanisms alike, and catch a mechanism
whose solver and allocation disagree. Interim quantities are estimated by Monte Carlo
with common random numbers (one set of other agents' types shared by every report), so
differences between reports have small variance; every estimate carries its standard
error. The random generator is passed in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .market import Market
from .result import Mechanism

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Audit:
    """Worst violations found (positive = violated), each with its standard error."""

    ic_worst_gain: float  # max over true θ, report θ' of U(θ,θ') − U(θ,θ)
    ic_gain_se: float
    ic_worst_at: tuple[float, float]  # (true θ, report θ') of the worst gain
    ir_worst: float  # max over θ of −U(θ,θ)
    ir_se: float
    budget_ex_ante: float  # E[payments − cost] (per budget, the smallest)
    budget_ex_ante_se: float
    budget_ex_post_worst_deficit: float  # max over sampled profiles of cost − payments
    welfare_mc: float
    welfare_mc_se: float
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def realised_welfare(market: Market, types: FloatArray, alloc: Any) -> float:
    """Σ π θ Σ_l W_il u_l(Q_l) − Σ_l c_l for one realisation (the integrand of (1))."""
    loc = alloc.location
    u = np.array([float(market.locations[l].utility(alloc.Q[l])) for l in range(market.L)])
    benefit = (market.weights @ u)[loc]
    return float(np.sum(np.where(alloc.included, types * benefit, 0.0)) - alloc.cost.sum())


def _budget_surplus(market: Market, alloc: Any) -> FloatArray:
    s = alloc.budget_surplus()
    return np.array([s.sum()]) if market.payment == "money" else np.asarray(s)


def interim_outcomes(mech: Mechanism, market: Market, others: FloatArray,
                     reports: npt.ArrayLike, *, location: int = 0
                     ) -> tuple[FloatArray, FloatArray]:
    """What the first agent of ``location`` gets for each report against each profile.

    ``others``: (S, N) type profiles of the whole population (the agent's own entry is
    overwritten); ``reports``: (R,) declared types. Returns ``(B, P)``, each (R, S):
    ``B[r, s]`` = π Σ_l W_l u_l(Q_l), the benefit factor its θ multiplies, and
    ``P[r, s]`` its payment (money, or in kind units of its location), so that its
    utility is θ B − P. Common random numbers: every report meets the same profiles.
    """
    rep = np.asarray(reports, dtype=float)
    agent = int(np.concatenate([[0], np.cumsum(market.sizes)])[location])
    samples = others.shape[0]
    B = np.empty((rep.shape[0], samples))
    Pm = np.empty((rep.shape[0], samples))
    u_cache = [market.locations[l].utility for l in range(market.L)]
    for s in range(samples):
        prof = others[s].copy()
        for r, th in enumerate(rep):
            prof[agent] = th
            al = mech.allocate(prof)
            u = np.array([float(u_cache[l](al.Q[l])) for l in range(market.L)])
            B[r, s] = float(al.included[agent]) * float(market.weights[location] @ u)
            Pm[r, s] = al.payments[agent]
    return B, Pm


def audit(mech: Mechanism, market: Market, rng: np.random.Generator, *,
          samples: int = 400, grid: int = 11, location: int = 0) -> Audit:
    """Check one agent of ``location`` for interim IC and IR; the budget on full profiles."""
    dist = market.locations[location].dist
    th_grid = dist.ppf((np.arange(grid) + 0.5) / grid)
    others = market.sample_types(rng, samples)
    B, Pm = interim_outcomes(mech, market, others, th_grid, location=location)
    # U[t, r, s] = θ_t B[r, s] − P[r, s]; gain of reporting r when the truth is t.
    U = th_grid[:, None, None] * B[None, :, :] - Pm[None, :, :]
    diff = U - U[np.arange(grid), np.arange(grid)][:, None, :]
    gain = diff.mean(axis=2)
    se = diff.std(axis=2, ddof=1) / np.sqrt(samples)
    t, r = (int(i) for i in np.unravel_index(int(np.argmax(gain)), gain.shape))
    truth = U[np.arange(grid), np.arange(grid)]
    ir = -truth.mean(axis=1)
    ir_se = truth.std(axis=1, ddof=1) / np.sqrt(samples)
    ti = int(np.argmax(ir))
    # Budget and welfare on fresh full profiles.
    full = market.sample_types(rng, samples)
    surplus = []
    welfare = []
    for s in range(samples):
        al = mech.allocate(full[s])
        surplus.append(_budget_surplus(market, al))
        welfare.append(realised_welfare(market, full[s], al))
    S = np.array(surplus)
    means = S.mean(axis=0)
    j = int(np.argmin(means))
    wv = np.array(welfare)
    return Audit(
        ic_worst_gain=float(gain[t, r]), ic_gain_se=float(se[t, r]),
        ic_worst_at=(float(th_grid[t]), float(th_grid[r])),
        ir_worst=float(ir[ti]), ir_se=float(ir_se[ti]),
        budget_ex_ante=float(means[j]),
        budget_ex_ante_se=float(S[:, j].std(ddof=1) / np.sqrt(samples)),
        budget_ex_post_worst_deficit=float(np.max(-S)),
        welfare_mc=float(wv.mean()), welfare_mc_se=float(wv.std(ddof=1) / np.sqrt(samples)),
        samples=samples,
    )
