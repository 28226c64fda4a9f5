"""From declared types to the protocol's ``Allocation``: the bridge to the engine.

At the close of an epoch the declarants that came (:class:`~coordinator.decision.Participant`)
go to the solved mechanism's one seam, ``allocate(types, locations)``
(:class:`coordinator.mechanism.Mechanism`), whichever mechanism runs: the posted fee
applies its posted terms to whoever came, the optimal mechanism allocates as solved for
the actual counts per location (a location nobody declared in gets Q = 0). This module
never branches on which mechanism runs; it converts the engine's
:class:`~coordinator.mechanism.Outcome` (floats in spec units, indexed by declarant) into
a :class:`~coordinator.decision.Decision` (integers in micro-units, by node id).

Announced terms are binding. The announcement carries the terms a mechanism posts before
anyone declares (``MechanismResult.fees`` and ``Q``: the posted fee's, solved from the
priors with the spec's n per location; none for the optimal mechanism). At close the
terms the announcement carried must be the ones this coordinator's mechanism posts (a
coordinator restarted with another spec mid-epoch could not honour them): if they
differ, nobody is included and the status says why, rather than charging fees nobody
was told.

Solving is the expensive part (a second or more for several locations); the mechanism
is solved once, on first use, and keeps its own solutions for other counts.
:class:`MechanismRunner` is thread-safe: the service calls :meth:`MechanismRunner.run`
from a worker thread (``run_in_executor``).

Everything that leaves this module is integers in micro-units, built without clocks or
randomness, so identical declarations give an identical :class:`Decision` and hence a
byte-identical signed allocation. Rounding: Q and welfare half-to-even, contributions
toward +∞ (what a node owes is never rounded down, README §1).

This module deliberately signs nothing and keeps no epoch state: see
:mod:`coordinator.epoch`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

import numpy as np

from coordinator.decision import Decision, Participant
from coordinator.mechanism import ALIASES, Market, Mechanism, canonical, solve
from protocol import from_micro, to_micro
from protocol.encoding import Rounding
from protocol.messages import MAX_QUANTITY_MICRO, MAX_WELFARE_MICRO, MECHANISMS, THETA_MAX_MICRO

log = logging.getLogger(__name__)


def coordinator_mechanism(name: str) -> str:
    """The wire name of a mechanism the coordinator runs (``posted_fee`` or ``optimal``;
    the former ``second_best`` is accepted as an alias). ValueError otherwise."""
    wire = canonical(name)
    if wire not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {sorted(MECHANISMS)}, got {name!r}")
    return wire


def former_names(mechanism: str) -> tuple[str, ...]:
    """The aliases that name ``mechanism`` (a database bound under one still opens)."""
    return tuple(old for old, new in ALIASES.items() if new == mechanism)


def _quantity(x: float, *, rounding: Rounding = "half_even") -> int:
    micro = to_micro(float(x), rounding=rounding)
    return min(max(micro, 0), MAX_QUANTITY_MICRO)


class MechanismRunner:
    """A market spec plus a mechanism name; solves once, allocates per close."""

    def __init__(self, market: Market, mechanism: str) -> None:
        self.market = market
        self.mechanism = coordinator_mechanism(mechanism)  # the wire name
        self._solved: Mechanism | None = None
        self._lock = threading.Lock()

    @property
    def payment(self) -> str:
        return self.market.payment

    @property
    def n_locations(self) -> int:
        return self.market.L

    def theta_bounds(self) -> tuple[tuple[int, int], ...]:
        """Per location, the declarable θ in micro-units: the prior's support ∩ [0, 1]."""
        out = []
        for loc in self.market.locations:
            lo = max(0, to_micro(float(loc.dist.low), rounding="ceiling"))
            hi = min(THETA_MAX_MICRO, to_micro(float(loc.dist.high), rounding="floor"))
            out.append((lo, hi))
        return tuple(out)

    def solved(self) -> Mechanism:
        """The mechanism solved from the spec (on first use; later calls reuse it)."""
        with self._lock:
            if self._solved is None:
                self._solved = solve(self.market, self.mechanism)
            return self._solved

    def announcement_terms(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(fees, q) per location that the mechanism posts before anyone declares, in
        micro-units (fees rounded up); ((), ()) for a mechanism that posts none."""
        result = self.solved().result
        if result.fees is None or result.Q is None:
            return (), ()
        fees = tuple(_quantity(x, rounding="ceiling") for x in result.fees)
        q = tuple(_quantity(x) for x in result.Q)
        return fees, q

    def run(
        self,
        participants: Sequence[Participant],
        *,
        posted: tuple[Sequence[int], Sequence[int]] | None = None,
    ) -> Decision:
        """Allocate among ``participants``; a solver failure includes nobody (logged).

        ``posted``: the (fees, q) the epoch's announcement carried (default: this
        mechanism's own terms); see the module docstring for why they must match.
        """
        L = self.market.L
        people = sorted(participants, key=lambda p: (p.location, p.node_id))
        if not people:
            return Decision.empty(L, "no declarations")
        try:
            mech = self.solved()
            if posted is not None:
                announced = (tuple(posted[0]), tuple(posted[1]))
                if announced != self.announcement_terms():
                    raise ValueError("the announced terms differ from this coordinator's "
                                     "mechanism's; they cannot be honoured")
            out = mech.allocate(np.array([from_micro(p.theta) for p in people], dtype=float),
                                np.array([p.location for p in people], dtype=np.int64))
            if not (np.all(np.isfinite(out.Q)) and np.all(np.isfinite(out.payments))):
                raise ValueError("the mechanism returned a non-finite allocation")
            q = tuple(_quantity(x) for x in out.Q)
            owed = {p.node_id: _quantity(float(out.payments[i]), rounding="ceiling")
                    for i, p in enumerate(people) if bool(out.included[i])}
            result = out.result
            welfare = float(result.welfare)
            w = to_micro(welfare) if math.isfinite(welfare) else 0
            w = min(max(w, -MAX_WELFARE_MICRO), MAX_WELFARE_MICRO)
            status = str(result.status) if result.success else f"not converged: {result.status}"
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            log.error("mechanism %s failed for %d declarations: %s", self.mechanism,
                      len(people), exc)
            return Decision.empty(L, f"failed: {exc}")
        included = tuple(sorted(owed))
        return Decision(q=q, included=included, contributions=tuple(owed[n] for n in included),
                        expected_welfare=w, status=f"{len(people)} declarations: {status}")
