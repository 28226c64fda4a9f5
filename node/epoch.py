"""The node's epoch, sans-I/O: a state machine and the pure decisions it needs.

One node goes through each epoch as DESIGN "One epoch, end to end" says, from its side:
register once, then per epoch declare, fetch the allocation (and its credential and the
directory, only if it roams) once the epoch is closed, provide (open its contribution,
commit), roam, and
report the signed receipts and refusals. :class:`EpochMachine` holds where the node is;
it does no I/O and reads no clock (``now`` is an argument, integer Unix seconds). A pump
(:class:`node.agent.Agent`) asks it for the next :class:`Action`, does the I/O and feeds
the outcome back as an event; the transition table :data:`TRANSITIONS` says which event
may happen in which phase, and anything missing from it raises :class:`EpochStateError`
(as ``coordinator/epoch.py``'s table and h11's ``_state.py``).

Phases (of the node; each epoch's record keeps the last one it reached):

* ``unregistered``: nothing sent yet;
* ``idle``: registered, no epoch announced yet;
* ``open``: an epoch is announced and this node has not declared;
* ``closing``: declared (or refused, or past the deadline): waiting for the close;
* ``provided``: the outcome fetched and the contribution opened (and committed);
* ``roamed``: the roaming for this epoch is done;
* ``reported``: the audit report is sent; the node waits for a newer epoch.

Events: ``registered``; ``announced`` (a newer epoch; from ``closing`` too, when this
node missed the close of the one it was in); ``declared``; ``declaration_refused``;
``not_closed`` (the allocation is not published yet); ``provided``; ``roamed``;
``reported``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from node.client import AccessAnswer, Directory, DirectoryEntry
from node.strategy import Strategy
from protocol import Allocation, Envelope, EpochAnnouncement


class EpochStateError(RuntimeError):
    """An event the transition table does not allow in the current phase (a bug in the
    pump, never a peer's fault)."""


class Phase(enum.StrEnum):
    UNREGISTERED = "unregistered"
    IDLE = "idle"
    OPEN = "open"
    CLOSING = "closing"
    PROVIDED = "provided"
    ROAMED = "roamed"
    REPORTED = "reported"


class Event(enum.StrEnum):
    REGISTERED = "registered"
    ANNOUNCED = "announced"
    DECLARED = "declared"
    DECLARATION_REFUSED = "declaration_refused"
    NOT_CLOSED = "not_closed"
    PROVIDED = "provided"
    ROAMED = "roamed"
    REPORTED = "reported"


class Action(enum.StrEnum):
    """What the pump should do next."""

    REGISTER = "register"
    POLL = "poll"  # fetch the announcement: is a newer epoch open?
    DECLARE = "declare"
    PROVIDE = "provide"  # fetch the outcome; if closed, open the contribution and commit
    ROAM = "roam"
    REPORT = "report"


#: (phase, event) -> next phase. Nothing else is allowed.
TRANSITIONS: Mapping[tuple[Phase, Event], Phase] = {
    (Phase.UNREGISTERED, Event.REGISTERED): Phase.IDLE,
    (Phase.IDLE, Event.ANNOUNCED): Phase.OPEN,
    (Phase.OPEN, Event.DECLARED): Phase.CLOSING,
    (Phase.OPEN, Event.DECLARATION_REFUSED): Phase.CLOSING,
    # past the deadline without declaring: straight to the outcome
    (Phase.OPEN, Event.NOT_CLOSED): Phase.CLOSING,
    (Phase.OPEN, Event.PROVIDED): Phase.PROVIDED,
    (Phase.CLOSING, Event.NOT_CLOSED): Phase.CLOSING,
    (Phase.CLOSING, Event.ANNOUNCED): Phase.OPEN,  # missed the close: on to the newer one
    (Phase.CLOSING, Event.PROVIDED): Phase.PROVIDED,
    (Phase.PROVIDED, Event.ROAMED): Phase.ROAMED,
    (Phase.ROAMED, Event.REPORTED): Phase.REPORTED,
    (Phase.REPORTED, Event.ANNOUNCED): Phase.OPEN,
}

#: The action due in each phase (``open`` past its deadline: :data:`Action.PROVIDE`).
_ACTIONS: Mapping[Phase, Action] = {
    Phase.UNREGISTERED: Action.REGISTER,
    Phase.IDLE: Action.POLL,
    Phase.OPEN: Action.DECLARE,
    Phase.CLOSING: Action.PROVIDE,
    Phase.PROVIDED: Action.ROAM,
    Phase.ROAMED: Action.REPORT,
    Phase.REPORTED: Action.POLL,
}


def step(phase: Phase, event: Event) -> Phase:
    """The phase after ``event``; :class:`EpochStateError` if the table has no entry."""
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise EpochStateError(f"event {event} is not allowed in phase {phase}") from None


@dataclass(slots=True, kw_only=True)
class EpochProgress:
    """What the node did in one epoch (quantities in micro-units)."""

    epoch: int
    announcement: EpochAnnouncement
    phase: Phase = Phase.OPEN
    declared_theta: int | None = None
    declaration_refused: str | None = None  # the coordinator's code, if it refused
    allocation: Allocation | None = None
    credential: Envelope | None = None
    directory: Directory | None = None
    owed: int | None = None  # None: not included
    opened: int = 0
    committed: bool = False
    answers: list[AccessAnswer] = field(default_factory=list)

    @property
    def provided(self) -> bool:
        return self.phase in (Phase.PROVIDED, Phase.ROAMED, Phase.REPORTED)

    @property
    def roamed(self) -> bool:
        return self.phase in (Phase.ROAMED, Phase.REPORTED)

    @property
    def reported(self) -> bool:
        return self.phase is Phase.REPORTED

    @property
    def evidence(self) -> list[Envelope]:
        """The host-signed receipts and refusals collected (what the report carries)."""
        return [a.evidence for a in self.answers if a.evidence is not None]


class EpochMachine:
    """Where one node is in its epochs. Pure: events in, phases out; no I/O, no clock."""

    def __init__(self) -> None:
        self.registered = False
        self.current: EpochProgress | None = None
        self.history: dict[int, EpochProgress] = {}

    @property
    def phase(self) -> Phase:
        if not self.registered:
            return Phase.UNREGISTERED
        return Phase.IDLE if self.current is None else self.current.phase

    def next_action(self, now: int) -> Action:
        """The action due at ``now``. In ``open`` past the deadline the declaration is
        skipped (the coordinator would refuse it) and the outcome is due."""
        phase = self.phase
        cur = self.current
        if phase is Phase.OPEN and cur is not None and now >= cur.announcement.deadline:
            return Action.PROVIDE
        return _ACTIONS[phase]

    def _event(self, event: Event) -> None:
        phase = step(self.phase, event)
        if event is Event.REGISTERED:
            self.registered = True
        elif self.current is not None:
            self.current.phase = phase

    # --- events -------------------------------------------------------------------------

    def on_registered(self) -> None:
        self._event(Event.REGISTERED)

    def is_newer(self, ann: EpochAnnouncement) -> bool:
        """Whether ``ann`` opens an epoch newer than the current one (never roll back)."""
        return self.current is None or ann.epoch > self.current.epoch

    def on_announced(self, ann: EpochAnnouncement) -> EpochProgress:
        """A newer epoch is open: start its record (older or equal ones are refused)."""
        if not self.is_newer(ann):
            raise EpochStateError(f"epoch {ann.epoch} is not newer than the current one")
        step(self.phase, Event.ANNOUNCED)
        self.current = self.history.setdefault(
            ann.epoch, EpochProgress(epoch=ann.epoch, announcement=ann))
        self.current.phase = Phase.OPEN
        return self.current

    def on_declared(self, theta: int) -> None:
        self._progress().declared_theta = theta
        self._event(Event.DECLARED)

    def on_declaration_refused(self, code: str) -> None:
        self._progress().declaration_refused = code
        self._event(Event.DECLARATION_REFUSED)

    def on_not_closed(self) -> None:
        self._event(Event.NOT_CLOSED)

    def on_outcome(
        self, allocation: Allocation, *, node_id: str, credential: Envelope | None
    ) -> EpochProgress:
        """Keep the epoch's outcome (no transition: providing is what moves on)."""
        progress = self._progress()
        if self.phase not in (Phase.OPEN, Phase.CLOSING):
            raise EpochStateError(f"an outcome is not expected in phase {self.phase}")
        if allocation.epoch != progress.epoch:
            raise EpochStateError(f"outcome of epoch {allocation.epoch} in {progress.epoch}")
        progress.allocation = allocation
        # Contribution plus any restitution debt: what the audit judges (README "Graded
        # exclusion"), so an honest node readmitted after an offence repays it.
        progress.owed = allocation.owed_of(node_id)
        progress.credential = credential
        return progress

    def on_directory(self, directory: Directory) -> None:
        """Keep the closed epoch's directory (fetched when roaming first needs it)."""
        progress = self._progress()
        if progress.allocation is None or directory.epoch != progress.epoch:
            raise EpochStateError(f"a directory of epoch {directory.epoch} is not expected")
        progress.directory = directory

    def on_provided(self, *, opened: int, committed: bool) -> None:
        progress = self._progress()
        if progress.allocation is None:
            raise EpochStateError("provided before the outcome is known")
        progress.opened = opened
        progress.committed = committed
        self._event(Event.PROVIDED)

    def on_roamed(self, answers: Sequence[AccessAnswer]) -> None:
        self._progress().answers.extend(answers)
        self._event(Event.ROAMED)

    def on_reported(self) -> None:
        self._event(Event.REPORTED)

    def _progress(self) -> EpochProgress:
        if self.current is None:
            raise EpochStateError("no epoch announced yet")
        return self.current


# --- pure decisions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Provision:
    """What a node opens on its host and what it claims in its commitment (micro-units);
    ``claimed`` None: no commitment is sent."""

    opened: int
    claimed: int | None


def provision(
    *, owed: int | None, payment: str, capacity: int, unit: int, strategy: Strategy
) -> Provision:
    """How much to open and to commit.

    In kind, what the allocation says the node owes, rounded up to whole ``unit`` (a
    channel) and capped by its registered capacity; with money, the full capacity; nothing
    when not included (``owed`` None); always a whole number of ``unit`` (what the host
    can open). A free-rider opens nothing; one that commits claims what it owes, capped by
    its capacity (a lie the audit catches).
    """
    whole = capacity - capacity % unit
    if owed is None:
        opened = 0
    elif payment == "in_kind":
        opened = min(-(-owed // unit) * unit, whole)
    else:
        opened = whole
    if not strategy.opens_contribution:
        opened = 0
    if owed is None or not strategy.commits:
        return Provision(opened=opened, claimed=None)
    claimed = opened if strategy.opens_contribution else min(owed, capacity)
    return Provision(opened=opened, claimed=claimed)


def roam_hosts(directory: Directory, *, node_id: str, home: int) -> list[DirectoryEntry]:
    """The hosts a roamer may visit: others', with an endpoint, outside its home location."""
    return [
        n for n in directory.nodes
        if n.endpoint and n.node_id != node_id and n.location != home
    ]


def roam_locations(
    hosts: Sequence[DirectoryEntry],
    *,
    script: Sequence[int] | None,
    moves: int,
    rng: random.Random,
) -> list[int]:
    """Where to go: the script if there is one, else ``moves`` random locations that have
    a host in ``hosts``."""
    if script is not None:
        return list(script)
    choices = sorted({n.location for n in hosts})
    return [rng.choice(choices) for _ in range(moves if choices else 0)]
