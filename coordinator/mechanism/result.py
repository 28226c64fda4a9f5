"""Result records shared by every mechanism.

A solved mechanism is described by a frozen :class:`MechanismResult` (what was computed
offline from the priors) and, for mechanisms that allocate, by :class:`Outcome` records
(what one realisation of declared types gives: the mechanism-design term for an
allocation together with its transfers; the wire's signed ``Allocation`` message is
built from it by the coordinator). Nothing here computes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One realisation of a mechanism: who is in, how much is built, who owes what.

    ``included``, ``payments`` and ``location`` are indexed by declarant, in the order
    the types were passed to ``allocate``; ``Q`` and ``cost`` are indexed by the market
    spec's locations (0 where nothing is built). ``result`` is the solution that
    allocated: the mechanism's own, or, for a mechanism re-solved for the declarants'
    counts per location (:mod:`coordinator.mechanism.declared`), that solution's.
    ``payments`` are in money units, or, for payments in kind, in resource units of the
    agent's own location.
    Excluded agents' entries in ``payments`` are what the mechanism charges them (zero
    for every mechanism of the paper's Section 3, non-zero only after the Lemma 5 /
    Theorem 2 transformation, which may charge excluded agents).
    """

    included: BoolArray
    Q: FloatArray
    payments: FloatArray
    location: npt.NDArray[np.int64]
    cost: FloatArray  # c_l(n_l, Q_l) per location
    result: MechanismResult

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

    ``allocate(types, locations)`` takes the declarants that actually came: ``types[i]``
    is declarant i's θ and ``locations[i]`` its location index (any number per location,
    zero included, in any order). With ``locations`` omitted, ``types`` is the whole
    population of the market spec ordered by location (n_l agents of location l), as
    Monte Carlo over the priors draws it. It returns one :class:`Outcome` indexed like
    ``types``, or raises ValueError for a type outside its location's support, a
    location out of range or mismatched lengths. The same interface serves every
    mechanism, so the coordinator never branches on which one runs.
    """

    @property
    def result(self) -> MechanismResult: ...

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None
                 ) -> Outcome: ...
