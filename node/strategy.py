"""A node's strategy: what θ it declares and whether it delivers its contribution.

* :class:`Truthful` (the default): declares its true θ, opens and commits what it owes
  and serves every included roamer within that capacity.
* :class:`Misreport`: declares ``factor · θ`` or a fixed value instead (clamped to
  [0, 1]); behaves honestly as a host. The mechanism is incentive compatible, so this
  should not pay; the testbed measures it.
* :class:`FreeRide`: declares truthfully but, as a host, opens nothing, so its gate
  refuses every roamer (``capacity_exhausted``). With ``commit=True`` it still sends the
  signed commitment of what it owes (a lie the audit must catch); without, it sends none.
  It keeps roaming on other hosts.

Strategies are pure values; :func:`parse_strategy` reads the CLI spelling
(``truthful``, ``misreport:F``, ``misreport:=V``, ``free-ride``, ``free-ride:commit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from protocol import MICRO
from protocol.errors import OutOfRangeError

THETA_MAX = MICRO  # θ ∈ [0, 1] in micro-units


def _clamp(theta: int) -> int:
    return max(0, min(THETA_MAX, theta))


@dataclass(frozen=True, slots=True, kw_only=True)
class Truthful:
    name: str = "truthful"
    opens_contribution: bool = True
    commits: bool = True

    def declare(self, theta: int) -> int:
        """The θ to declare (micro-units) given the true θ."""
        return _clamp(theta)


@dataclass(frozen=True, slots=True, kw_only=True)
class Misreport:
    """Declare ``floor(factor · θ)`` or, if ``value`` is set, ``value``; clamped to [0, 1]."""

    factor: Fraction = Fraction(1)
    value: int | None = None
    name: str = "misreport"
    opens_contribution: bool = True
    commits: bool = True

    def __post_init__(self) -> None:
        if self.factor < 0:
            raise OutOfRangeError("a misreport factor is not negative")
        if self.value is not None and not 0 <= self.value <= THETA_MAX:
            raise OutOfRangeError("a fixed misreport lies in [0, 1]")

    def declare(self, theta: int) -> int:
        if self.value is not None:
            return self.value
        return _clamp(int(self.factor * theta))  # int() of a positive Fraction is floor


@dataclass(frozen=True, slots=True, kw_only=True)
class FreeRide:
    """Truthful declaration, no contribution opened; ``commit`` sends a false commitment."""

    commit: bool = False
    name: str = "free-ride"
    opens_contribution: bool = False

    @property
    def commits(self) -> bool:
        return self.commit

    def declare(self, theta: int) -> int:
        return _clamp(theta)


Strategy = Truthful | Misreport | FreeRide


def parse_strategy(text: str) -> Strategy:
    """``truthful`` | ``misreport:F`` (factor) | ``misreport:=V`` (fixed θ in [0, 1]) |
    ``free-ride`` | ``free-ride:commit``."""
    head, _, arg = text.strip().partition(":")
    if head == "truthful" and not arg:
        return Truthful()
    if head == "free-ride" and arg in ("", "commit"):
        return FreeRide(commit=arg == "commit")
    if head == "misreport" and arg:
        try:
            if arg.startswith("="):
                fixed = Fraction(arg[1:])
                return Misreport(value=int(fixed * MICRO))
            return Misreport(factor=Fraction(arg))
        except (ValueError, ZeroDivisionError):
            raise OutOfRangeError(f"bad misreport argument {arg!r:.40}") from None
    raise OutOfRangeError(
        f"unknown strategy {text!r:.40}: use truthful, misreport:F, misreport:=V, "
        "free-ride or free-ride:commit"
    )
