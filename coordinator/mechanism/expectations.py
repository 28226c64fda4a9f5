"""Expected size E[Q_l] and expected fee of a participant for any solved mechanism.

Some mechanisms' solutions carry these exactly (the posted fee's Q* and φ, the
equal-contribution schemes' ``details["expected_Q"]`` and fees); for the others (first
best, optimal) Q and the payments depend on the declared types, and they are estimated
here by a Monte Carlo of the mechanism's own ``allocate`` over type profiles drawn from
the priors, with the generator passed in and the standard error reported. No I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .market import Market
from .result import Mechanism

Source = Literal["exact", "monte carlo", "none"]


@dataclass(frozen=True, slots=True)
class Expectation:
    """An expected value, its standard error (0.0 when exact, nan when ``none``) and how
    it was obtained (``none``: it does not exist, e.g. nobody is ever included)."""

    value: float
    se: float
    source: Source

    def text(self) -> str:
        """``value`` (exact), ``value ± se`` (Monte Carlo) or ``—`` (none)."""
        if self.source == "none" or not math.isfinite(self.value):
            return "—"
        if self.source == "exact":
            return f"{self.value:.8g}"
        return f"{self.value:.6g} ± {self.se:.2g}"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON (a non-finite number becomes None)."""
        def finite(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"value": finite(self.value), "se": finite(self.se), "source": self.source}


NONE = Expectation(math.nan, math.nan, "none")


def _per_location(value: Any, L: int) -> list[float] | None:
    if value is None:
        return None
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    return [float(v) for v in arr] if arr.shape == (L,) else None


def monte_carlo(mech: Mechanism, market: Market, draws: int, rng: np.random.Generator
                ) -> tuple[list[Expectation], list[Expectation]]:
    """E[Q_l] and E[payment | included] per location from ``draws`` type profiles.

    The fee is the ratio E[Σ payments of included agents of l] / E[number included at l],
    with a delta-method standard error. Raises ValueError for ``draws`` < 2.
    """
    if draws < 2:
        raise ValueError(f"a Monte Carlo needs at least 2 draws, got {draws}")
    L = market.L
    Qs = np.empty((draws, L))
    paid = np.empty((draws, L))
    count = np.empty((draws, L))
    for i, types in enumerate(market.sample_types(rng, draws)):
        out = mech.allocate(types)
        Qs[i] = out.Q
        inc = np.asarray(out.included, dtype=bool)
        paid[i] = np.bincount(out.location[inc], weights=out.payments[inc], minlength=L)
        count[i] = np.bincount(out.location[inc], minlength=L)
    root = math.sqrt(draws)
    q = [Expectation(float(Qs[:, l].mean()), float(Qs[:, l].std(ddof=1)) / root,
                     "monte carlo") for l in range(L)]
    fees = []
    for l in range(L):
        mean_n = float(count[:, l].mean())
        if mean_n <= 0.0:
            fees.append(NONE)
            continue
        ratio = float(paid[:, l].mean()) / mean_n
        resid = paid[:, l] - ratio * count[:, l]
        fees.append(Expectation(ratio, float(resid.std(ddof=1)) / root / mean_n,
                                "monte carlo"))
    return q, fees


def expected_size_and_fee(mech: Mechanism, market: Market, *, draws: int,
                          rng: np.random.Generator
                          ) -> tuple[list[Expectation], list[Expectation]]:
    """(E[Q_l], expected fee of a participant) per location, exact where the solution
    has them, else by :func:`monte_carlo` (``draws`` = 0: not estimated, ``none``).

    Units: Q in resource units of the location; fees in money units, or in kind in
    resource units of the payer's own location.
    """
    r = mech.result
    L = market.L
    exact_q = _per_location(r.details.get("expected_Q", r.Q), L)
    exact_fee = _per_location(r.fees, L)

    def exact(values: list[float]) -> list[Expectation]:
        return [Expectation(v, 0.0, "exact") for v in values]

    if exact_q is not None and exact_fee is not None:
        return exact(exact_q), exact(exact_fee)
    if draws <= 0 or not r.success:
        q_mc, fee_mc = [NONE] * L, [NONE] * L
    else:
        q_mc, fee_mc = monte_carlo(mech, market, draws, rng)
    return (q_mc if exact_q is None else exact(exact_q),
            fee_mc if exact_fee is None else exact(exact_fee))


__all__ = ["NONE", "Expectation", "expected_size_and_fee", "monte_carlo"]
