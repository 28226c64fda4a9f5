"""The host core, sans-I/O: what a node knows and does as a host, one call per request.

:class:`Host` holds the node's identity, its resource accounting (:mod:`node.resources`),
its access verifier (remembered credentials, the replay window), the allocation it
enforces and its counters. :meth:`Host.access` runs the gate
(:func:`node.gate.authorize`) on a snapshot of that state, then applies the decision: a
grant consumes capacity and is answered with a signed ``grant_receipt`` embedding the
roamer's signed request; a refusal of a verified requester is answered with a signed
``refusal`` carrying the reason code; an unverified request gets only the error
(nobody's name is signed for it).

The host's **ledger** (:meth:`Host.ledger`) is every receipt it signed in an epoch. It
files them in its own audit report (README section 7, step 5): each is backed by the
roamer's signature, so a roamer that drains the host and hides its receipt cannot make
the host's later ``capacity_exhausted`` refusals look unjustified.

Time is the argument ``now`` (integer Unix seconds). The aiohttp service
(:mod:`node.service`) is a thin shell over this class, and tests drive it directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node.files import FileStore
from node.gate import Decision, HostView, authorize
from node.resources import ComputeResource, Resource, make_resource
from protocol import (
    MAX_CLOCK_SKEW,
    AccessVerifier,
    Envelope,
    GrantReceipt,
    Identity,
    Refusal,
    make_probe_answer,
    seal,
)
from protocol.errors import OutOfRangeError, ReplayError
from protocol.fields import check_int
from protocol.kinds import kind_of
from protocol.messages import MAX_AUDIT_ITEMS

#: ``Host.epoch`` before any allocation is enforced (every credential is then future).
NO_EPOCH = -1
#: Most receipts kept in one epoch's ledger: half an audit report, so the ledger and the
#: node's own roaming evidence travel in one report.
MAX_LEDGER = MAX_AUDIT_ITEMS // 2


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessOutcome:
    """A decision and what to answer: the receipt or refusal envelope, if any."""

    decision: Decision
    receipt: Envelope | None = None
    refusal: Envelope | None = None

    @property
    def granted(self) -> bool:
        return self.decision.granted


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
        self.revoked: set[str] = set()
        self.shares: Mapping[str, int] | None = None
        self.owed = 0
        self.decisions: Counter[str] = Counter()
        self._costs: Mapping[str, int] = self.files.costs()
        self._ledgers: dict[int, list[Envelope]] = {}
        self._ledger_sums: dict[int, int] = {}
        self._ledger_nonces: dict[int, set[str]] = {}

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def coordinator_key(self) -> str | None:
        return self.verifier.coordinator_key

    @coordinator_key.setter
    def coordinator_key(self, key: str | None) -> None:
        self.verifier.coordinator_key = key

    def ledger(self, epoch: int) -> list[Envelope]:
        """The receipts this host signed in ``epoch`` (the current and the previous
        epoch are kept: an epoch's audit runs during the next one)."""
        return list(self._ledgers.get(epoch, ()))

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

        ``shares`` (compute): each included node's share bought, from the tariff.
        Opening resets the usage of the previous epoch. An older epoch is refused.
        """
        if epoch < self.epoch:
            raise OutOfRangeError(f"cannot go back from epoch {self.epoch} to {epoch}")
        self.epoch = epoch
        self.included = frozenset(included)
        self.owed = owed
        self.shares = dict(shares) if shares is not None else None
        self.resource.open(opened, now=now)
        self.decisions.clear()
        self._costs = self.files.costs()
        for old in [e for e in self._ledgers if e < epoch - 1]:
            del self._ledgers[old]
            self._ledger_sums.pop(old, None)
            self._ledger_nonces.pop(old, None)

    def revoke(self, node_ids: Iterable[str]) -> None:
        self.revoked.update(node_ids)

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
            revoked=frozenset(self.revoked),
            remaining=self.resource.remaining(now),
            partial=self.partial_grants,
            unit=self.resource.UNIT,
            costs=self._costs,
            shares=self.shares if kind_of(self.kind).shares else None,
            share_used=share_used,
            verifier=self.verifier,
        )

    def access(self, raw: bytes, *, now: int, resource: str | None = None) -> AccessOutcome:
        """Decide and apply one access request (wire bytes)."""
        decision = authorize(raw, self.view(now), now=now, resource=resource)
        if decision.granted and decision.request is not None and (
                decision.request.nonce in self._ledger_nonces.get(decision.epoch, ())):
            # The audit knows a grant by (host, nonce): a second grant under a nonce of
            # the ledger (a requester reusing it once the replay window forgot it) would
            # shadow the ledger entry. Plain error, nothing signed, nothing consumed.
            decision = Decision(granted=False, reason=ReplayError.code, epoch=decision.epoch,
                                message="nonce already granted in this epoch")
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
            return AccessOutcome(decision=decision, refusal=seal(self.identity, refusal))
        self.resource.consume(decision.amount, now=now, requester=who)
        receipt = GrantReceipt(
            epoch=decision.epoch,
            host_id=self.node_id,
            requester_id=who,
            nonce=request.nonce,
            amount=decision.amount,
            time=now,
            request=signed,
        )
        envelope = seal(self.identity, receipt)
        self._record(decision.epoch, envelope, decision.amount, request.nonce)
        return AccessOutcome(decision=decision, receipt=envelope)

    def _record(self, epoch: int, receipt: Envelope, amount: int, nonce: str) -> None:
        # The earliest grants are what justify later capacity refusals (the audit counts
        # receipts up to each refusal's time), and once they add up to what was opened
        # every later refusal is justified: later receipts need not be kept.
        ledger = self._ledgers.setdefault(epoch, [])
        used = self._ledger_sums.get(epoch, 0)
        if len(ledger) < MAX_LEDGER and used < self.resource.opened:
            ledger.append(receipt)
            self._ledger_sums[epoch] = used + amount
            self._ledger_nonces.setdefault(epoch, set()).add(nonce)

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
