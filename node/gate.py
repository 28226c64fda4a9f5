"""The host's access gate: one pure function, :func:`authorize`, deny by default.

A host admits a roaming (downloading, computing) peer only if the coordinator included
it in the epoch's allocation, and only within the capacity the host contributed
(DESIGN "One epoch, end to end", step 6; protocol README section 7). The checks, in
order; the first that fails decides, and every decision carries a wire error code as its
machine-readable ``reason``:

1. the cryptographic part, :meth:`protocol.AccessVerifier.check`: the body's form
   (``malformed``, ...), the credential (remembered by digest, or its coordinator
   signature: ``unknown_key``, ``bad_signature``), its epoch (``stale_epoch``,
   ``future_epoch``) and validity window with the protocol's clock skew
   (``not_yet_valid``, ``expired``), proof of possession (``bad_proof``,
   ``bad_signature``: signed by the credential's key, for this host, this credential and
   its epoch) and last freshness and replay (``expired``, ``not_yet_valid``,
   ``replay``). A request failing here gets a plain error, never a signed refusal: it
   may not come from the requester it names (a replay, say);
2. policy, only once the requester's identity is proven: revocation (``revoked``),
   inclusion in the allocation (``not_included``), the resource the endpoint serves and
   the amount's form (``out_of_range``: wrong resource, not a whole number of channels,
   not the file's size, more than the requester's remaining compute share), and the
   host's remaining contributed capacity and the requester's share of it
   (``capacity_exhausted``: a requester is granted at most
   :func:`protocol.messages.roamer_share` of what the host owes per epoch, so one
   roamer cannot drain a host; a file's first grant is exempt).

A *session request* (README section 7.1: a later request in a session opened by a granted
signed request) is checked by :meth:`protocol.AccessVerifier.check_session` (``bad_proof``
for another host or a wrong MAC, ``unknown_session``, ``expired``, ``replay``), then by
policy: revocation, the resource and amount's form as above, and the session's balance
(``out_of_range``: it is the requester's own bound, signed in its first request). It is
never refused with a signed refusal (nothing a MAC authenticates is evidence).

Partial grants: when the host has some capacity left but less than asked, a divisible
resource (coverage, whole channels, compute) is granted what is left, rounded down to the
unit, and the receipt says so (``amount`` granted); ``capacity_exhausted`` is answered
only when nothing (no whole unit) is left, or for an indivisible resource (a file) that
does not fit. So a host never refuses for capacity while it still has some, which is
what the coordinator's audit holds it to (receipts reaching the committed capacity).

Only a request that passes every check is granted; an exception that is not an
:class:`~protocol.InkindError` is a bug and propagates (the request is not granted).

Purity: the gate reads the clock from ``now`` and the host's state from ``view``, an
immutable snapshot, and changes nothing -- except the host's
:class:`~protocol.AccessVerifier` (``view.verifier``): it remembers a verified
credential, and a fully verified request's nonce, which is what makes a request single
use. Applying a grant (consuming capacity, signing the
receipt) is the caller's job (:mod:`node.host`), so a refused request never changes the
host's capacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from protocol import (
    AccessRequest,
    AccessVerifier,
    Envelope,
    InkindError,
    VerifiedAccess,
    error_from_code,
)
from protocol.errors import (
    CapacityExhaustedError,
    NotIncludedError,
    OutOfRangeError,
    RevokedError,
    UnknownKeyError,
)
from protocol.session import VerifiedSession

#: The reason of a granted decision (every other reason is a wire error code).
GRANTED = "granted"

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class HostView:
    """What the host knows when a request arrives (a snapshot; build one per request).

    * ``epoch``: the epoch of the allocation the host enforces;
    * ``included``: that allocation's included node ids; ``revoked``: ids revoked or
      excluded since (they are refused even if included);
    * ``remaining``: the host's remaining contributed capacity, micro-units of its kind;
      ``partial``: whether less than asked may be granted (see the module docstring);
    * ``unit``: the granularity of an amount (one WLAN channel = 1 000 000; else 1);
    * ``costs``: exact amounts of named resources (a file's size in bytes);
    * ``shares``: per requester, the compute share bought this epoch (None: no
      per-requester limit); ``share_used``: what each requester already used here;
    * ``roamer_share``: the most one requester may be granted here this epoch
      (:func:`protocol.messages.roamer_share` of what the host owes; None: no limit);
      ``granted_to``: what each requester was granted here this epoch;
    * ``verifier``: the host's access verifier, which holds the trusted coordinator key,
      the clock skew and the host's id (the one mutable thing the gate touches); no
      coordinator key trusted yet: every request is refused ``unknown_key``.
    """

    epoch: int
    included: frozenset[str]
    revoked: frozenset[str] = frozenset()
    remaining: int
    partial: bool = True
    unit: int = 1
    costs: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    shares: Mapping[str, int] | None = None
    share_used: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    roamer_share: int | None = None
    granted_to: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    verifier: AccessVerifier


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The gate's answer. ``reason`` is ``"granted"`` or a wire error code; ``amount`` is
    what is granted (at most what was asked; 0 when refused).

    ``requester_id`` and ``request`` are set once the proof of possession verified: only
    then may the host sign a refusal naming the requester (an unverified request gets a
    plain error, never a signed statement about someone it may not come from).
    """

    granted: bool
    reason: str
    message: str = ""
    epoch: int
    amount: int = 0
    requester_id: str | None = None
    request: AccessRequest | None = None
    envelope: Envelope | None = None  # the signed request, once verified
    access: VerifiedAccess | None = None  # the verified signed request (opens a session)
    session: VerifiedSession | None = None  # a session request whose MAC verified

    @property
    def verified(self) -> bool:
        return self.request is not None

    def error(self) -> InkindError:
        """The refusal as a typed error (for the service's error answer)."""
        if self.granted:
            raise ValueError("a granted decision is not an error")
        return error_from_code(self.reason, self.message or self.reason)


def authorize(request: bytes, view: HostView, *, now: int, resource: str | None = None) -> Decision:
    """Decide an access request (wire bytes of an access body, :class:`protocol.AccessBody`).

    ``resource``, if given, is what the endpoint serves (``"file:" + sha256``,
    ``"compute"``): the request must name exactly it. Deny by default: the only
    ``granted=True`` is the last line.
    """
    if view.verifier.coordinator_key is None:
        return _deny(UnknownKeyError("no coordinator key is trusted yet"), view.epoch)
    try:
        verified = view.verifier.check_any(request, epoch=view.epoch, now=now)
    except InkindError as exc:
        return _deny(exc, view.epoch)
    if isinstance(verified, VerifiedSession):
        return _authorize_session(verified, view, resource=resource)
    return decide(verified, view, resource=resource)


def decide(verified: VerifiedAccess, view: HostView, *, resource: str | None = None) -> Decision:
    """The policy decision (step 2 of the module docstring) on a request whose
    cryptographic checks passed: :func:`authorize`'s second half, and all of the answer
    to a request the coordinator relays from a roamer's complaint (which is decided
    whatever its age: ``AccessVerifier.check(relayed=True)``)."""
    req = verified.request
    who = verified.requester_id
    try:
        amount = _check_policy(req, who, view, resource)
    except InkindError as exc:
        return _deny(exc, view.epoch, requester_id=who, request=req,
                     envelope=verified.envelope)
    return Decision(
        granted=True,
        reason=GRANTED,
        epoch=view.epoch,
        amount=amount,
        requester_id=who,
        request=req,
        envelope=verified.envelope,
        access=verified,
    )


def _authorize_session(checked: VerifiedSession, view: HostView, *,
                       resource: str | None) -> Decision:
    """Decide a session request whose MAC and counter verified (module docstring)."""
    body = checked.request
    who = checked.requester_id
    try:
        if who in view.revoked:
            raise RevokedError(f"node {who[:16]}... is revoked")
        _check_form(body.resource, body.amount, view, resource)
        if body.amount > checked.balance:
            raise OutOfRangeError(
                f"amount {body.amount} exceeds the session's balance {checked.balance}")
    except InkindError as exc:
        return Decision(granted=False, reason=exc.code, message=str(exc), epoch=view.epoch,
                        requester_id=who, session=checked)
    return Decision(granted=True, reason=GRANTED, epoch=view.epoch, amount=body.amount,
                    requester_id=who, session=checked)


def _check_form(asked: str | None, amount: int, view: HostView, resource: str | None) -> bool:
    """Raise ``out_of_range`` unless the request names the endpoint's ``resource`` and its
    amount has the form the resource wants; return whether it is indivisible (a file)."""
    if resource is not None and asked != resource:
        raise OutOfRangeError(f"this endpoint serves {resource!r}, not {asked!r}")
    if amount % view.unit:
        raise OutOfRangeError(f"amount must be a multiple of {view.unit}")
    indivisible = asked is not None and asked in view.costs
    if asked is not None and indivisible:
        cost = view.costs[asked]
        if amount != cost:
            raise OutOfRangeError(f"{asked} costs exactly {cost}, not {amount}")
    return indivisible


def _check_policy(req: AccessRequest, who: str, view: HostView, resource: str | None) -> int:
    """Raise the first policy refusal, or return the amount to grant."""
    if who in view.revoked:
        raise RevokedError(f"node {who[:16]}... is revoked")
    if who not in view.included:
        raise NotIncludedError(f"node {who[:16]}... is not included in epoch {view.epoch}")
    indivisible = _check_form(req.resource, req.amount, view, resource)
    if view.shares is not None:
        left = view.shares.get(who, 0) - view.share_used.get(who, 0)
        if req.amount > left:
            # The requester's own limit, not the host's: out_of_range rather than
            # capacity_exhausted, so an audit never reads it as a host refusing service.
            raise OutOfRangeError(f"amount {req.amount} exceeds the share left ({left})")
    limit, what = view.remaining, "the remaining capacity"
    if view.roamer_share is not None:
        got = view.granted_to.get(who, 0)
        # An item's first grant is never held to the share (a file larger than a share
        # could never be served); any later one is, as is every divisible grant.
        if got > 0 or not indivisible:
            share_left = max(0, view.roamer_share - got)
            if share_left < limit:
                limit, what = share_left, "the requester's share left here"
    if req.amount <= limit:
        return req.amount
    left = limit - limit % view.unit
    if view.partial and not indivisible and left > 0:
        return left
    raise CapacityExhaustedError(f"amount {req.amount} exceeds {what} ({limit})")


def _deny(
    exc: InkindError,
    epoch: int,
    *,
    requester_id: str | None = None,
    request: AccessRequest | None = None,
    envelope: Envelope | None = None,
) -> Decision:
    return Decision(
        granted=False,
        reason=exc.code,
        message=str(exc),
        epoch=epoch,
        requester_id=requester_id,
        request=request,
        envelope=envelope,
    )
