"""The host core, sans-I/O: what a node knows and does as a host, one call per request.

:class:`Host` holds the node's identity, its resource accounting (:mod:`node.resources`),
its challenge book, the allocation it enforces and its counters. :meth:`Host.access`
runs the gate (:func:`node.gate.authorize`) on a snapshot of that state, then applies the
decision: a grant consumes capacity and is answered with a signed ``grant_receipt``; a
refusal of a verified requester is answered with a signed ``refusal`` carrying the reason
code; an unverified request gets only the error (nobody's name is signed for it).

Time is the argument ``now`` (integer Unix seconds). The aiohttp service
(:mod:`node.service`) is a thin shell over this class, and tests drive it directly.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from node.files import FileStore
from node.gate import Decision, HostView, authorize
from node.resources import ComputeResource, Resource, make_resource
from protocol import (
    Challenge,
    ChallengeBook,
    Envelope,
    GrantReceipt,
    Identity,
    Refusal,
    seal,
)
from protocol.errors import OutOfRangeError
from protocol.kinds import kind_of
from protocol.verify import DEFAULT_MAX_SKEW

#: ``Host.epoch`` before any allocation is enforced (every credential is then future).
NO_EPOCH = -1


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
        max_skew: int = DEFAULT_MAX_SKEW,
        challenge_ttl: int = 30,
        max_challenges: int = 10_000,
        partial_grants: bool = True,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.kind = kind
        self.location = location
        self.coordinator_key = coordinator_key
        self.resource: Resource = make_resource(kind, session_seconds=session_seconds)
        self.files = files if files is not None else FileStore()
        self.max_skew = max_skew
        self.partial_grants = partial_grants
        self.challenges = ChallengeBook(ttl=challenge_ttl, capacity=max_challenges, rng=rng)
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

    @property
    def node_id(self) -> str:
        return self.identity.node_id

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

    def revoke(self, node_ids: Iterable[str]) -> None:
        self.revoked.update(node_ids)

    def issue_challenge(self, now: int) -> Challenge:
        return self.challenges.issue(now)

    # --- the access exchange ------------------------------------------------------------

    def view(self, now: int) -> HostView:
        share_used: Mapping[str, int] = {}
        if isinstance(self.resource, ComputeResource):
            share_used = self.resource.used_by()
        return HostView(
            host_id=self.node_id,
            coordinator_key=self.coordinator_key,
            epoch=self.epoch,
            included=self.included,
            revoked=frozenset(self.revoked),
            remaining=self.resource.remaining(now),
            partial=self.partial_grants,
            unit=self.resource.UNIT,
            costs=self._costs,
            shares=self.shares if kind_of(self.kind).shares else None,
            share_used=share_used,
            max_skew=self.max_skew,
            challenges=self.challenges,
        )

    def access(self, raw: bytes, *, now: int, resource: str | None = None) -> AccessOutcome:
        """Decide and apply one access request (wire bytes)."""
        decision = authorize(raw, self.view(now), now=now, resource=resource)
        self.decisions[decision.reason] += 1
        request = decision.request
        who = decision.requester_id
        if request is None or who is None:
            return AccessOutcome(decision=decision)
        if not decision.granted:
            refusal = Refusal(
                epoch=decision.epoch,
                host_id=self.node_id,
                requester_id=who,
                challenge=request.challenge,
                reason=decision.reason,
                time=now,
                amount=request.amount,  # the audit judges capacity refusals by it
            )
            return AccessOutcome(decision=decision, refusal=seal(self.identity, refusal))
        self.resource.consume(decision.amount, now=now, requester=who)
        receipt = GrantReceipt(
            epoch=decision.epoch,
            host_id=self.node_id,
            requester_id=who,
            challenge=request.challenge,
            amount=decision.amount,
            time=now,
        )
        return AccessOutcome(decision=decision, receipt=seal(self.identity, receipt))

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
