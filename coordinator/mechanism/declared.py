"""The declarants that came: validated (θ, location) pairs and re-solving for their counts.

Every mechanism's ``allocate(types, locations)`` (:class:`~.result.Mechanism`) takes the
declarants that actually came, any number per location. Posted rules (the posted fee, the
slides' equal-contribution schemes) apply their posted terms to whoever came. A mechanism
whose rule depends on the number of agents (the optimal mechanism and its variants) is
the spec's mechanism restricted to the populated locations and solved for the actual
counts (``Market.with_sizes``), as the paper's mechanism is defined for the n agents that
take part; :class:`Resolver` keeps those solutions, since solving takes a second or more.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from .market import Market
from .result import Mechanism, MechanismResult, Outcome

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def declarants(market: Market, types: npt.ArrayLike,
               locations: npt.ArrayLike | None) -> tuple[FloatArray, IntArray]:
    """(θ, location) per declarant, validated against the spec.

    ``locations=None``: ``types`` is the spec's whole population in location order
    (:meth:`Market.split_types`). Otherwise both are 1-D of equal length, locations are
    integers in [0, L) and each θ is finite and inside its location's support.
    Raises ValueError otherwise.
    """
    if locations is None:
        return market.split_types(types), market.agent_locations()
    t = np.asarray(types, dtype=float)
    raw = np.asarray(locations)
    if t.ndim != 1 or raw.shape != t.shape:
        raise ValueError(f"types {t.shape} and locations {raw.shape} must be 1-D of equal "
                         "length")
    if raw.size and (raw.dtype.kind not in "iu" or raw.min() < 0 or raw.max() >= market.L):
        raise ValueError(f"locations must be integers in [0, {market.L})")
    loc = raw.astype(np.int64)
    if not np.all(np.isfinite(t)):
        raise ValueError("declared types must be finite")
    lows = np.array([x.dist.low for x in market.locations])[loc]
    highs = np.array([x.dist.high for x in market.locations])[loc]
    if np.any(t < lows) or np.any(t > highs):
        raise ValueError("a declared type lies outside its location's type support")
    return t, loc


def one_location(types: npt.ArrayLike, locations: npt.ArrayLike | None, n: int,
                 low: float, high: float) -> FloatArray:
    """θ of the declarants of a one-location scheme (slides): exactly ``n`` types when
    ``locations`` is None, otherwise any number, every location 0. ValueError if not."""
    t = np.asarray(types, dtype=float)
    if t.ndim != 1:
        raise ValueError(f"types must be 1-D, got shape {t.shape}")
    if locations is None:
        if t.shape[0] != n:
            raise ValueError(f"expected {n} declared types, got {t.shape[0]}")
    else:
        loc = np.asarray(locations)
        if loc.shape != t.shape or (loc.size and (loc.dtype.kind not in "iu" or np.any(loc != 0))):
            raise ValueError("a one-location scheme takes locations that are all 0, one per "
                             "type")
    if not np.all(np.isfinite(t)) or np.any(t < low) or np.any(t > high):
        raise ValueError(f"declared types must be finite and in [{low}, {high}]")
    return t


class Resolver:
    """Allocation by a mechanism re-solved for the declarants' counts per location.

    ``build`` solves the mechanism for a market; solutions are kept per count vector
    (least recently used first out, ``cache_size`` of them). Thread-safe: the coordinator
    allocates from a worker thread.
    """

    def __init__(self, build: Callable[[Market], Mechanism], cache_size: int = 32) -> None:
        self._build = build
        self._cache: OrderedDict[tuple[int, ...], Mechanism] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def solved(self, market: Market, counts: tuple[int, ...]) -> Mechanism:
        """The mechanism for ``counts`` agents per location of ``market`` (zeros left out)."""
        with self._lock:
            if counts in self._cache:
                self._cache.move_to_end(counts)
                return self._cache[counts]
        present = [l for l, k in enumerate(counts) if k > 0]
        sub = market.replace(
            locations=tuple(market.locations[l] for l in present),
            weights=market.weights[np.ix_(present, present)],
        ).with_sizes([counts[l] for l in present])
        mech = self._build(sub)
        with self._lock:
            self._cache[counts] = mech
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return mech

    def cached(self) -> tuple[tuple[int, ...], ...]:
        """The count vectors solved so far (oldest first)."""
        with self._lock:
            return tuple(self._cache)

    def allocate(self, market: Market, own: MechanismResult, types: npt.ArrayLike,
                 locations: npt.ArrayLike | None,
                 fixed: Callable[[FloatArray], Outcome]) -> Outcome:
        """:meth:`~.result.Mechanism.allocate` for a count-dependent mechanism.

        ``fixed`` allocates the spec's own population (types in location order); it is
        used when the declarants' counts are the spec's, otherwise the mechanism solved
        for the counts allocates. Nobody declared: nothing is built, ``own`` reported.
        """
        if locations is None:
            return fixed(market.split_types(types))
        theta, loc = declarants(market, types, locations)
        counts = np.bincount(loc, minlength=market.L)
        order = np.argsort(loc, kind="stable")
        present = np.flatnonzero(counts)
        if present.size == 0:
            zeros = np.zeros(market.L)
            return Outcome(included=np.zeros(0, dtype=bool), Q=zeros, payments=np.zeros(0),
                           location=loc, cost=zeros.copy(), result=own)
        if np.array_equal(counts, market.sizes):
            out = fixed(theta[order])
            Q, cost = out.Q, out.cost
        else:
            out = self.solved(market, tuple(int(k) for k in counts)).allocate(theta[order])
            Q, cost = np.zeros(market.L), np.zeros(market.L)
            Q[present], cost[present] = out.Q, out.cost
        included = np.empty(theta.shape, dtype=bool)
        payments = np.empty(theta.shape)
        included[order], payments[order] = out.included, out.payments
        return Outcome(included=included, Q=Q, payments=payments, location=loc, cost=cost,
                       result=out.result)
