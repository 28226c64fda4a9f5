"""The access exchange and the coordinator's probe, sans-I/O (README section 7).

One round trip: the roamer sends an *access body*, its credential envelope beside an
``access_request`` it signed with the credential's key, bound to the host
(``host_id``), the epoch, the moment (``issued``, its clock) and a fresh ``nonce``, and
naming the credential by digest. The host answers with a signed ``grant_receipt``
(which embeds the granted request: the ledger entry the audit counts) or ``refusal``.

* Roamer side: :func:`make_access_request` builds the body; :func:`check_receipt` and
  :func:`check_refusal` check that an answer answers that body.
* Host side: :class:`AccessVerifier` holds the two bounded tables (verified credentials
  by digest, :class:`~protocol.guards.CredentialCache`; requests seen in the skew window,
  :class:`~protocol.guards.ReplayWindow`) and checks a body at ``now`` with at most one
  Ed25519 verification once the credential is known.
* Probes: :func:`make_probe_answer` (host) and :func:`check_probe_answer` (coordinator).

Nothing here reads a clock or the network: ``now`` and the random source are arguments.
Policy (revocation, inclusion, capacity) is the host's (``node.gate.authorize``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from protocol.encoding import canonical, decode, decode_object
from protocol.envelope import Envelope, envelope_size_limit, signing_input
from protocol.errors import (
    BadProofError,
    WrongSignerError,
    WrongTypeError,
)
from protocol.fields import MAX_CLOCK_SKEW, NONCE_BYTES, check_nonce, check_object
from protocol.guards import CredentialCache, ReplayWindow
from protocol.identity import Identity
from protocol.messages import AccessRequest, Credential, GrantReceipt, ProbeAnswer, Refusal
from protocol.verify import check_epoch, check_validity, open_embedded, open_envelope, seal

#: Largest access body: the two envelopes and the JSON around them, bytes.
MAX_ACCESS_BODY_BYTES = (
    envelope_size_limit(AccessRequest.MAX_PAYLOAD_BYTES)
    + envelope_size_limit(Credential.MAX_PAYLOAD_BYTES)
    + 64
)
ACCESS_BODY_FIELDS = frozenset({"credential", "request"})
Random = Callable[[int], bytes]


def credential_digest(credential: Envelope) -> str:
    """SHA-256 (hex) of the signer's raw key, the signature and the signing input: it
    names one signed credential exactly (README section 7)."""
    data = signing_input(credential.type, credential.payload)
    return hashlib.sha256(
        bytes.fromhex(credential.signer) + credential.signature + data
    ).hexdigest()


def _unverified_credential(credential: Envelope) -> Credential:
    # The roamer got its credential from the coordinator (verified then); here it only
    # reads the epoch to bind its request to.
    payload = decode_object(
        credential.payload, max_bytes=Credential.MAX_PAYLOAD_BYTES, max_depth=Credential.MAX_DEPTH
    )
    return Credential.from_payload(payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessBody:
    """What a roamer POSTs: its signed request and the credential it names."""

    request: Envelope
    credential: Envelope

    def __post_init__(self) -> None:
        if not isinstance(self.request, Envelope) or not isinstance(self.credential, Envelope):
            raise WrongTypeError("access body: expected two envelopes")

    def to_bytes(self) -> bytes:
        """Canonical JSON ``{"credential": ENVELOPE, "request": ENVELOPE}``."""
        return canonical(
            {"credential": dict(self.credential.to_obj()), "request": dict(self.request.to_obj())}
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> AccessBody:
        """Parse a body (``too_large`` over :data:`MAX_ACCESS_BODY_BYTES`); the envelopes'
        signatures are not checked here."""
        obj = check_object(
            "access body", decode(raw, max_bytes=MAX_ACCESS_BODY_BYTES, max_depth=2),
            ACCESS_BODY_FIELDS,
        )
        return cls(
            request=Envelope.from_obj(obj["request"]),
            credential=Envelope.from_obj(obj["credential"]),
        )


def make_access_request(
    identity: Identity,
    credential: Envelope,
    *,
    host_id: str,
    amount: int,
    now: int,
    resource: str | None = None,
    rng: Random = os.urandom,
) -> AccessBody:
    """The body a roamer sends (README section 7, step 1): a fresh nonce from ``rng``,
    ``issued = now`` (the roamer's clock, Unix seconds), signed by ``identity``, which
    must hold ``credential``'s key (``wrong_signer`` otherwise)."""
    cred = _unverified_credential(credential)
    if cred.public_key != identity.public_key:
        raise WrongSignerError("the credential belongs to another key")
    nonce = rng(NONCE_BYTES)
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"rng must return {NONCE_BYTES} bytes")
    request = AccessRequest(
        credential_digest=credential_digest(credential),
        host_id=host_id,
        epoch=cred.epoch,
        issued=now,
        nonce=nonce.hex(),
        amount=amount,
        resource=resource,
    )
    return AccessBody(request=seal(identity, request), credential=credential)


def request_of(answer: GrantReceipt | Refusal) -> AccessRequest:
    """The request a receipt or refusal embeds, parsed (its signature is checked where
    the answer enters: by the roamer against what it sent, by the coordinator in
    :func:`protocol.verify.open_evidence`)."""
    payload = decode_object(
        answer.request.payload,
        max_bytes=AccessRequest.MAX_PAYLOAD_BYTES,
        max_depth=AccessRequest.MAX_DEPTH,
    )
    return AccessRequest.from_payload(payload)


def check_receipt(receipt: GrantReceipt, body: AccessBody) -> None:
    """A receipt must answer this body: the very request (so host, nonce, requester and
    epoch are the body's and the amount at most what was asked:
    :class:`~protocol.messages.GrantReceipt` checks)."""
    if receipt.request != body.request:
        raise BadProofError("receipt is for another request")


def check_refusal(refusal: Refusal, body: AccessBody) -> None:
    """A refusal must answer this body: the very request (so host, nonce, requester,
    epoch and amount asked are the body's, :class:`~protocol.messages.Refusal` checks)."""
    if refusal.request != body.request:
        raise BadProofError("refusal is for another request")


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedAccess:
    """An access body whose credential and proof of possession verified, fresh, once."""

    requester_id: str
    credential: Credential
    request: AccessRequest
    envelope: Envelope  # the signed request, for the receipt


class AccessVerifier:
    """The host's cryptographic check of access bodies (README section 7, step 2).

    ``coordinator_key`` None: nothing is trusted yet (``unknown_key``). Changing it
    forgets every remembered credential.
    """

    __slots__ = ("_coordinator_key", "credentials", "host_id", "replays")

    def __init__(
        self,
        *,
        host_id: str,
        coordinator_key: str | None = None,
        skew: int = MAX_CLOCK_SKEW,
        replay_capacity: int = 100_000,
        credential_capacity: int = 1 << 16,
    ) -> None:
        self.host_id = host_id
        self._coordinator_key = coordinator_key
        self.credentials: CredentialCache[Credential] = CredentialCache(
            capacity=credential_capacity
        )
        self.replays = ReplayWindow(skew=skew, capacity=replay_capacity)

    @property
    def coordinator_key(self) -> str | None:
        return self._coordinator_key

    @coordinator_key.setter
    def coordinator_key(self, key: str | None) -> None:
        if key != self._coordinator_key:
            self.credentials.clear()
        self._coordinator_key = key

    def credential(self, envelope: Envelope) -> tuple[str, Credential]:
        """``(digest, credential)``: from the cache, or verified (one Ed25519 check) and
        remembered. Raises ``unknown_key`` (untrusted signer), ``bad_signature``, ..."""
        digest = credential_digest(envelope)
        cached = self.credentials.get(digest)
        if cached is not None:
            return digest, cached
        trusted = frozenset() if self._coordinator_key is None else {self._coordinator_key}
        _, cred = open_embedded(envelope, Credential, trusted=trusted)
        self.credentials.put(digest, cred)
        return digest, cred

    def check(self, raw: bytes, *, epoch: int, now: int,
              relayed: bool = False) -> VerifiedAccess:
        """Check an access body (wire bytes) for the host enforcing ``epoch`` at ``now``.

        In order, cheapest first and every signature before what it covers is trusted:
        the body's form; the credential (remembered, or its coordinator signature), its
        epoch (``stale_epoch``, ``future_epoch``) and window with skew (``not_yet_valid``,
        ``expired``); the request's signer is the credential's key (``bad_proof``) -- only
        then its signature (``bad_signature``) and payload; it names this host, that
        credential and its epoch (``bad_proof``); and last freshness and replay
        (``expired``, ``not_yet_valid``, ``replay``), so only a fully verified request is
        remembered. A ``future_epoch`` credential leaves no trace, so the same body can be
        decided again once the host enforces that epoch.

        ``relayed``: the body is a roamer's complaint relayed by the coordinator (README
        section 7, step 7): every check but the last, since the request is an old one the
        host must answer (again) whatever its age; nothing is remembered.
        """
        body = AccessBody.from_bytes(raw)
        digest, cred = self.credential(body.credential)
        check_epoch(cred.epoch, current=epoch)
        check_validity(cred.not_before, cred.expires, now=now, max_skew=self.replays.skew)
        if body.request.signer != cred.public_key:
            raise BadProofError("access request is not signed by the credential's key")
        _, request = open_embedded(body.request, AccessRequest, trusted=None)
        if request.host_id != self.host_id:
            raise BadProofError("access request is addressed to another host")
        if request.credential_digest != digest:
            raise BadProofError("access request names another credential")
        if request.epoch != cred.epoch:
            raise BadProofError("access request is bound to another epoch")
        if not relayed:
            self.replays.check_and_record(cred.node_id, request.nonce, request.issued, now)
        return VerifiedAccess(
            requester_id=cred.node_id, credential=cred, request=request, envelope=body.request
        )


# --- probes -------------------------------------------------------------------------------


def make_probe_answer(identity: Identity, *, epoch: int, nonce: str) -> Envelope:
    """A host's answer to the coordinator's probe ``(epoch, nonce)``."""
    return seal(identity, ProbeAnswer(epoch=epoch, host_id=identity.node_id, nonce=nonce))


def check_probe_answer(raw: bytes, *, host_key: str, epoch: int, nonce: str) -> ProbeAnswer:
    """Verify a probe answer: signed by ``host_key`` (``unknown_key`` otherwise), for the
    host that key identifies (``wrong_signer``), this epoch and this nonce (``bad_proof``)."""
    check_nonce("nonce", nonce)
    _, answer = open_envelope(raw, ProbeAnswer, trusted=frozenset({host_key}))
    if answer.epoch != epoch or answer.nonce != nonce:
        raise BadProofError("probe answer is for another probe")
    return answer
