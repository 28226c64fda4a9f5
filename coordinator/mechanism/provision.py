"""Pointwise provision: the size Q that maximises a·u(Q) − c(n, Q) for a weight a ≥ 0.

Every mechanism of the paper chooses Q_l pointwise ((17), (25)): given the weighted sum
a_l of included agents' (virtual) values, Q_l = argmax_Q a_l u_l(Q) − c_l(n_l, Q). A
:class:`Provision` gives, for a vector of weights, Q and the two functions of the
weight the expectations need, u(Q(a)) and c(Q(a)). For power forms these are powers of
a (``Power``), which the exact moment method of :mod:`sums` can integrate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .market import Location, Market, PowerCost, PowerUtility

FloatArray = npt.NDArray[np.float64]

GOLDEN_ITERATIONS = 200


@dataclass(frozen=True, slots=True)
class Power:
    """φ(a) = coef · (a⁺)^exponent."""

    coef: float
    exponent: float

    def __call__(self, a: npt.ArrayLike) -> FloatArray:
        x: FloatArray = np.maximum(np.asarray(a, dtype=float), 0.0)
        # Integer exponents (the slides' example) by multiplication: np.power with a
        # float exponent dominates the lattice method's run time otherwise.
        if self.exponent == 1.0:
            return self.coef * x
        if self.exponent == 2.0:
            return self.coef * (x * x)
        return self.coef * np.power(x, self.exponent)


@dataclass(frozen=True, slots=True)
class Step:
    """φ(a) = values[j] for breaks[j−1] < a ≤ breaks[j] (values[0] below breaks[0]):
    a nondecreasing step function of the weight, as u(Q(a)) and c(Q(a)) are when only
    the sizes ``levels`` may be built. Its jumps are known, so the lattice averages it
    exactly over a cell instead of sampling it (first-order error otherwise)."""

    breaks: FloatArray  # (m,) increasing
    values: FloatArray  # (m + 1,)

    def __call__(self, a: npt.ArrayLike) -> FloatArray:
        x = np.asarray(a, dtype=float)
        # Ties go to the smaller size, as in the argmax: a jump takes effect above it.
        return np.asarray(self.values[np.searchsorted(self.breaks, x, side="left")],
                          dtype=np.float64)


Phi = Power | Step | Callable[[FloatArray], FloatArray]


@dataclass(frozen=True, slots=True)
class Provision:
    """Q(a), u(Q(a)) and c(Q(a)) for one location."""

    q: Callable[[FloatArray], FloatArray]
    benefit: Phi  # a ↦ u(Q(a))
    cost: Phi  # a ↦ c(n, Q(a))


def _level_steps(levels: FloatArray, u_lv: FloatArray, c_lv: FloatArray) -> Step:
    """Q(a) = argmax_k a u_k − c_k over the levels as a step function of a: the upper
    envelope of the lines a ↦ a u_k − c_k, walked from a = −∞ (the smallest u, ties to
    the smaller size) upward. Breaks are exact intersections (c_j − c_k)/(u_j − u_k)."""
    order = np.lexsort((levels, u_lv))  # by u, then by size
    current = int(order[0])
    # Below every break the line with the smallest u wins (ties: the first, smallest).
    for k in order:
        if u_lv[k] == u_lv[current] and c_lv[k] < c_lv[current]:
            current = int(k)
    breaks: list[float] = []
    values = [float(levels[current])]
    while True:
        best_a, best_k = math.inf, -1
        for k in range(levels.size):
            if u_lv[k] <= u_lv[current]:
                continue
            a = float((c_lv[k] - c_lv[current]) / (u_lv[k] - u_lv[current]))
            # The next line to take over is the one crossing first; among those crossing
            # at the same a, the steepest (it stays above afterwards).
            if a < best_a or (a == best_a and u_lv[k] > u_lv[best_k]):
                best_a, best_k = a, k
        if best_k < 0:
            break
        breaks.append(best_a)
        values.append(float(levels[best_k]))
        current = best_k
    return Step(np.array(breaks), np.array(values))


def provision_for(loc: Location, market: Market) -> Provision:
    """The pointwise maximiser of a·u(Q) − c(n, Q) over the market's allowed sizes."""
    u, c, n = loc.utility, loc.cost, loc.n
    if market.levels is not None:
        levels = np.asarray(market.levels)
        u_lv = u(levels)
        c_lv = np.asarray(c(n, levels), dtype=float)

        def q_discrete(a: FloatArray) -> FloatArray:
            a = np.asarray(a, dtype=float)
            gain = a[..., None] * u_lv - c_lv
            # Ties go to the smaller size: np.argmax returns the first maximum.
            return np.asarray(levels[np.argmax(gain, axis=-1)], dtype=float)

        q_step = _level_steps(levels, u_lv, c_lv)
        idx = np.searchsorted(levels, q_step.values)
        return Provision(
            q_step,
            Step(q_step.breaks, u_lv[idx]),
            Step(q_step.breaks, c_lv[idx]),
        )
    if isinstance(u, PowerUtility) and isinstance(c, PowerCost):
        if not u.alpha < c.beta:
            raise ValueError(f"location {loc.name!r}: power forms need alpha < beta")
        # d/dQ [a A Q^α − B n^δ Q^β] = 0  ⇒  Q = (a A α / (B n^δ β))^(1/(β−α)).
        Bn = c.B * float(n) ** c.delta
        r = 1.0 / (c.beta - u.alpha)
        K = (u.A * u.alpha / (Bn * c.beta)) ** r
        return Provision(
            Power(K, r),
            Power(u.A * K**u.alpha, u.alpha * r),
            Power(Bn * K**c.beta, c.beta * r),
        )
    q_max = market.q_max

    def q_golden(a: FloatArray) -> FloatArray:
        # a·u(Q) − c(Q) is concave in Q (u concave, c convex, a ≥ 0): golden section
        # converges to the maximiser, vectorised over all weights at once.
        a = np.maximum(np.asarray(a, dtype=float), 0.0)
        lo = np.zeros_like(a)
        hi = np.full_like(a, q_max)
        ratio = (np.sqrt(5.0) - 1.0) / 2.0
        for _ in range(GOLDEN_ITERATIONS):
            m1 = hi - ratio * (hi - lo)
            m2 = lo + ratio * (hi - lo)
            f1 = a * u(m1) - c(n, m1)
            f2 = a * u(m2) - c(n, m2)
            left = f1 >= f2
            hi = np.where(left, m2, hi)
            lo = np.where(left, lo, m1)
        Q = 0.5 * (lo + hi)
        # Q = 0 is allowed and may beat the interior point found.
        return np.where(a * u(Q) - c(n, Q) > 0.0, Q, 0.0)

    return Provision(
        q_golden,
        lambda a: u(q_golden(a)),
        lambda a: np.asarray(c(n, q_golden(a)), dtype=float),
    )
