"""The host core, sans-I/O: what a node knows and does as a host, one call per request.

:class:`Host` holds the node's identity, its resource accounting (:mod:`node.resources`),
its access verifier (remembered credentials, the replay window), the allocation it
enforces and its counters. :meth:`Host.access` runs the gate
(:func:`node.gate.authorize`) on a snapshot of that state, then applies the decision: a
grant consumes capacity and is answered with a signed ``grant_receipt`` embedding the
roamer's signed request; a refusal of a verified requester is answered with a signed
``refusal`` carrying the reason code; an unverified request gets only the error
(nobody's name is signed for it).

The host's **ledger** (:meth:`Host.unfiled`) holds the receipts it signed in an epoch that
the audit may need. It files them in its own audit reports (README section 7, step 5),
and any it signs later it files at a later step (the agent's): each is backed
by the roamer's signature, so a roamer that drains the host and hides its receipt cannot
make the host's later ``capacity_exhausted`` refusals look unjustified. The ledger is
bounded (:data:`MAX_LEDGER` unfiled receipts; see ``_record`` for what it keeps when full,
by what the judgement of a capacity refusal reads: the sum granted before it).

Time is the argument ``now`` (integer Unix seconds). The aiohttp service
(:mod:`node.service`) is a thin shell over this class, and tests drive it directly.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from node.files import FileStore
from node.gate import GRANTED, Decision, HostView, authorize, decide
from node.resources import ComputeResource, Resource, make_resource
from protocol import (
    MAX_CLOCK_SKEW,
    AccessRequest,
    AccessVerifier,
    Envelope,
    GrantReceipt,
    Identity,
    InkindError,
    Refusal,
    make_probe_answer,
    seal,
)
from protocol.access import grant_receipt
from protocol.errors import (
    CapacityExhaustedError,
    OutOfRangeError,
    ReplayError,
    TooLargeError,
    UnknownKeyError,
)
from protocol.fields import check_int
from protocol.kinds import kind_of
from protocol.messages import MAX_AUDIT_ITEMS, roamer_share
from protocol.session import SessionAnswer

#: ``Host.epoch`` before any allocation is enforced (every credential is then future).
NO_EPOCH = -1
#: Most receipts kept unfiled in one epoch's ledger (about 1.4 kB each). The agent files
#: them at every step, in reports of MAX_AUDIT_ITEMS, and filed ones leave memory, so this
#: bounds only what piles up between two steps. The proof of a tight capacity refusal is
#: every grant before it, so nothing is dropped below this bound; above it the ledger keeps
#: the larger receipts, and receipts pinned as a refusal's proof up to twice the bound.
MAX_LEDGER = 10 * MAX_AUDIT_ITEMS
#: Most signed answers (receipts and refusals) remembered per epoch for relayed
#: complaints (about 1.5 kB each; the current and the previous epoch are kept).
MAX_ANSWERS = 2 * MAX_LEDGER


#: A signed answer kept for relayed complaints: (reason, message, amount granted, the
#: request, the receipt or refusal envelope).
_Answered = tuple[str, str, int, AccessRequest, Envelope]


@dataclass(slots=True)
class _Entry:
    """One kept receipt; ``pinned`` once it is part of the proof of a capacity refusal."""

    receipt: Envelope
    amount: int
    request: tuple[str, str]  # (requester, nonce): the request it grants
    seq: int  # its place in grant order (a ledger's entries are keyed by it)
    pinned: bool = False


@dataclass(slots=True)
class _Ledger:
    """One epoch's receipts not filed yet (by ``seq``, in grant order), the sum and the
    requests ((requester, nonce)) of every receipt kept or filed (a filed receipt is the
    coordinator's to keep).

    ``loose`` is a heap of the kept, unpinned entries by (amount, -seq): the one a full
    ledger gives up first (the smallest, the latest of ties) is at its top, so a grant
    into a full ledger costs O(log n), not a scan. Entries filed, evicted or pinned since
    they were pushed are skipped when they reach the top (:meth:`smallest_loose`).
    """

    entries: dict[int, _Entry] = field(default_factory=dict)
    total: int = 0
    # (requester, nonce) of the entries and of those filed.
    requests: set[tuple[str, str]] = field(default_factory=set)
    loose: list[tuple[int, int, _Entry]] = field(default_factory=list)
    next_seq: int = 0

    def add(self, receipt: Envelope, amount: int, request: tuple[str, str]) -> None:
        entry = _Entry(receipt=receipt, amount=amount, request=request, seq=self.next_seq)
        self.next_seq += 1
        self.entries[entry.seq] = entry
        heapq.heappush(self.loose, (amount, -entry.seq, entry))
        self.total += amount
        self.requests.add(request)

    def evict(self, entry: _Entry) -> None:
        """Give up a kept receipt: its amount and request are no longer counted."""
        del self.entries[entry.seq]
        self.total -= entry.amount
        self.requests.discard(entry.request)

    def smallest_loose(self) -> _Entry | None:
        """The kept, unpinned entry of the smallest amount (the latest of ties), if any."""
        while self.loose:
            entry = self.loose[0][2]
            if not entry.pinned and self.entries.get(entry.seq) is entry:
                return entry
            heapq.heappop(self.loose)  # filed, evicted or pinned since it was pushed
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessOutcome:
    """A decision and what to answer: the receipt or refusal envelope, if any."""

    decision: Decision
    receipt: Envelope | None = None
    refusal: Envelope | None = None
    session_answer: SessionAnswer | None = None  # a granted session request's answer

    @property
    def granted(self) -> bool:
        return self.decision.granted

    @property
    def answered(self) -> bool:
        """Granted with an answer to send (a receipt or a session answer)."""
        return self.receipt is not None or self.session_answer is not None


class Host:
    """A node's host side. ``kind`` is one of the four resource kinds."""

    def __init__(
        self,
        identity: Identity,
        *,
        kind: str,
        location: int,
        coordinator_key: str | None = None,
        files: FileStore | None = None,
        session_seconds: int = 60,
        max_skew: int = MAX_CLOCK_SKEW,
        max_replays: int = 100_000,
        partial_grants: bool = True,
    ) -> None:
        self.identity = identity
        self.kind = kind
        self.location = location
        self.resource: Resource = make_resource(kind, session_seconds=session_seconds)
        self.files = files if files is not None else FileStore()
        # One clock policy: a host more lenient than the audit would sign receipts the
        # audit does not count (README section 6).
        self.max_skew = check_int("max_skew", max_skew, 0, MAX_CLOCK_SKEW)
        self.partial_grants = partial_grants
        self.verifier = AccessVerifier(
            host_id=identity.node_id,
            coordinator_key=coordinator_key,
            skew=self.max_skew,
            replay_capacity=max_replays,
        )
        # The epoch whose allocation is enforced; NO_EPOCH until the first is opened, so
        # that a credential of epoch 0 is ``future_epoch`` (the roamer may ask again later)
        # rather than refused as ``not_included`` by an empty allocation.
        self.epoch = NO_EPOCH
        self.included: frozenset[str] = frozenset()
        # Replaced, never mutated, so each request's view shares it without a copy.
        self.revoked: frozenset[str] = frozenset()
        self.shares: Mapping[str, int] | None = None
        self.owed = 0
        self.decisions: Counter[str] = Counter()
        # What each requester was granted in the enforced epoch (its share's use).
        self.granted_to: Counter[str] = Counter()
        self._costs: Mapping[str, int] = self.files.costs()
        self._ledgers: dict[int, _Ledger] = {}
        # Per epoch, (requester, nonce) -> the signed answer given (for relayed complaints).
        self._answers: dict[int, dict[tuple[str, str], _Answered]] = {}

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def coordinator_key(self) -> str | None:
        return self.verifier.coordinator_key

    @coordinator_key.setter
    def coordinator_key(self, key: str | None) -> None:
        self.verifier.coordinator_key = key

    def unfiled(self, epoch: int) -> list[Envelope]:
        """The receipts of ``epoch`` kept and not yet :meth:`filed`, in grant order (the
        current and the previous epoch are kept: an epoch's audit runs during the next
        one)."""
        book = self._ledgers.get(epoch)
        return [] if book is None else [e.receipt for e in book.entries.values()]

    def filed(self, epoch: int, receipts: Iterable[Envelope]) -> None:
        """``receipts`` (of :meth:`unfiled`) reached the coordinator, or never will: they
        leave the ledger, their sum and requests stay."""
        book = self._ledgers.get(epoch)
        if book is None:
            return
        sent = {r.signature for r in receipts}
        book.entries = {seq: e for seq, e in book.entries.items()
                        if e.receipt.signature not in sent}
        book.loose = [item for item in book.loose if item[2].seq in book.entries]
        heapq.heapify(book.loose)

    def ledger_epochs(self) -> list[int]:
        """The epochs whose ledgers are kept, oldest first."""
        return sorted(self._ledgers)

    # --- state changes driven by the agent --------------------------------------------

    def open_epoch(
        self,
        *,
        epoch: int,
        included: Iterable[str],
        opened: int,
        now: int,
        owed: int = 0,
        shares: Mapping[str, int] | None = None,
    ) -> None:
        """Enforce ``epoch``'s allocation from now on, with ``opened`` micro-units open.

        ``shares`` (compute): each included node's share bought, from the tariff; kept,
        not copied (read only; the agent's is a view of the allocation, O(1) to build).
        ``included`` is kept as is when it is a frozenset (shared by the nodes of a
        process), so opening costs no O(N) copy. Opening resets the usage of the previous
        epoch. An older epoch is refused.
        """
        if epoch < self.epoch:
            raise OutOfRangeError(f"cannot go back from epoch {self.epoch} to {epoch}")
        self.epoch = epoch
        self.included = frozenset(included)
        self.owed = owed
        self.shares = shares
        self.granted_to.clear()
        self.resource.open(opened, now=now)
        self.verifier.end_epoch(epoch)  # sessions end with their epoch
        self.decisions.clear()
        self._costs = self.files.costs()
        for old in [e for e in self._ledgers if e < epoch - 1]:
            del self._ledgers[old]
        for old in [e for e in self._answers if e < epoch - 1]:
            del self._answers[old]

    def revoke(self, node_ids: Iterable[str]) -> None:
        self.revoked = self.revoked | frozenset(node_ids)

    def probe(self, *, epoch: int, nonce: str) -> Envelope:
        """The signed answer to the coordinator's probe (README section 7, probes)."""
        return make_probe_answer(self.identity, epoch=epoch, nonce=nonce)

    # --- the access exchange ------------------------------------------------------------

    def view(self, now: int) -> HostView:
        share_used: Mapping[str, int] = {}
        if isinstance(self.resource, ComputeResource):
            share_used = self.resource.used_by()
        return HostView(
            epoch=self.epoch,
            included=self.included,
            revoked=self.revoked,
            remaining=self.resource.remaining(now),
            partial=self.partial_grants,
            unit=self.resource.UNIT,
            costs=self._costs,
            shares=self.shares if kind_of(self.kind).shares else None,
            share_used=share_used,
            # A host that owes nothing owes no roamer a share (nor is it judged).
            roamer_share=(roamer_share(self.owed, kind_of(self.kind).granularity)
                          if self.owed > 0 else None),
            granted_to=self.granted_to,
            verifier=self.verifier,
        )

    def access(self, raw: bytes, *, now: int, resource: str | None = None) -> AccessOutcome:
        """Decide and apply one access request (wire bytes)."""
        return self._apply(authorize(raw, self.view(now), now=now, resource=resource), now)

    def resolve(self, raw: bytes, *, now: int) -> AccessOutcome:
        """Answer an access request the coordinator relays from a roamer's complaint
        (README section 7, step 7; wire bytes of an access body): the signed answer this
        host already gave that request (the same receipt or refusal, byte for byte), else
        a decision now, whatever the request's age -- a grant (capacity consumed, a
        receipt) or a signed refusal, judged by the audit like any other. A body whose
        credential or signature does not verify gets a plain error, as at the gate."""
        view = self.view(now)
        if view.verifier.coordinator_key is None:
            return AccessOutcome(decision=Decision(
                granted=False, reason=UnknownKeyError.code, epoch=self.epoch,
                message="no coordinator key is trusted yet"))
        try:
            verified = view.verifier.check(raw, epoch=self.epoch, now=now, relayed=True)
        except InkindError as exc:
            return AccessOutcome(decision=Decision(
                granted=False, reason=exc.code, epoch=self.epoch, message=str(exc)))
        given = self._given(verified.requester_id, verified.request.nonce)
        if given is not None:
            return given
        return self._apply(decide(verified, view), now)

    def _apply(self, decision: Decision, now: int) -> AccessOutcome:
        """Apply a gate decision: consume and sign a receipt, or sign a refusal of a
        verified requester; remember the signed answer for a relayed complaint."""
        if decision.session is not None:
            # A session request draws on the balance of a grant the requester signed (and
            # the host counted then): no capacity consumed, nothing for the ledger.
            self.decisions[decision.reason] += 1
            if not decision.granted:
                return AccessOutcome(decision=decision)
            answer = self.verifier.sessions.grant(decision.session, decision.amount)
            return AccessOutcome(decision=decision, session_answer=answer)
        book = self._ledgers.get(decision.epoch)
        asked = None if decision.request is None or decision.requester_id is None else (
            decision.requester_id, decision.request.nonce)
        if asked is not None and (asked in self._answers.get(decision.epoch, {}) or (
                book is not None and asked in book.requests)):
            # One signed answer per (requester, nonce): the audit knows a request by
            # (host, requester, nonce) and voids a grant whose request the host also
            # refused. A request answered on its relay (outside the replay window) and
            # then sent directly, or reused once the replay window forgot it, would get a
            # second answer: a plain error, nothing signed, nothing consumed. Another
            # requester's request with the same nonce is another request, decided and
            # signed like any, so two colluders sharing a nonce cannot leave one of them
            # without a signed answer to complain about.
            decision = Decision(granted=False, reason=ReplayError.code, epoch=decision.epoch,
                                message="request already answered in this epoch")
        self.decisions[decision.reason] += 1
        request = decision.request
        who = decision.requester_id
        signed = decision.envelope
        if request is None or who is None or signed is None:
            return AccessOutcome(decision=decision)
        if not decision.granted:
            refusal = Refusal(
                epoch=decision.epoch,
                host_id=self.node_id,
                requester_id=who,
                nonce=request.nonce,
                reason=decision.reason,
                time=now,
                request=signed,  # the audit judges a refusal by the refused request
                amount=request.amount,
            )
            if decision.reason == CapacityExhaustedError.code:
                self._pin(decision.epoch, request.amount)
            return self._remember(who, AccessOutcome(
                decision=decision, refusal=seal(self.identity, refusal)))
        session_key = None
        if request.session_key is not None and decision.access is not None:
            try:  # before anything is consumed: a low-order key gets a plain bad_proof
                session_key = self.verifier.open_session(decision.access,
                                                         granted=decision.amount)
            except InkindError as exc:
                self.decisions[decision.reason] -= 1
                decision = Decision(granted=False, reason=exc.code, message=str(exc),
                                    epoch=decision.epoch)
                self.decisions[decision.reason] += 1
                return AccessOutcome(decision=decision)
        self.resource.consume(decision.amount, now=now, requester=who)
        if decision.epoch == self.epoch:
            self.granted_to[who] += decision.amount
        access = decision.access
        if access is not None and access.request is request and request.epoch == decision.epoch:
            # The request the verifier checked: what it established is not checked again.
            receipt = grant_receipt(access, host_id=self.node_id, amount=decision.amount,
                                    time=now, session_key=session_key)
        else:
            receipt = GrantReceipt(epoch=decision.epoch, host_id=self.node_id,
                                   requester_id=who, nonce=request.nonce,
                                   amount=decision.amount, time=now, request=signed,
                                   session_key=session_key)
        # seal(), with the receipt's canonical payload written directly (same bytes); the
        # embedded request is at most 1 024 bytes, so the payload is within its limit.
        payload = receipt.canonical_payload()
        if len(payload) > GrantReceipt.MAX_PAYLOAD_BYTES:
            raise TooLargeError(f"receipt payload of {len(payload)} bytes")
        envelope = Envelope.seal(self.identity, GrantReceipt.TYPE, payload)
        self._record(decision.epoch, envelope, decision.amount, (who, request.nonce))
        return self._remember(who, AccessOutcome(decision=decision, receipt=envelope))

    def _remember(self, who: str, outcome: AccessOutcome) -> AccessOutcome:
        # A roamer that got no answer (a lost connection) complains, and the coordinator
        # relays its request: the host answers with what it signed, so a grant is never
        # made twice and a refusal never changes its story. Bounded per epoch; past the
        # bound a relayed request it granted gets a plain error (README section 7, step 7).
        # Kept as one tuple (the decision's verified request, envelope and checks are not
        # needed to answer again): less for the garbage collector to walk per grant.
        decision = outcome.decision
        request = decision.request
        signed = outcome.receipt if outcome.receipt is not None else outcome.refusal
        assert request is not None and signed is not None
        answers = self._answers.setdefault(decision.epoch, {})
        if len(answers) < MAX_ANSWERS:
            answers.setdefault((who, request.nonce),
                               (decision.reason, decision.message, decision.amount, request,
                                signed))
        return outcome

    def _given(self, who: str, nonce: str) -> AccessOutcome | None:
        """The signed answer this host gave (``who``, ``nonce``) in its epoch, if kept."""
        kept = self._answers.get(self.epoch, {}).get((who, nonce))
        if kept is None:
            return None
        reason, message, amount, request, signed = kept
        granted = reason == GRANTED
        decision = Decision(granted=granted, reason=reason, message=message, epoch=self.epoch,
                            amount=amount, requester_id=who, request=request)
        if granted:
            return AccessOutcome(decision=decision, receipt=signed)
        return AccessOutcome(decision=decision, refusal=signed)

    def _record(self, epoch: int, receipt: Envelope, amount: int,
                request: tuple[str, str]) -> None:
        # The audit judges a capacity refusal by the sum of the host's receipts before it
        # (coordinator.enforcement): once the receipts kept or filed add up to what was
        # opened, every later refusal is justified and later receipts need not be kept.
        # Below that every receipt is kept; a full ledger (a flood between two filings)
        # keeps the larger receipt -- tiny grants taken first must not crowd out the large
        # one that exhausted the host -- but never drops one pinned as the proof of a
        # refusal already signed (a later grant cannot justify it).
        book = self._ledgers.setdefault(epoch, _Ledger())
        if book.total >= self.resource.opened:
            return
        if len(book.entries) >= MAX_LEDGER:
            smallest = book.smallest_loose()
            if smallest is not None:
                if smallest.amount >= amount:
                    return
                book.evict(smallest)
            elif len(book.entries) >= 2 * MAX_LEDGER:
                return
        book.add(receipt, amount, request)

    def _pin(self, epoch: int, asked: int) -> None:
        # The gate refused ``asked`` for capacity: the receipts granted so far leave less
        # than ``asked`` of what was opened. Pin the fewest kept receipts (pinned ones
        # first, then the largest) whose sum shows it, so they stay until filed.
        book = self._ledgers.get(epoch)
        if book is None:
            return
        # Filed receipts count too (the coordinator holds them).
        filed = book.total - sum(e.amount for e in book.entries.values())
        need = self.resource.opened - asked + 1 - filed
        order = sorted(book.entries.values(), key=lambda e: (not e.pinned, -e.amount))
        chosen: list[_Entry] = []
        total = 0
        for entry in order:
            if total >= need:
                break
            chosen.append(entry)
            total += entry.amount
        if total >= need:  # else the kept receipts cannot show it: pin nothing
            for entry in chosen:
                entry.pinned = True

    def status(self, now: int) -> dict[str, object]:
        """Unsigned operator JSON (``GET /v1/status``); quantities in micro-units."""
        grants = self.decisions.get("granted", 0)
        return {
            "node_id": self.node_id,
            "location": self.location,
            "kind": self.kind,
            "epoch": self.epoch if self.epoch != NO_EPOCH else None,
            "unit": "micro-units (1 unit = 1000000)",
            "owed": self.owed,
            "opened": self.resource.opened,
            "in_use": self.resource.in_use(now),
            "remaining": self.resource.remaining(now),
            "granted_total": self.resource.granted_total,
            "grants": grants,
            "refusals": {k: v for k, v in sorted(self.decisions.items()) if k != "granted"},
            "included": len(self.included),
            "files": len(self.files),
        }
