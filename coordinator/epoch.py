"""The coordinator's epoch state machine: pure, sans-I/O, time passed in as ``now``.

Phases and the transition table (:data:`TRANSITIONS`; a (phase, event) pair missing from
it is refused with ``wrong_phase`` unless a more precise protocol code applies)::

    idle --open--> open(e) --begin_close--> closing(e) --finish_close--> closed(e)
                      ^                          |                          |
                      +-------abort_close--------+        open: e + 1 ------+

Registrations are accepted in every phase; declarations only in ``open(e)`` while
``now < deadline``; commitments and audit reports for the last closed epoch while
``closed(e)`` and during ``open(e + 1)``. ``begin_close`` of epoch e + 1 is the audit
cut-off of epoch e: enforcement (:mod:`coordinator.enforcement`) runs then, and the free
riders it finds take no part in epoch e + 1 nor in the further epochs their graded
exclusion lasts (:mod:`coordinator.penalty`; their declarations, accepted earlier, are
ignored: π = 0, no credential); each owes what it withheld as a debt, which the next
allocation that includes it charges on top of its contribution (``Allocation.debts``)
and which is cleared only when that epoch's audit finds no offence by it (restitution,
README "Graded exclusion"). Probation (README "Probation"): after the founding epoch
(:data:`FOUNDING_EPOCH`) an included node gets a credential only once it is established,
i.e. once the cut-off of an epoch in which it owed a positive amount found no offence by
it (:class:`Delivery`); until then it owes its contribution and is judged as a host like
any included node, but cannot roam. ``closing`` is transient (the mechanism runs in a worker
thread meanwhile) and is never persisted: a coordinator that dies while closing restarts
in ``open(e)`` and closes again.

Every input goes through three steps, which is how "refused input changes no state"
and "acknowledged means durable" are both kept:

1. ``check_*`` / ``plan_*`` validate against the current state and return a *change*
   record without touching the state (or raise a protocol error);
2. the shell persists the change (one SQLite transaction);
3. :meth:`EpochCore.apply` applies it, which cannot fail.

The shell runs step 1 to 3 with no ``await`` between them, so no other request
interleaves. Signing happens here (Ed25519 is deterministic; allocations carry no time),
so identical declarations give a byte-identical allocation envelope. This module
deliberately does no I/O and imports neither numpy nor aiohttp: the mechanism is a
function passed in (:meth:`EpochCore.close`) or run by the shell between
:meth:`EpochCore.begin_close` and :meth:`EpochCore.finish_close`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from coordinator.decision import Decision, Participant
from coordinator.enforcement import (
    LEGITIMATE_REASONS,
    REBUTTAL_SECONDS,
    Exclusion,
    find_free_riders,
    shortfall,
)
from coordinator.penalty import PenaltyPolicy, Sanction, Standing, forgotten, repaid, sentence
from coordinator.probe import ProbeResult
from protocol import (
    AccessRequest,
    Allocation,
    AuditReport,
    Commitment,
    Complaint,
    Credential,
    Declaration,
    EpochAnnouncement,
    GrantReceipt,
    Identity,
    Refusal,
    Registration,
    ReplayGuard,
    check_declaration,
    check_epoch,
    open_embedded,
    open_evidence,
    seal_bytes,
)
from protocol.errors import (
    BadProofError,
    CapacityExhaustedError,
    DuplicateDeclarationError,
    EpochClosedError,
    ExpiredError,
    FutureEpochError,
    NotFoundError,
    NotIncludedError,
    NotYetValidError,
    OutOfRangeError,
    ProbationError,
    ReplayError,
    StaleEpochError,
    UnknownKeyError,
    WrongPhaseError,
)
from protocol.fields import MAX_CLOCK_SKEW
from protocol.identity import VerifyKey
from protocol.messages import MAX_CREDENTIAL_LIFETIME, complained_request

#: The one clock policy: how far apart honest clocks may be (seconds), the same constant
#: the hosts' gates use. The audit widens credential windows by it (a host whose clock is
#: slow is not judged by a stricter rule than the one it enforced) and registrations
#: dated further ahead than it are refused.
CLOCK_SKEW = MAX_CLOCK_SKEW


#: The first epoch a coordinator runs (a new store opens epoch 0): nobody can have
#: delivered before it, so every key included in it gets a credential (README
#: "Probation"); from the next epoch on only established keys do.
FOUNDING_EPOCH = 0


#: Complaints one roamer may file per epoch, and about one host: enough for each host
#: it roams to to drop it a few times (one unanswered complaint suffices to judge a
#: host), few enough that a roamer cannot flood the coordinator or one host with relays.
MAX_COMPLAINTS = 32
MAX_COMPLAINTS_PER_HOST = 4
#: Refusals of one requester by one host stored per epoch. One unjustified refusal is
#: enough to convict a host, so more add nothing; and since they are outside the host's
#: evidence quota, a roamer collecting many of an honest host's genuine refusals cannot
#: fill that quota and crowd out the receipts that justify them (issue 11 item 7).
MAX_REFUSALS_PER_PAIR = 4


class Phase(enum.StrEnum):
    IDLE = "idle"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Event(enum.StrEnum):
    REGISTER = "register"
    OPEN = "open"
    DECLARE = "declare"
    BEGIN_CLOSE = "begin_close"
    FINISH_CLOSE = "finish_close"
    ABORT_CLOSE = "abort_close"
    COMMIT = "commit"
    AUDIT = "audit"


#: The whole state machine: (phase, event) -> next phase. Anything missing is an error.
TRANSITIONS: Mapping[tuple[Phase, Event], Phase] = {
    (Phase.IDLE, Event.REGISTER): Phase.IDLE,
    (Phase.OPEN, Event.REGISTER): Phase.OPEN,
    (Phase.CLOSING, Event.REGISTER): Phase.CLOSING,
    (Phase.CLOSED, Event.REGISTER): Phase.CLOSED,
    (Phase.IDLE, Event.OPEN): Phase.OPEN,
    (Phase.CLOSED, Event.OPEN): Phase.OPEN,
    (Phase.OPEN, Event.DECLARE): Phase.OPEN,
    (Phase.OPEN, Event.BEGIN_CLOSE): Phase.CLOSING,
    (Phase.CLOSING, Event.FINISH_CLOSE): Phase.CLOSED,
    (Phase.CLOSING, Event.ABORT_CLOSE): Phase.OPEN,
    (Phase.OPEN, Event.COMMIT): Phase.OPEN,
    (Phase.CLOSED, Event.COMMIT): Phase.CLOSED,
    (Phase.OPEN, Event.AUDIT): Phase.OPEN,
    (Phase.CLOSED, Event.AUDIT): Phase.CLOSED,
}


def step(phase: Phase, event: Event) -> Phase:
    """The next phase, or ``wrong_phase`` if the table has no such transition."""
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise WrongPhaseError(f"no transition for {event.value} in phase {phase.value}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What the state machine needs to know about the market and the schedule."""

    mechanism: str  # wire name: posted_fee or optimal
    payment: str  # money or in_kind
    theta_bounds: tuple[tuple[int, int], ...]  # per location, declarable θ (micro-units)
    epoch_seconds: int  # declarations are open this long after an epoch opens
    pause_seconds: int  # between a close and the next open (auto-scheduling)
    credential_grace: int  # credentials outlive the next epoch's deadline by this much
    # Evidence items stored per signing host and epoch (only items that can matter are
    # stored at all: EpochCore.check_audit); a host granting more often than this per
    # epoch should grant larger amounts.
    max_evidence_per_signer: int = 100_000
    penalty: PenaltyPolicy = field(default_factory=PenaltyPolicy)
    # The host's rebuttal window (seconds, coordinator clock): a refusal filed later than
    # this before the audit cut-off is not judged at it (AuditState.accusations).
    rebuttal_seconds: int = REBUTTAL_SECONDS
    # Probation (README "Probation"): audited epochs in which a key must have owed a
    # positive contribution and been found delivering before it gets credentials; 0
    # credentials every included key (no probation).
    probation_epochs: int = 1

    @property
    def n_locations(self) -> int:
        return len(self.theta_bounds)


# --- records and changes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    registration: Registration
    envelope: bytes

    @property
    def node_id(self) -> str:
        return self.registration.node_id

    @property
    def public_key(self) -> str:
        return self.registration.public_key


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochRecord:
    epoch: int
    deadline: int
    opened_at: int
    announcement: EpochAnnouncement
    envelope: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclarationRecord:
    declaration: Declaration
    envelope: bytes
    received_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialRecord:
    credential: Credential
    envelope: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceRecord:
    item: GrantReceipt | Refusal
    envelope: bytes
    reporter_id: str
    received_at: int | None = None  # coordinator clock; None: untimed (judged as early)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(host, requester, nonce, kind): a request is its requester's nonce, so two
        requesters' requests with one nonce are two requests (README section 7, step 5)."""
        kind = "grant_receipt" if isinstance(self.item, GrantReceipt) else "refusal"
        return (self.item.host_id, self.item.requester_id, self.item.nonce, kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class ComplaintRecord:
    """A roamer's complaint that ``complaint.host_id`` left its request unanswered,
    filed at ``filed_at`` (coordinator clock); ``relays`` attempts to relay it so far."""

    complaint: Complaint
    envelope: bytes
    filed_at: int
    relays: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        """(host, requester, nonce): the request complained about."""
        return (self.complaint.host_id, self.complaint.requester_id, self.complaint.nonce)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A node's probation record (README "Probation"): ``delivered`` audited epochs in
    which it owed a positive contribution and the audit found no offence by it, the last
    of them ``last_epoch``. One per node that ever delivered; it only grows."""

    node_id: str
    delivered: int
    last_epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Registered:
    node: NodeRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    record: EpochRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Declared:
    record: DeclarationRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed:
    epoch: int
    closed_at: int
    allocation: Allocation
    envelope: bytes
    credentials: tuple[CredentialRecord, ...]
    exclusions: tuple[Exclusion, ...]
    status: str
    standings: tuple[Standing, ...] = ()  # offenders' new standings (graded exclusion)
    forgotten: tuple[str, ...] = ()  # node ids whose standing is dropped
    history_from: int = 0  # offences whose exclusion ended before this epoch are dropped
    # Probation: the new delivery records of nodes the cut-off found delivering, and the
    # included nodes that got no credential (not established yet).
    delivered: tuple[Delivery, ...] = ()
    probation: tuple[tuple[str, int], ...] = ()  # (node id, location)


@dataclass(frozen=True, slots=True, kw_only=True)
class Committed:
    commitment: Commitment
    envelope: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Audited:
    epoch: int
    reporter_id: str
    new_items: tuple[EvidenceRecord, ...]
    n_items: int
    received_at: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Complained:
    record: ComplaintRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Relayed:
    """One attempt to relay the complaint ``key`` (host, requester, nonce) of ``epoch`` to
    its host; its signed answer, if it gave one, is filed as evidence by a separate
    ``Audited``."""

    epoch: int
    key: tuple[str, str, str]


Change = Registered | Opened | Declared | Closed | Committed | Audited | Complained | Relayed


@dataclass(frozen=True, slots=True, kw_only=True)
class ClosePlan:
    """What :meth:`EpochCore.begin_close` hands to the mechanism."""

    epoch: int
    now: int
    participants: tuple[Participant, ...]
    exclusions: tuple[Exclusion, ...]  # newly detected at this cut-off (for this epoch)
    standings: tuple[Standing, ...] = ()  # the offenders' standings after this cut-off
    forgotten: tuple[str, ...] = ()  # standings that no longer matter (decayed, served)
    # (node id, debt) of the participants that owe restitution, sorted; the allocation
    # charges those it includes (micro-units).
    debts: tuple[tuple[str, int], ...] = ()
    # Nodes the audit at this cut-off found delivering what they owed (> 0) in the last
    # epoch, with their updated records (probation).
    delivered: tuple[Delivery, ...] = ()


@dataclass(slots=True)
class AuditState:
    """The last closed epoch, while its commitments and evidence are collected."""

    allocation: Allocation
    windows: dict[str, tuple[int, int]]
    commitments: dict[str, int] = field(default_factory=dict)
    # By (host, requester, nonce, kind): EvidenceRecord.key.
    evidence: dict[tuple[str, str, str, str], GrantReceipt | Refusal] = field(
        default_factory=dict)
    per_signer: dict[str, int] = field(default_factory=dict)  # stored receipts by host
    # Stored refusals by (host, requester): at most MAX_REFUSALS_PER_PAIR each.
    refusals_at: dict[tuple[str, str], int] = field(default_factory=dict)
    # When each item was first filed (coordinator clock; None: untimed).
    received: dict[tuple[str, str, str, str], int | None] = field(default_factory=dict)
    # Roamers' complaints by (host, requester, nonce), and how many each roamer filed.
    complaints: dict[tuple[str, str, str], ComplaintRecord] = field(default_factory=dict)
    complaints_by: dict[str, int] = field(default_factory=dict)
    complaints_at: dict[tuple[str, str], int] = field(default_factory=dict)  # (roamer, host)
    # The epoch's included nodes: every one is judged as a host, also one on probation
    # (included, owing, with no credential, hence no window).
    members: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.members = frozenset(self.allocation.included)

    def answered(self, key: tuple[str, str, str]) -> bool:
        """Whether the host ``key[0]`` has signed an answer (receipt or refusal) to the
        request of requester ``key[1]`` with nonce ``key[2]`` that the coordinator holds.
        The requester is part of the request's identity: an answer to an accomplice's
        request reusing a roamer's nonce answers nothing of the roamer's."""
        return (((*key, "grant_receipt") in self.evidence)
                or ((*key, "refusal") in self.evidence))

    def complained(self) -> frozenset[tuple[str, str, str]]:
        """(host, requester, nonce) of every complaint held (answered or not): the
        requests a host may have decided when they were relayed, whatever their age."""
        return frozenset(self.complaints)

    def pending(self) -> list[ComplaintRecord]:
        """Complaints whose host has not answered yet (to relay), oldest first."""
        return sorted((c for k, c in self.complaints.items() if not self.answered(k)),
                      key=lambda c: (c.filed_at, c.key))

    def standing_complaints(self, cutoff: int, rebuttal: int) -> list[Complaint]:
        """The complaints the cut-off at ``cutoff`` holds against their hosts: filed at
        least ``rebuttal`` seconds before it (the host's window to answer), relayed at
        least once (the coordinator did its part) and still unanswered."""
        return [c.complaint for k, c in sorted(self.complaints.items())
                if c.filed_at <= cutoff - rebuttal and c.relays > 0
                and not self.answered(k)]

    def add(self, item: GrantReceipt | Refusal, received_at: int | None = None) -> None:
        kind = "grant_receipt" if isinstance(item, GrantReceipt) else "refusal"
        key = (item.host_id, item.requester_id, item.nonce, kind)
        if key not in self.evidence:
            self.evidence[key] = item
            self.received[key] = received_at
            if isinstance(item, GrantReceipt):
                self.per_signer[item.host_id] = self.per_signer.get(item.host_id, 0) + 1
            else:
                pair = (item.host_id, item.requester_id)
                self.refusals_at[pair] = self.refusals_at.get(pair, 0) + 1

    def judged(self, cutoff: int, rebuttal: int) -> list[GrantReceipt | Refusal]:
        """The evidence the audit cut-off at ``cutoff`` reads (README section 7, step 5,
        the rebuttal window): every receipt (what rebuts), and the refusals (what
        accuses) filed at least ``rebuttal`` seconds before the cut-off. An accusation
        filed later is not judged, so every accused host has ``rebuttal`` seconds to file
        the ledger that answers it; untimed items count as filed early."""
        last = cutoff - rebuttal
        out: list[GrantReceipt | Refusal] = []
        for key, item in self.evidence.items():
            at = self.received.get(key)
            if isinstance(item, GrantReceipt) or at is None or at <= last:
                out.append(item)
        return out

    def skewed_windows(self) -> dict[str, tuple[int, int]]:
        """Credential windows as the hosts' gates accept them: ``not_before`` −
        :data:`CLOCK_SKEW` … ``expires`` + :data:`CLOCK_SKEW` (protocol.verify
        ``check_validity``), so the audit judges by the rule the host enforced."""
        return {n: (a - CLOCK_SKEW, b + CLOCK_SKEW) for n, (a, b) in self.windows.items()}

    def matters(self, item: GrantReceipt | Refusal) -> bool:
        """Whether ``item`` can change a judgement of
        :func:`coordinator.enforcement.find_free_riders`, which reads only: refusals by an
        included host of an included requester inside the requester's credential window,
        for a reason that is not the requester's own fault; receipts by an included host to
        another included node inside that node's window (they count toward the host's
        capacity used when one of its capacity refusals is judged). Nothing else is
        stored, so a node that was never included cannot fill the evidence table. What a
        host signs about a request of its own is never held: no host owes itself
        service. (An answer is known by (host, requester, nonce), so neither that nor an
        accomplice's request reusing a dropped request's nonce answers a complaint.)"""
        window = self.windows.get(item.requester_id)
        if (item.host_id not in self.members or window is None
                or item.requester_id == item.host_id):
            return False
        if (item.host_id, item.requester_id, item.nonce) in self.complaints:
            # It answers a complaint, whenever it was signed: a relay may reach the host
            # long after the credential expired (a late close, a retried relay), and the
            # judgement places the answer of a complained request by the request's time.
            return True
        # Twice the skew: the judgement may place an item by its own time or by the
        # request's, each within the skew of the window; storing more never harms.
        if not window[0] - 2 * CLOCK_SKEW <= item.time < window[1] + 2 * CLOCK_SKEW:
            return False
        if isinstance(item, GrantReceipt):
            return True
        # out_of_range is judged by the host's kind (coordinator.enforcement): keep it.
        return item.reason not in LEGITIMATE_REASONS or item.reason == "out_of_range"

    @property
    def epoch(self) -> int:
        return self.allocation.epoch


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything the state machine is rebuilt from after a restart (see the store)."""

    nodes: tuple[NodeRecord, ...] = ()
    current: EpochRecord | None = None
    closed: bool = False  # the current epoch has an allocation
    declarations: tuple[DeclarationRecord, ...] = ()  # of the current epoch
    previous_nonces: tuple[str, ...] = ()  # of the epoch before (replay window)
    audit_allocation: Allocation | None = None
    audit_credentials: tuple[Credential, ...] = ()
    commitments: tuple[Commitment, ...] = ()
    evidence: tuple[GrantReceipt | Refusal, ...] = ()
    evidence_received: tuple[int | None, ...] = ()  # per evidence item (empty: untimed)
    complaints: tuple[ComplaintRecord, ...] = ()  # of the audited epoch
    sanctions: tuple[Sanction, ...] = ()  # offences of the recent history
    standings: tuple[Standing, ...] = ()
    deliveries: tuple[Delivery, ...] = ()  # probation records, one per node
    last_status: str = ""


# --- the machine -----------------------------------------------------------------------


class EpochCore:
    """The coordinator's state and every decision on it (see the module docstring)."""

    def __init__(self, *, identity: Identity, settings: Settings) -> None:
        self.identity = identity
        self.settings = settings
        self.phase = Phase.IDLE
        self.current: EpochRecord | None = None
        self.nodes: dict[str, NodeRecord] = {}
        # Registered public keys (the trusted signer set), each loaded once for the
        # signatures it makes (None: not a strong key, so nothing it signs verifies).
        self.keys: dict[str, VerifyKey | None] = {}
        self.declarations: dict[str, DeclarationRecord] = {}
        self.guard = ReplayGuard(current_epoch=0, window=2)
        self.audit: AuditState | None = None
        # Offences of the last penalty.history_epochs epochs (for status), and one
        # standing per node with a live record (who is excluded, and how long next time).
        self.sanctions: list[Sanction] = []
        self.standings: dict[str, Standing] = {}
        # Probation: per node, the audited epochs in which it owed and delivered.
        self.deliveries: dict[str, Delivery] = {}
        self._n_established: int | None = None  # cached count (status reads it often)
        self.last_status = ""

    # -- reading -----------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return None if self.current is None else self.current.epoch

    def excluded_from(self, epoch: int) -> set[str]:
        return {n for n, s in self.standings.items() if s.excludes(epoch)}

    def established(self, node_id: str, delivered: Mapping[str, Delivery] | None = None
                    ) -> bool:
        """Whether ``node_id`` has served its probation: at least ``probation_epochs``
        audited epochs in which it owed a positive contribution and was found delivering
        (``delivered``: records newer than the core's, from a cut-off not applied yet)."""
        need = self.settings.probation_epochs
        rec = (delivered or {}).get(node_id) or self.deliveries.get(node_id)
        return need == 0 or (rec is not None and rec.delivered >= need)

    @property
    def n_established(self) -> int:
        """How many nodes are established (counted once per change of the records)."""
        if self._n_established is None:
            self._n_established = sum(self.established(n) for n in self.deliveries)
        return self._n_established

    def credentialled(self, node_id: str, epoch: int,
                      delivered: Mapping[str, Delivery] | None = None) -> bool:
        """Whether ``node_id``, included in ``epoch``, gets a credential: it is
        established, or ``epoch`` is the founding epoch (:data:`FOUNDING_EPOCH`), in which
        nobody can have delivered yet. Founding credentials do not establish anyone."""
        return epoch == FOUNDING_EPOCH or self.established(node_id, delivered)

    def next_deadline_after_close(self, now: int) -> int:
        """When the epoch after one closing at ``now`` stops taking declarations."""
        return now + self.settings.pause_seconds + self.settings.epoch_seconds

    # -- registration ------------------------------------------------------------------

    def check_registration(self, reg: Registration, envelope: bytes, *,
                           now: int) -> Registered | None:
        """A new or newer registration; None if it repeats the stored one (idempotent).

        A registration dated in the future is refused, since registrations are ordered
        by (``epoch``, ``issued``) and a future one would lock the node's own updates
        until then: ``issued`` more than :data:`CLOCK_SKEW` after ``now`` is
        ``not_yet_valid``, an ``epoch`` after the next one to open is ``future_epoch``.
        """
        step(self.phase, Event.REGISTER)
        if reg.home_location >= self.settings.n_locations:
            raise OutOfRangeError(
                f"home_location {reg.home_location}: the market has "
                f"{self.settings.n_locations} locations")
        if reg.issued is not None and reg.issued > now + CLOCK_SKEW:
            raise NotYetValidError(
                f"registration issued at {reg.issued}, more than {CLOCK_SKEW} s after now")
        next_epoch = 0 if self.current is None else self.current.epoch + 1
        if reg.epoch > next_epoch:
            raise FutureEpochError(
                f"registration for epoch {reg.epoch}; the next epoch to open is {next_epoch}")
        old = self.nodes.get(reg.node_id)
        if old is not None:
            if reg == old.registration:
                return None
            if reg.order <= old.registration.order:
                # Not strictly newer: a replay of an older envelope must not roll the
                # node's endpoint or location back (protocol README, registration).
                raise StaleEpochError(
                    f"a registration as new as (epoch, issued) {old.registration.order} "
                    "is already stored")
        return Registered(node=NodeRecord(registration=reg, envelope=envelope))

    # -- opening -----------------------------------------------------------------------

    def plan_open(
        self, now: int, *, fees: Sequence[int], q: Sequence[int], sign: bool = True
    ) -> Opened:
        """Open the next epoch at ``now`` (deadline ``now + epoch_seconds``)."""
        step(self.phase, Event.OPEN)
        epoch = 0 if self.current is None else self.current.epoch + 1
        ann = EpochAnnouncement(
            epoch=epoch, mechanism=self.settings.mechanism, payment=self.settings.payment,
            deadline=now + self.settings.epoch_seconds, fees=tuple(fees), q=tuple(q),
            coordinator_key=self.identity.public_key)
        return Opened(record=EpochRecord(
            epoch=epoch, deadline=ann.deadline, opened_at=now, announcement=ann,
            envelope=seal_bytes(self.identity, ann)))

    # -- declarations ------------------------------------------------------------------

    def check_declaration(
        self, decl: Declaration, envelope: bytes, now: int, *,
        queued_nonces: Container[tuple[int, str]] = frozenset(),
        queued_nodes: Collection[str] = frozenset(),
    ) -> Declared:
        """README §5 order: epoch, deadline, nonce, duplicate; then θ in the prior's support.

        The shell opened the envelope with the registered keys as the trusted signers, so
        the signer is registered and is ``decl.node_id``; the first check repeats that.
        ``queued_nonces`` ((epoch, nonce)) and ``queued_nodes`` are declarations the shell
        accepted but has not applied yet (group commit): they count as already seen.
        """
        if decl.node_id not in self.nodes:
            raise UnknownKeyError(f"node {decl.node_id[:16]}... is not registered")
        if self.current is None:
            raise FutureEpochError(f"epoch {decl.epoch} has not been opened")
        if self.phase == Phase.OPEN:
            check_declaration(decl, self.current.announcement, now=now)
        else:
            check_epoch(decl.epoch, current=self.current.epoch)
            raise EpochClosedError(f"epoch {self.current.epoch} is closed")
        step(self.phase, Event.DECLARE)
        if self.guard.seen(decl.epoch, decl.nonce) or (decl.epoch, decl.nonce) in queued_nonces:
            raise ReplayError(f"nonce already used in epoch {decl.epoch}")
        if decl.node_id in self.declarations or decl.node_id in queued_nodes:
            raise DuplicateDeclarationError(
                f"node {decl.node_id[:16]}... already declared in epoch {decl.epoch}")
        location = self.nodes[decl.node_id].registration.home_location
        lo, hi = self.settings.theta_bounds[location]
        if not lo <= decl.theta <= hi:
            raise OutOfRangeError(
                f"theta {decl.theta} is outside location {location}'s type support [{lo}, {hi}]")
        if len(self.declarations) + len(queued_nodes) >= 1_000_000:
            raise CapacityExhaustedError("declaration table is full")
        return Declared(record=DeclarationRecord(
            declaration=decl, envelope=envelope, received_at=now))

    # -- closing -----------------------------------------------------------------------

    def begin_close(self, now: int, probes: Iterable[ProbeResult] = ()) -> ClosePlan:
        """The audit cut-off of the previous epoch, then who takes part in this one.

        ``probes``: the coordinator's probe results (:mod:`coordinator.probe`), read by the
        shell from its store. Moves to ``closing`` (declarations are refused from here on).
        """
        nxt = step(self.phase, Event.BEGIN_CLOSE)
        assert self.current is not None
        epoch = self.current.epoch
        new: tuple[Exclusion, ...] = ()
        delivered: tuple[Delivery, ...] = ()
        if self.audit is not None and self.audit.epoch == epoch - 1:
            known = {(s.offence.node_id, s.offence.reason) for s in self.sanctions
                     if s.offence.excluded_epoch == epoch}
            found = find_free_riders(
                allocation=self.audit.allocation, commitments=self.audit.commitments,
                evidence=self.audit.judged(now, self.settings.rebuttal_seconds),
                credential_windows=self.audit.skewed_windows(), probes=probes,
                complaints=self.audit.standing_complaints(
                    now, self.settings.rebuttal_seconds),
                host_kinds={n: r.registration.kind for n, r in self.nodes.items()},
                complained=self.audit.complained())
            new = tuple(x for x in found if (x.node_id, x.reason) not in known)
            delivered = self._deliveries(epoch - 1, {x.node_id for x in found})
        policy = self.settings.penalty
        reasons: dict[str, list[str]] = {}
        for x in new:
            reasons.setdefault(x.node_id, []).append(x.reason)
        standings: dict[str, Standing] = {}
        if reasons:
            assert self.audit is not None  # new offences come only from the audit
            owed = self.audit.allocation.owed()
            for n in sorted(reasons):
                debt = shortfall(owed.get(n, 0), self.audit.commitments.get(n, 0), reasons[n])
                standings[n] = sentence(policy, self.standings.get(n), n, epoch - 1,
                                        debt=debt)
        if self.audit is not None and self.audit.epoch == epoch - 1:
            # Restitution: a debt the last epoch charged is repaid once its audit found no
            # offence by the node (every rule judged contribution + debt).
            for n, s in self.standings.items():
                if (n not in standings and s.debt > 0 and s.detected_epoch < epoch - 1
                        and self.audit.allocation.debt_of(n) == s.debt):
                    standings[n] = repaid(s)
        after = self.standings | standings
        gone = tuple(sorted(n for n, s in after.items() if forgotten(policy, s, epoch)))
        out = {n for n, s in after.items() if s.excludes(epoch)}
        participants = tuple(sorted(
            (Participant(
                node_id=node_id, public_key=self.nodes[node_id].public_key,
                location=self.nodes[node_id].registration.home_location,
                theta=rec.declaration.theta)
             for node_id, rec in self.declarations.items() if node_id not in out),
            key=lambda p: (p.location, p.node_id)))
        debts = tuple(sorted((p.node_id, after[p.node_id].debt) for p in participants
                             if p.node_id in after and after[p.node_id].debt > 0))
        self.phase = nxt
        return ClosePlan(epoch=epoch, now=now, participants=participants, exclusions=new,
                         standings=tuple(s for n, s in standings.items() if n not in gone),
                         forgotten=gone, debts=debts, delivered=delivered)

    def _deliveries(self, audited: int, offenders: Container[str]) -> tuple[Delivery, ...]:
        """The probation records the cut-off of epoch ``audited`` adds: one more
        delivering epoch for every node that owed a positive amount in it (contribution
        plus debt: what every audit rule judged) and against which the audit found no
        offence (``offenders``: every node it found, for any reason). A node that owed
        nothing proved nothing, so a key that only ever declares low types never gets
        established. Idempotent: an epoch already counted for a node is not counted
        again."""
        assert self.audit is not None
        out = []
        for n, amount in sorted(self.audit.allocation.owed().items()):
            if amount <= 0 or n in offenders:
                continue
            prev = self.deliveries.get(n)
            if prev is not None and prev.last_epoch >= audited:
                continue
            out.append(Delivery(node_id=n, delivered=1 + (prev.delivered if prev else 0),
                                last_epoch=audited))
        return tuple(out)

    def abort_close(self, plan: ClosePlan) -> None:
        """The mechanism could not run: back to ``open`` (the epoch can be closed again)."""
        self.phase = step(self.phase, Event.ABORT_CLOSE)

    def finish_close(self, plan: ClosePlan, outcome: Decision) -> Closed:
        """Sign the allocation and one credential per included node (no state change)."""
        step(self.phase, Event.FINISH_CLOSE)
        owing = dict(plan.debts)
        debts = tuple(owing.get(n, 0) for n in outcome.included)
        allocation = Allocation(
            epoch=plan.epoch, mechanism=self.settings.mechanism, q=outcome.q,
            included=outcome.included, contributions=outcome.contributions,
            expected_welfare=outcome.expected_welfare, debts=debts if any(debts) else None)
        by_id = {p.node_id: p for p in plan.participants}
        expires = min(
            self.next_deadline_after_close(plan.now) + self.settings.credential_grace,
            plan.now + MAX_CREDENTIAL_LIFETIME)
        expires = max(expires, plan.now + 1)
        creds = []
        probation = []
        newer = {d.node_id: d for d in plan.delivered}
        for node_id in outcome.included:
            if not self.credentialled(node_id, plan.epoch, newer):
                # Included and owing, but no credential: it cannot roam until an audit
                # found it delivering (README "Probation").
                probation.append((node_id, by_id[node_id].location))
                continue
            p = by_id[node_id]
            cred = Credential(node_id=node_id, public_key=p.public_key, epoch=plan.epoch,
                              not_before=plan.now, expires=expires, location=p.location)
            creds.append(CredentialRecord(credential=cred,
                                          envelope=seal_bytes(self.identity, cred)))
        return Closed(epoch=plan.epoch, closed_at=plan.now, allocation=allocation,
                      envelope=seal_bytes(self.identity, allocation), credentials=tuple(creds),
                      exclusions=plan.exclusions, status=outcome.status,
                      standings=plan.standings, forgotten=plan.forgotten,
                      history_from=plan.epoch - self.settings.penalty.history_epochs,
                      delivered=plan.delivered, probation=tuple(probation))

    def close(self, now: int, run: Callable[[Sequence[Participant]], Decision]) -> Closed:
        """Synchronous close: begin, run the mechanism, finish and apply."""
        plan = self.begin_close(now)
        try:
            outcome = run(plan.participants)
        except BaseException:
            self.abort_close(plan)
            raise
        change = self.finish_close(plan, outcome)
        self.apply(change)
        return change

    # -- commitments and audit ---------------------------------------------------------

    def _check_audit_epoch(self, epoch: int, event: Event) -> AuditState:
        if self.phase == Phase.CLOSING and self.current is not None:
            if epoch < self.current.epoch:
                raise StaleEpochError(f"the audit cut-off of epoch {epoch} has passed")
            raise FutureEpochError(f"epoch {epoch} has not closed yet")
        if self.audit is None:
            if self.current is not None and epoch < self.current.epoch:
                raise StaleEpochError(f"epoch {epoch} is no longer audited")
            raise FutureEpochError(f"epoch {epoch} has not closed yet")
        check_epoch(epoch, current=self.audit.epoch)
        step(self.phase, event)
        return self.audit

    def check_commitment(self, c: Commitment, envelope: bytes) -> Committed:
        """A commitment for the last closed epoch by one of its included nodes.

        The highest commitment counts (a replayed older one cannot lower it).
        """
        audit = self._check_audit_epoch(c.epoch, Event.COMMIT)
        if audit.allocation.contribution_of(c.node_id) is None:
            raise NotIncludedError(f"node {c.node_id[:16]}... was not included in epoch {c.epoch}")
        best = max(c.contribution, audit.commitments.get(c.node_id, 0))
        if best != c.contribution:
            c = Commitment(epoch=c.epoch, node_id=c.node_id, contribution=best)
        return Committed(commitment=c, envelope=envelope)

    def check_audit(self, reporter_id: str, report: AuditReport, *,
                    now: int | None = None, at: int | None = None) -> Audited:
        """Verify every evidence item (registered host, the host it names, the report's
        epoch); the first bad item refuses the whole report. A verified report is never
        refused for its volume; of its items, only those that can matter
        (:meth:`AuditState.matters`) and are not held yet (same host, requester, nonce and
        kind)
        are stored: receipts up to ``max_evidence_per_signer`` per signing host and
        epoch (a host flooding its own evidence fills only its own quota, never
        another's), refusals up to :data:`MAX_REFUSALS_PER_PAIR` per host and requester
        (outside that quota, so a roamer's flood of a host's refusals cannot crowd out the
        receipts that justify them), and a host's answer to a complaint always (bounded
        by the complaint limits: it is the host's rebuttal). ``now``
        (the coordinator's clock) dates the new items for the rebuttal window
        (:meth:`AuditState.judged`); None leaves them untimed. ``at`` (default ``now``):
        the coordinator's clock as the report arrives; a refusal dated more than the
        clock skew after it is not held (nobody refused anything in the future, and a
        refusal answering a relayed request is judged at its own time:
        :func:`coordinator.enforcement.find_free_riders`)."""
        audit = self._check_audit_epoch(report.epoch, Event.AUDIT)
        opened = open_evidence(report, host_keys=self.keys)
        new: dict[tuple[str, str, str, str], EvidenceRecord] = {}
        added: dict[str, int] = {}
        added_pair: dict[tuple[str, str], int] = {}
        quota = self.settings.max_evidence_per_signer
        arrived = now if at is None else at
        for (_, item), envelope in zip(opened, report.evidence, strict=True):
            if not audit.matters(item):
                continue
            if (arrived is not None and isinstance(item, Refusal)
                    and item.time > arrived + CLOCK_SKEW):
                continue  # post-dated
            rec = EvidenceRecord(item=item, envelope=envelope.to_bytes(),
                                 reporter_id=reporter_id, received_at=now)
            if rec.key in audit.evidence or rec.key in new:
                continue
            host = item.host_id
            pair = (host, item.requester_id)
            answers = (host, item.requester_id, item.nonce) in audit.complaints
            if isinstance(item, GrantReceipt):
                if not answers and audit.per_signer.get(host, 0) + added.get(host, 0) >= quota:
                    continue
                added[host] = added.get(host, 0) + 1
            else:
                if not answers and (audit.refusals_at.get(pair, 0) + added_pair.get(pair, 0)
                                    >= MAX_REFUSALS_PER_PAIR):
                    continue
                added_pair[pair] = added_pair.get(pair, 0) + 1
            new[rec.key] = rec
        return Audited(epoch=report.epoch, reporter_id=reporter_id,
                       new_items=tuple(new.values()), n_items=len(opened), received_at=now)

    def check_complaint(self, c: Complaint, envelope: bytes, *, now: int,
                        credential_digest: str | None) -> Complained | None:
        """A roamer's complaint for the last closed epoch (README section 7, step 7);
        None if the same complaint (host, requester, nonce) is already held (idempotent).

        The shell opened the envelope with the registered keys as trusted signers, so the
        signer is registered and is ``c.requester_id``. Refused (no state changed): an
        epoch not being audited (``stale_epoch``, ``future_epoch``); a requester not
        included in it, or a host that owes nothing in it (``not_included``); a requester
        included without a credential (``probation``: no host owed it service); a request
        not signed by the requester's registered key (``bad_signature``) or naming
        another credential than the one issued to the requester for the epoch
        (``credential_digest``, from the store; ``bad_proof``); a request issued outside
        that credential's window widened by the clock skew (``expired``,
        ``not_yet_valid``); more than :data:`MAX_COMPLAINTS` complaints by one roamer in
        one epoch, or :data:`MAX_COMPLAINTS_PER_HOST` about one host
        (``capacity_exhausted``).
        """
        audit = self._check_audit_epoch(c.epoch, Event.AUDIT)
        owed = audit.allocation.owed()
        if c.requester_id not in owed:
            raise NotIncludedError(
                f"node {c.requester_id[:16]}... was not included in epoch {c.epoch}")
        if owed.get(c.host_id, 0) <= 0:
            raise NotIncludedError(f"host {c.host_id[:16]}... owes nothing in epoch {c.epoch}")
        key = self.nodes[c.requester_id].public_key
        open_embedded(c.request, AccessRequest, trusted=frozenset({key}))
        request = complained_request(c)
        if credential_digest is None:
            raise ProbationError(
                f"node {c.requester_id[:16]}... holds no credential of epoch {c.epoch} "
                "(on probation): no host owed it service")
        if request.credential_digest != credential_digest:
            raise BadProofError("the request names another credential than the one issued")
        lo, hi = audit.skewed_windows()[c.requester_id]
        if request.issued < lo:
            raise ExpiredError("the request was issued before its credential was valid")
        if request.issued >= hi:
            raise NotYetValidError("the request was issued after its credential expired")
        record = ComplaintRecord(complaint=c, envelope=envelope, filed_at=now)
        if record.key in audit.complaints:
            return None
        if audit.complaints_by.get(c.requester_id, 0) >= MAX_COMPLAINTS:
            raise CapacityExhaustedError(
                f"at most {MAX_COMPLAINTS} complaints per roamer and epoch")
        if audit.complaints_at.get((c.requester_id, c.host_id), 0) >= MAX_COMPLAINTS_PER_HOST:
            raise CapacityExhaustedError(
                f"at most {MAX_COMPLAINTS_PER_HOST} complaints per roamer about one host "
                "and epoch")
        return Complained(record=record)

    def check_relay(self, epoch: int, key: tuple[str, str, str]) -> Relayed:
        """Record one attempt to relay the complaint ``key`` of ``epoch``."""
        audit = self._check_audit_epoch(epoch, Event.AUDIT)
        if key not in audit.complaints:
            raise NotFoundError("no such complaint")
        return Relayed(epoch=epoch, key=key)

    # -- applying ----------------------------------------------------------------------

    def apply(self, change: Change) -> None:
        """Apply a validated (and persisted) change. Never raises for a valid change."""
        if isinstance(change, Registered):
            self.nodes[change.node.node_id] = change.node
            self.keys[change.node.public_key] = VerifyKey.load(change.node.public_key)
        elif isinstance(change, Opened):
            self.phase = step(self.phase, Event.OPEN)
            self.current = change.record
            self.declarations = {}
            self.guard.advance(change.record.epoch)
        elif isinstance(change, Declared):
            d = change.record.declaration
            self.guard.check_and_record(d.epoch, d.nonce)
            self.declarations[d.node_id] = change.record
        elif isinstance(change, Closed):
            self.phase = step(self.phase, Event.FINISH_CLOSE)
            for node_id in change.forgotten:
                self.standings.pop(node_id, None)
            self.standings.update((s.node_id, s) for s in change.standings)
            self.sanctions.extend(
                Sanction(offence=x, last_epoch=self.standings[x.node_id].last_epoch)
                for x in change.exclusions)
            self.sanctions = [s for s in self.sanctions if s.last_epoch >= change.history_from]
            self.deliveries.update((d.node_id, d) for d in change.delivered)
            self._n_established = None
            self.audit = AuditState(
                allocation=change.allocation,
                windows={c.credential.node_id: (c.credential.not_before, c.credential.expires)
                         for c in change.credentials})
            self.last_status = change.status
        elif isinstance(change, Committed):
            assert self.audit is not None
            c = change.commitment
            self.audit.commitments[c.node_id] = c.contribution
        elif isinstance(change, Audited):
            assert self.audit is not None
            for rec in change.new_items:
                self.audit.add(rec.item, rec.received_at)
        elif isinstance(change, Complained):
            assert self.audit is not None
            filed = change.record
            self.audit.complaints[filed.key] = filed
            who = filed.complaint.requester_id
            self.audit.complaints_by[who] = self.audit.complaints_by.get(who, 0) + 1
            pair = (who, filed.complaint.host_id)
            self.audit.complaints_at[pair] = self.audit.complaints_at.get(pair, 0) + 1
        elif isinstance(change, Relayed):
            assert self.audit is not None
            old = self.audit.complaints[change.key]
            self.audit.complaints[change.key] = replace(old, relays=old.relays + 1)

    # -- restoring ---------------------------------------------------------------------

    @classmethod
    def restore(cls, snap: Snapshot, *, identity: Identity, settings: Settings) -> EpochCore:
        """Rebuild the machine from stored records: same epoch, same declarations."""
        core = cls(identity=identity, settings=settings)
        for node in snap.nodes:
            core.nodes[node.node_id] = node
            core.keys[node.public_key] = VerifyKey.load(node.public_key)
        core.sanctions = list(snap.sanctions)
        core.standings = {s.node_id: s for s in snap.standings}
        core.deliveries = {d.node_id: d for d in snap.deliveries}
        core.last_status = snap.last_status
        if snap.current is None:
            return core
        epoch = snap.current.epoch
        core.current = snap.current
        core.phase = Phase.CLOSED if snap.closed else Phase.OPEN
        core.guard = ReplayGuard(current_epoch=max(0, epoch - 1), window=2)
        for nonce in snap.previous_nonces:
            core.guard.check_and_record(epoch - 1, nonce)
        core.guard.advance(epoch)
        for rec in snap.declarations:
            core.guard.check_and_record(epoch, rec.declaration.nonce)
            core.declarations[rec.declaration.node_id] = rec
        if snap.audit_allocation is not None:
            core.audit = AuditState(
                allocation=snap.audit_allocation,
                windows={c.node_id: (c.not_before, c.expires) for c in snap.audit_credentials},
                commitments={c.node_id: c.contribution for c in snap.commitments})
            received = snap.evidence_received or (None,) * len(snap.evidence)
            for item, at in zip(snap.evidence, received, strict=True):
                core.audit.add(item, at)
            for complaint in snap.complaints:
                core.apply(Complained(record=complaint))
        return core
