"""The records between the epoch core and the mechanism, free of numpy.

:mod:`coordinator.epoch` hands the declarants of a closing epoch (:class:`Participant`)
to a function that runs the mechanism (:class:`coordinator.allocation.MechanismRunner`)
and signs the :class:`Decision` it returns. Keeping these records here, and the engine
behind that function, is what lets ``import coordinator.epoch`` load neither numpy nor
scipy (a test holds it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Participant:
    """A declarant at close: its id, key, home location and declared θ (micro-units)."""

    node_id: str
    public_key: str
    location: int
    theta: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The mechanism's outcome in wire units (micro-units), ready to be signed as the
    epoch's ``Allocation`` message."""

    q: tuple[int, ...]  # one per location of the spec's market
    included: tuple[str, ...]  # strictly increasing node ids
    contributions: tuple[int, ...]  # contributions[i] is owed by included[i]
    expected_welfare: int
    status: str  # the solver's words, for logs and /v1/status

    @classmethod
    def empty(cls, n_locations: int, status: str) -> Decision:
        """Nobody included, nothing built."""
        return cls(q=(0,) * n_locations, included=(), contributions=(), expected_welfare=0,
                   status=status)
