"""A node's side of each resource kind: capacity accounting and how a roamer asks.

The kinds' wire facts (name, unit, endpoint, shares) are :mod:`protocol.kinds`;
:data:`NODE_KINDS` adds, for each of them, the accounting class of a grant and the amount a
roamer asks by default (:class:`NodeKind`). The host, the service, the agent and the CLI
read these two registries and compare no kind names.

Units (DESIGN "resource-kind table"; every amount is an integer in micro-units, as on the
wire):

* ``wlan_coverage``: coverage cells opened to roamers (1 cell = 1 000 000); a grant of
  ``amount`` consumes it for the rest of the epoch.
* ``wlan_channels``: simultaneous roaming channels (1 channel = 1 000 000); a grant holds
  ``amount`` (whole channels) for one session and releases it when the session ends.
* ``files``: bytes served, 1 micro-unit = 1 byte (so 1 unit = 1 MB); a download costs the
  file's size in bytes (at least 1).
* ``compute``: compute units (1 unit = :data:`ITERATIONS_PER_UNIT` hash iterations); a
  grant consumes ``amount``, and a requester's jobs on one host add up to at most the
  share it bought (its contribution mapped through the :class:`Tariff`).

Opening a new epoch's contribution resets the usage (sessions included): capacity is owed
per epoch.

These are pure classes: no clock (time is the argument ``now``, integer Unix seconds), no
I/O. The gate (:mod:`node.gate`) decides from a snapshot of :meth:`Resource.remaining`;
:meth:`Resource.consume` applies a grant and re-checks, so capacity can never go
negative even if a caller skipped the gate. Serving the bytes of a file is
:mod:`node.files`; running a job is :func:`hash_job`.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from types import MappingProxyType
from typing import ClassVar

from protocol import MICRO, kinds
from protocol.errors import CapacityExhaustedError, OutOfRangeError
from protocol.kinds import ResourceKind

#: Hash iterations one compute unit (1 000 000 micro-units) buys.
ITERATIONS_PER_UNIT = 20_000
#: Upper bound of one job's iterations (about a second of CPU), whatever was bought.
MAX_JOB_ITERATIONS = 2_000_000


class Resource:
    """Common accounting: ``opened`` micro-units for the epoch, what is in use, counts."""

    KIND: ClassVar[str] = ""
    #: Amounts must be multiples of this (one WLAN channel is 1 000 000).
    UNIT: ClassVar[int] = 1

    def __init__(self) -> None:
        self.opened = 0
        self.granted_total = 0  # micro-units granted this epoch (sessions included)
        self.grants = 0

    def open(self, amount: int, *, now: int) -> None:
        """Open ``amount`` micro-units for a new epoch, forgetting the previous usage."""
        if amount < 0:
            raise OutOfRangeError("cannot open a negative contribution")
        self.opened = amount - amount % self.UNIT
        self.granted_total = 0
        self.grants = 0
        self._reset()

    def remaining(self, now: int) -> int:
        """Micro-units still available at ``now``."""
        return max(0, self.opened - self.in_use(now))

    def in_use(self, now: int) -> int:
        return self.granted_total

    def consume(self, amount: int, *, now: int, requester: str) -> None:
        """Apply a grant of ``amount``; raise ``capacity_exhausted`` (and change nothing)
        if it does not fit."""
        if amount <= 0 or amount % self.UNIT:
            raise OutOfRangeError(f"amount must be a positive multiple of {self.UNIT}")
        if amount > self.remaining(now):
            raise CapacityExhaustedError(f"{amount} exceeds remaining {self.remaining(now)}")
        self._hold(amount, now=now, requester=requester)
        self.granted_total += amount
        self.grants += 1

    def _reset(self) -> None:
        pass

    def _hold(self, amount: int, *, now: int, requester: str) -> None:
        pass


class CoverageResource(Resource):
    """WLAN coverage: cells opened to roamers; a grant uses ``amount`` for the epoch."""

    KIND = kinds.WLAN_COVERAGE.name


class ChannelResource(Resource):
    """WLAN channels: simultaneous channels; a grant holds whole channels for a session.

    A session granted at ``now`` ends at ``now + session_seconds`` and its channels are
    free again from then on (``remaining`` counts only sessions with ``end > now``).
    """

    KIND = kinds.WLAN_CHANNELS.name
    UNIT = kinds.WLAN_CHANNELS.granularity

    def __init__(self, *, session_seconds: int) -> None:
        if session_seconds < 1:
            raise OutOfRangeError("session_seconds must be at least 1")
        self.session_seconds = session_seconds
        self._ends: list[int] = []  # sorted session end times
        self._amounts: list[int] = []  # channels held, parallel to _ends
        super().__init__()

    def _reset(self) -> None:
        self._ends.clear()
        self._amounts.clear()

    def in_use(self, now: int) -> int:
        self._prune(now)
        return sum(self._amounts)

    def sessions(self, now: int) -> int:
        self._prune(now)
        return len(self._ends)

    def _prune(self, now: int) -> None:
        cut = bisect_right(self._ends, now)  # sessions ending at or before now are over
        if cut:
            del self._ends[:cut]
            del self._amounts[:cut]

    def _hold(self, amount: int, *, now: int, requester: str) -> None:
        end = now + self.session_seconds
        i = bisect_right(self._ends, end)
        self._ends.insert(i, end)
        self._amounts.insert(i, amount)


class FilesResource(Resource):
    """Files: a budget of bytes served per epoch (1 micro-unit = 1 byte)."""

    KIND = kinds.FILES.name


class ComputeResource(Resource):
    """Compute units; each requester's jobs are also limited to the share it bought."""

    KIND = kinds.COMPUTE.name

    def __init__(self) -> None:
        self._used_by: dict[str, int] = {}
        super().__init__()

    def _reset(self) -> None:
        self._used_by.clear()

    def used_by(self) -> Mapping[str, int]:
        """Read-only view of what each requester used this epoch."""
        return MappingProxyType(self._used_by)

    def _hold(self, amount: int, *, now: int, requester: str) -> None:
        self._used_by[requester] = self._used_by.get(requester, 0) + amount


@dataclass(frozen=True, slots=True, kw_only=True)
class Ask:
    """What a roamer asks one host for: ``item`` (in the endpoint's path; a file's hash,
    else ``""``), the request's ``resource`` field and ``amount`` (micro-units)."""

    item: str = ""
    resource: str | None
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeKind:
    """A resource kind's node-side behaviour, beside its wire facts (``wire``).

    * ``accounting(session_seconds)``: a fresh :class:`Resource` accounting its grants;
    * ``default_amount(roam_amount, share)``: what a roamer asks when the caller names no
      amount (``share``: what its own contribution bought, for kinds with shares). An
      itemised kind asks the item's cost instead (a file's size).
    """

    wire: ResourceKind
    accounting: Callable[[int], Resource]
    default_amount: Callable[[int, int], int]

    @property
    def name(self) -> str:
        return self.wire.name

    def ask(self, *, amount: int | None, roam_amount: int, share: int,
            item: str = "", cost: int | None = None) -> Ask:
        """The ask for ``item`` (itemised kinds: ``cost`` is its price, micro-units)."""
        if not self.wire.itemised:
            item = ""
            if amount is None:
                amount = self.default_amount(roam_amount, share)
        elif cost is None:
            raise OutOfRangeError(f"{self.name}: an ask names an item and its cost")
        else:
            amount = max(1, cost)
        return Ask(item=item, resource=self.wire.resource_of(item), amount=amount)


#: Node-side behaviour of every kind in :data:`protocol.kinds.KINDS`, by name.
NODE_KINDS: Mapping[str, NodeKind] = MappingProxyType({
    kinds.WLAN_COVERAGE.name: NodeKind(
        wire=kinds.WLAN_COVERAGE,
        accounting=lambda _session: CoverageResource(),
        default_amount=lambda roam, _share: roam,
    ),
    kinds.WLAN_CHANNELS.name: NodeKind(
        wire=kinds.WLAN_CHANNELS,
        accounting=lambda session: ChannelResource(session_seconds=session),
        default_amount=lambda _roam, _share: kinds.WLAN_CHANNELS.granularity,  # one channel
    ),
    kinds.FILES.name: NodeKind(
        wire=kinds.FILES,
        accounting=lambda _session: FilesResource(),
        default_amount=lambda roam, _share: roam,  # unused: a download costs the file's size
    ),
    kinds.COMPUTE.name: NodeKind(
        wire=kinds.COMPUTE,
        accounting=lambda _session: ComputeResource(),
        # never more than the share its own contribution bought (else out_of_range)
        default_amount=lambda roam, share: max(1, min(roam, share)),
    ),
})


def node_kind(name: str) -> NodeKind:
    """The node-side behaviour of kind ``name``; ``out_of_range`` for an unknown name."""
    kinds.kind_of(name)
    return NODE_KINDS[name]


def make_resource(kind: str, *, session_seconds: int = 60) -> Resource:
    """The accounting of ``kind`` (``out_of_range`` for an unknown kind)."""
    return node_kind(kind).accounting(session_seconds)


class Tariff:
    """A compute tariff menu as points ``(p, y)``: contributing ``p`` buys a share ``y``.

    The grid-computing mechanism (``coordinator/mechanism/grid.py``) offers a menu
    ``{p(a), y(a)}``, i.e. a nondecreasing curve y(p); a node takes it as points and
    interpolates linearly between them (flat beyond the last). Both in micro-units. The
    default is the identity ``y = p``: one unit of compute used per unit contributed.
    """

    __slots__ = ("_points",)

    def __init__(self, points: Sequence[tuple[int, int]] | None = None) -> None:
        pts = sorted(points) if points else [(0, 0), (MICRO, MICRO)]
        if pts[0][0] != 0:
            pts.insert(0, (0, 0))
        for (p0, y0), (p1, y1) in zip(pts, pts[1:], strict=False):
            if p1 <= p0 or y1 < y0:
                raise OutOfRangeError("a tariff needs increasing p and nondecreasing y")
        if any(y < 0 for _, y in pts):
            raise OutOfRangeError("a tariff's shares are not negative")
        self._points = tuple(pts)

    @property
    def is_identity(self) -> bool:
        return self._points == ((0, 0), (MICRO, MICRO))

    def share(self, p: int) -> int:
        """The share bought by contributing ``p`` (floor: a node never gets more)."""
        if self.is_identity:
            return p
        pts = self._points
        if p >= pts[-1][0]:
            return pts[-1][1]
        i = bisect_right([q for q, _ in pts], p) - 1
        (p0, y0), (p1, y1) = pts[i], pts[i + 1]
        return y0 + (y1 - y0) * (p - p0) // (p1 - p0)

    @classmethod
    def parse(cls, text: str) -> Tariff:
        """``"p:y,p:y,..."`` in units (decimals allowed), e.g. ``"0:0,1:2,4:4"``."""
        points: list[tuple[int, int]] = []
        for item in text.split(","):
            p, sep, y = item.strip().partition(":")
            if not sep:
                raise OutOfRangeError(f"tariff point {item!r} is not p:y")
            points.append((parse_micro(p), parse_micro(y)))
        return cls(points)


def parse_micro(text: str, *, low: int = 0, high: int = 10**15) -> int:
    """A decimal quantity in units (``"2.5"``) to micro-units, exactly (floor), in range."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise OutOfRangeError(f"{text!r:.40} is not a decimal number") from None
    if not value.is_finite():
        raise OutOfRangeError(f"{text!r:.40} is not finite")
    micro = int((value * MICRO).to_integral_value(rounding=ROUND_FLOOR))
    if not low <= micro <= high:
        raise OutOfRangeError(f"{text!r:.40} is outside [{low / MICRO}, {high / MICRO}] units")
    return micro


def job_iterations(amount: int, *, per_unit: int = ITERATIONS_PER_UNIT) -> int:
    """Iterations a job of ``amount`` micro-units runs: ``ceil(amount·k / 10^6)``, bounded."""
    return min(MAX_JOB_ITERATIONS, max(1, -(-amount * per_unit // MICRO)))


def hash_job(amount: int, *, seed: bytes, per_unit: int = ITERATIONS_PER_UNIT) -> str:
    """A small real CPU job: iterate SHA-256 over ``seed`` ``job_iterations(amount)`` times.

    Deterministic, so a requester can check a result by recomputing it; bounded by
    :data:`MAX_JOB_ITERATIONS`.
    """
    digest = hashlib.sha256(seed).digest()
    for _ in range(job_iterations(amount, per_unit=per_unit) - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()
