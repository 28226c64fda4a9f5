"""Result records shared by every mechanism.

A solved mechanism is described by a frozen :class:`MechanismResult` (what was computed
offline from the priors) and, for mechanisms that allocate, by :class:`Allocation`
records (what one realisation of declared types gives). Nothing here computes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """One realisation of a mechanism: who is in, how much is built, who owes what.

    ``included``, ``payments`` and ``location`` are indexed by agent (agents are ordered
    by location, as in the market spec); ``Q`` is indexed by location. ``payments`` are in
    money units, or, for payments in kind, in resource units of the agent's own location.
    Excluded agents' entries in ``payments`` are what the mechanism charges them (zero
    for every mechanism of the paper's Section 3, non-zero only after the Lemma 5 /
    Theorem 2 transformation, which may charge excluded agents).
    """

    included: BoolArray
    Q: FloatArray
    payments: FloatArray
    location: npt.NDArray[np.int64]
    cost: FloatArray  # c_l(n_l, Q_l) per location

    def budget_surplus(self) -> FloatArray:
        """Payments minus cost, per location (in kind: one constraint each, eq. 24)."""
        L = self.Q.shape[0]
        paid = np.bincount(self.location, weights=self.payments, minlength=L)
        return paid - self.cost


@dataclass(frozen=True, slots=True, kw_only=True)
class MechanismResult:
    """What solving a mechanism from the priors produced.

    ``success`` is False when a solver did not converge or an assumption failed;
    ``status`` says why in words. ``welfare`` is the expected social welfare (1);
    ``welfare_se`` is its Monte Carlo standard error, or 0.0 when it was obtained by
    exact formulas or quadrature. Decision variables that do not apply are None.
    """

    mechanism: str
    success: bool
    status: str
    welfare: float
    welfare_se: float = 0.0
    lambdas: FloatArray | None = None
    thresholds: FloatArray | None = None
    Q: FloatArray | None = None
    fees: FloatArray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (arrays become lists)."""

        def plain(x: Any) -> Any:
            if isinstance(x, np.ndarray):
                return x.tolist()
            if isinstance(x, np.generic):
                return x.item()
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [plain(v) for v in x]
            return x

        return {
            "mechanism": self.mechanism,
            "success": self.success,
            "status": self.status,
            "welfare": self.welfare,
            "welfare_se": self.welfare_se,
            "lambda": plain(self.lambdas),
            "thresholds": plain(self.thresholds),
            "Q": plain(self.Q),
            "fees": plain(self.fees),
            "details": plain(self.details),
        }


class Mechanism(Protocol):
    """What every allocating mechanism offers: its solved result and ``allocate``.

    ``allocate`` takes the declared types of all agents, ordered by location as in the
    market spec (a 1-D array of length sum(n_l)), and returns one :class:`Allocation`.
    The same interface serves every mechanism, so the coordinator never branches on
    which one runs.
    """

    @property
    def result(self) -> MechanismResult: ...

    def allocate(self, types: npt.ArrayLike) -> Allocation: ...
