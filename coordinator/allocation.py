"""From declared types to the protocol's ``Allocation``: the bridge to the engine.

At the close of an epoch only the nodes that declared take part. Their counts per
location give the size vector; a location with no declarant gets Q = 0 and is left out
of the market (the engine needs n_l ≥ 1), so the solved market is the spec's market
restricted to the populated locations, with ``with_sizes(counts)``. The engine's
``allocate`` takes the types ordered by location then node id; its arrays are mapped
back to node ids and to the spec's location indices.

The posted-fee mechanism is the exception: its terms are posted before anyone declares
and are binding. The announcement carries the fees and Q*_l solved from the priors with
the spec's n per location (:meth:`MechanismRunner.announcement_terms`); at close the same
plan allocates, whatever the actual declarant counts: a node of location l is included
iff its θ ≥ θ*_l, owes exactly the announced fee of l, and Q_l is the announced Q*_l
(the announcement's integers, not a re-solve with the counts).

Solving is the expensive part (a second or more for several locations), so solved
mechanisms are cached by the size vector. :class:`MechanismRunner` is thread-safe: the
service calls :meth:`MechanismRunner.run` from a worker thread (``run_in_executor``).

Everything that leaves this module is integers in micro-units, built without clocks or
randomness, so identical declarations give an identical :class:`Outcome` and hence a
byte-identical signed allocation. Rounding: Q and welfare half-to-even, contributions
toward +∞ (what a node owes is never rounded down, README §1).

This module deliberately signs nothing and keeps no epoch state: see
:mod:`coordinator.epoch`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator.mechanism import Market, solve
from protocol import from_micro, to_micro
from protocol.encoding import Rounding
from protocol.messages import MAX_QUANTITY_MICRO, MAX_WELFARE_MICRO, THETA_MAX_MICRO

log = logging.getLogger(__name__)

#: Engine mechanism name -> the name the protocol puts on the wire.
WIRE_MECHANISM = {"posted_fee": "posted_fee", "second_best": "optimal"}
#: Engine mechanisms the coordinator can run (money or in kind comes from the spec).
ENGINE_MECHANISMS = tuple(WIRE_MECHANISM)


@dataclass(frozen=True, slots=True, kw_only=True)
class Participant:
    """A declarant at close: its id, key, home location and declared θ (micro-units)."""

    node_id: str
    public_key: str
    location: int
    theta: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The mechanism's decision in wire units (micro-units), ready to be signed."""

    q: tuple[int, ...]  # one per location of the spec's market
    included: tuple[str, ...]  # strictly increasing node ids
    contributions: tuple[int, ...]  # contributions[i] is owed by included[i]
    expected_welfare: int
    status: str  # the solver's words, for logs and /v1/status

    @classmethod
    def empty(cls, n_locations: int, status: str) -> Outcome:
        return cls(q=(0,) * n_locations, included=(), contributions=(), expected_welfare=0,
                   status=status)


def _quantity(x: float, *, rounding: Rounding = "half_even") -> int:
    micro = to_micro(float(x), rounding=rounding)
    return min(max(micro, 0), MAX_QUANTITY_MICRO)


class MechanismRunner:
    """A market spec plus an engine mechanism name; solves per size vector, cached."""

    def __init__(self, market: Market, mechanism: str, *, cache_size: int = 32) -> None:
        if mechanism not in WIRE_MECHANISM:
            raise ValueError(f"mechanism must be one of {ENGINE_MECHANISMS}, got {mechanism!r}")
        self.market = market
        self.mechanism = mechanism
        self._cache: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def wire_mechanism(self) -> str:
        return WIRE_MECHANISM[self.mechanism]

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

    def solved(self, sizes: Sequence[int]) -> Any:
        """The mechanism solved for ``sizes`` agents per location (zeros left out)."""
        key = tuple(int(k) for k in sizes)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        present = [l for l, k in enumerate(key) if k > 0]
        if not present:
            raise ValueError("no location has an agent")
        m = self.market
        sub = m.replace(
            locations=tuple(m.locations[l] for l in present),
            weights=m.weights[np.ix_(present, present)],
        ).with_sizes([key[l] for l in present])
        mech = solve(sub, self.mechanism)
        with self._lock:
            self._cache[key] = mech
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return mech

    def announcement_terms(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(fees, q) per location for the announcement: the posted fee solved from the
        priors with the spec's n per location; empty for the optimal mechanism."""
        if self.mechanism != "posted_fee":
            return (), ()
        result = self._posted().result
        fees = tuple(_quantity(x, rounding="ceiling") for x in result.fees)
        q = tuple(_quantity(x) for x in result.Q)
        return fees, q

    def _posted(self) -> Any:
        """The posted-fee mechanism solved with the spec's sizes (the announced plan)."""
        return self.solved([loc.n for loc in self.market.locations])

    def run(
        self,
        participants: Sequence[Participant],
        *,
        posted: tuple[Sequence[int], Sequence[int]] | None = None,
    ) -> Outcome:
        """Allocate among ``participants``; a solver failure includes nobody (logged).

        ``posted``: the (fees, q) the epoch's announcement carried (posted fee only;
        default: :meth:`announcement_terms`). They are binding: see the module docstring.
        """
        L = self.market.L
        people = sorted(participants, key=lambda p: (p.location, p.node_id))
        if not people:
            return Outcome.empty(L, "no declarations")
        if self.mechanism == "posted_fee":
            return self._run_posted(people, posted)
        counts = [0] * L
        for p in people:
            counts[p.location] += 1
        present = [l for l in range(L) if counts[l] > 0]
        try:
            mech = self.solved(counts)
            types = np.array([from_micro(p.theta) for p in people], dtype=float)
            alloc = mech.allocate(types)
            result = mech.result
            q_sub = [float(x) for x in alloc.Q]
            if not all(math.isfinite(x) for x in q_sub) or not np.all(
                np.isfinite(alloc.payments)
            ):
                raise ValueError("the mechanism returned a non-finite allocation")
            q = [0] * L
            for j, l in enumerate(present):
                q[l] = _quantity(q_sub[j])
            owed = {
                p.node_id: _quantity(float(alloc.payments[i]), rounding="ceiling")
                for i, p in enumerate(people)
                if bool(alloc.included[i])
            }
            welfare = float(result.welfare)
            w = to_micro(welfare) if math.isfinite(welfare) else 0
            w = min(max(w, -MAX_WELFARE_MICRO), MAX_WELFARE_MICRO)
            status = str(result.status) if result.success else f"not converged: {result.status}"
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            log.error("mechanism %s failed for sizes %s: %s", self.mechanism, counts, exc)
            return Outcome.empty(L, f"failed: {exc}")
        return _outcome(q, owed, w, status)

    def _run_posted(
        self, people: Sequence[Participant], posted: tuple[Sequence[int], Sequence[int]] | None
    ) -> Outcome:
        """The announced plan applied to the declared types (θ ≥ θ*_l, fixed fee, Q*)."""
        L = self.market.L
        try:
            mech = self._posted()
            own = self.announcement_terms()
            fees, q = (tuple(posted[0]), tuple(posted[1])) if posted is not None else own
            if len(fees) != L or len(q) != L:
                raise ValueError(f"posted terms for {len(fees)} locations, market has {L}")
            if (fees, q) != own:
                log.error("the announced posted-fee terms differ from this spec's; the "
                          "announced ones are binding")
            result = mech.result
            thresholds = [float(x) for x in result.thresholds]
            if not all(math.isfinite(x) for x in thresholds):
                raise ValueError("the posted-fee plan has non-finite thresholds")
            welfare = float(result.welfare)
            w = to_micro(welfare) if math.isfinite(welfare) else 0
            w = min(max(w, -MAX_WELFARE_MICRO), MAX_WELFARE_MICRO)
            status = str(result.status) if result.success else f"not converged: {result.status}"
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            log.error("posted-fee plan unavailable: %s", exc)
            return Outcome.empty(L, f"failed: {exc}")
        owed = {p.node_id: fees[p.location] for p in people
                if from_micro(p.theta) >= thresholds[p.location]}
        status = f"posted terms ({len(people)} declarations): {status}"
        return _outcome(list(q), owed, w, status)


def _outcome(q: Sequence[int], owed: dict[str, int], welfare: int, status: str) -> Outcome:
    included = tuple(sorted(owed))
    return Outcome(
        q=tuple(q),
        included=included,
        contributions=tuple(owed[n] for n in included),
        expected_welfare=welfare,
        status=status,
    )
