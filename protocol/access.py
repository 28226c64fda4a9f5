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
* Sessions (README section 7.1, :mod:`protocol.session`): a request with a
  ``session_key`` opens, when granted, a session whose later requests are MACed
  (:meth:`AccessVerifier.open_session`, :meth:`AccessVerifier.check_session`);
  :func:`parse_access` tells the two bodies apart.
* Probes: :func:`make_probe_answer` (host) and :func:`check_probe_answer` (coordinator).

Nothing here reads a clock or the network: ``now`` and the random source are arguments.
Policy (revocation, inclusion, capacity) is the host's (``node.gate.authorize``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.encoding import canonical, decode, decode_object
from protocol.envelope import Envelope, envelope_size_limit, payload_from_b64, signing_input
from protocol.errors import (
    BadProofError,
    OutOfRangeError,
    TooLargeError,
    WrongSignerError,
    WrongTypeError,
)
from protocol.fields import (
    MAX_CLOCK_SKEW,
    MAX_TIME,
    NONCE_BYTES,
    check_int,
    check_nonce,
    check_object,
    check_time,
)
from protocol.guards import CredentialCache, ReplayWindow
from protocol.identity import Identity, VerifyKey, check_strong_public_key
from protocol.messages import (
    MAX_QUANTITY_MICRO,
    AccessRequest,
    Credential,
    GrantReceipt,
    ProbeAnswer,
    Refusal,
    check_session_key,
    unchecked,
)
from protocol.session import (
    MAX_SESSION_BODY_BYTES,
    SessionRequest,
    SessionTable,
    VerifiedSession,
    derive_keys,
    parse_canonical_session,
    public_hex,
)
from protocol.verify import check_epoch, check_validity, open_embedded, open_envelope, seal

#: Largest access body: the two envelopes and the JSON around them, bytes.
MAX_ACCESS_BODY_BYTES = (
    envelope_size_limit(AccessRequest.MAX_PAYLOAD_BYTES)
    + envelope_size_limit(Credential.MAX_PAYLOAD_BYTES)
    + 64
)
ACCESS_BODY_FIELDS = frozenset({"credential", "request"})
#: A canonical access body (what :meth:`AccessBody.to_bytes` writes), exactly: groups are
#: the credential's base64 payload, signature and signer, then the request's.
_CANONICAL_BODY = re.compile(
    rb'\{"credential":\{"payload":"([A-Za-z0-9+/]+={0,2})","signature":"([0-9a-f]{128})",'
    rb'"signer":"([0-9a-f]{64})","type":"credential"\},'
    rb'"request":\{"payload":"([A-Za-z0-9+/]+={0,2})","signature":"([0-9a-f]{128})",'
    rb'"signer":"([0-9a-f]{64})","type":"access_request"\}\}'
)
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
        return cls.from_obj(decode(raw, max_bytes=MAX_ACCESS_BODY_BYTES, max_depth=2))

    @classmethod
    def from_obj(cls, value: object) -> AccessBody:
        """From the decoded JSON object (exactly ``credential`` and ``request``)."""
        obj = check_object("access body", value, ACCESS_BODY_FIELDS)
        return cls(
            request=Envelope.from_obj(obj["request"]),
            credential=Envelope.from_obj(obj["credential"]),
        )


def parse_access(raw: bytes) -> AccessBody | SessionRequest:
    """What a host endpoint receives: an access body, or (an object with a ``session``
    field) a session request (README section 7.1). Size, depth and fields as each one's
    own parser."""
    fast = parse_canonical_session(raw)
    if fast is not None:
        return fast
    obj = decode(raw, max_bytes=MAX_ACCESS_BODY_BYTES, max_depth=2)
    if isinstance(obj, dict) and "session" in obj:
        if len(raw) > MAX_SESSION_BODY_BYTES:
            raise TooLargeError(f"session request over {MAX_SESSION_BODY_BYTES} bytes")
        return SessionRequest.from_obj(obj)
    return AccessBody.from_obj(obj)


def make_access_request(
    identity: Identity,
    credential: Envelope,
    *,
    host_id: str,
    amount: int,
    now: int,
    resource: str | None = None,
    rng: Random = os.urandom,
    session_key: str | None = None,
) -> AccessBody:
    """The body a roamer sends (README section 7, step 1): a fresh nonce from ``rng``,
    ``issued = now`` (the roamer's clock, Unix seconds), signed by ``identity``, which
    must hold ``credential``'s key (``wrong_signer`` otherwise). ``session_key``: the
    roamer's fresh X25519 public key (:func:`protocol.session.public_hex`) to open a
    session if granted (section 7.1)."""
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
        session_key=session_key,
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


def grant_receipt(verified: VerifiedAccess, *, host_id: str, amount: int, time: int,
                  session_key: str | None = None) -> GrantReceipt:
    """The receipt granting ``amount`` micro-units at ``time`` (Unix seconds) of a
    request :class:`AccessVerifier` verified for the host ``host_id``.

    The same message ``GrantReceipt(...)`` builds, without re-deriving what that
    verification established (the request's fields and signer, that it names this host,
    its credential and epoch, that the requester is the credential's node): only what the
    grant adds is checked -- ``1 <= amount <=`` what was asked, the time, and a
    ``session_key`` (an X25519 key of large order, :func:`protocol.messages.check_session_key`)
    only for a request that asked for a session (``out_of_range`` otherwise)."""
    req = verified.request
    if req.host_id != host_id:
        raise BadProofError("the request is addressed to another host")
    if not 1 <= check_int("amount", amount, 1, MAX_QUANTITY_MICRO) <= req.amount:
        raise OutOfRangeError(f"amount {amount} exceeds the {req.amount} asked")
    check_time("time", time)
    if session_key is not None:
        check_session_key("session_key", session_key)  # GrantReceipt's own rule
        if req.session_key is None:
            raise OutOfRangeError("session_key: the request asked for no session")
    return unchecked(GrantReceipt, epoch=req.epoch, host_id=host_id,
                     requester_id=verified.requester_id, nonce=req.nonce, amount=amount,
                     time=time, request=verified.envelope, session_key=session_key)


def _trusted_key(key: str | None) -> str | None:
    """The coordinator key a host trusts: None, or a strong key (``out_of_range``
    otherwise: a small-order key would make every credential fail, or, were it
    verified elsewhere, let anyone sign them)."""
    return None if key is None else check_strong_public_key("coordinator_key", key)


class AccessVerifier:
    """The host's cryptographic check of access bodies (README section 7, step 2).

    ``coordinator_key`` None: nothing is trusted yet (``unknown_key``). Changing it
    forgets every remembered credential.
    """

    __slots__ = ("_coordinator_key", "_session_key", "_wire", "credentials", "host_id",
                 "replays", "sessions")

    def __init__(
        self,
        *,
        host_id: str,
        coordinator_key: str | None = None,
        skew: int = MAX_CLOCK_SKEW,
        replay_capacity: int = 100_000,
        credential_capacity: int = 1 << 16,
        session_capacity: int = 1 << 16,
        sessions_per_requester: int = 4,
    ) -> None:
        self.host_id = host_id
        self._coordinator_key = _trusted_key(coordinator_key)
        self.credentials: CredentialCache[Credential] = CredentialCache(
            capacity=credential_capacity
        )
        self.replays = ReplayWindow(skew=skew, capacity=replay_capacity)
        # The same verified credentials, by their exact wire strings (base64 payload,
        # signature and signer hex): a canonical body's credential is found without
        # building its envelope or digest (:meth:`_fast_body`).
        # The credential's key is kept loaded with it (:class:`protocol.identity.VerifyKey`).
        self._wire: CredentialCache[tuple[str, Credential, VerifyKey | None]] = (
            CredentialCache(capacity=credential_capacity))
        self.sessions = SessionTable(host_id=host_id, capacity=session_capacity,
                                     per_requester=sessions_per_requester)
        # The host's X25519 key of the epoch sessions are open for: (epoch, key, public
        # key hex).
        self._session_key: tuple[int, X25519PrivateKey, str] | None = None

    @property
    def coordinator_key(self) -> str | None:
        return self._coordinator_key

    @coordinator_key.setter
    def coordinator_key(self, key: str | None) -> None:
        key = _trusted_key(key)
        if key != self._coordinator_key:
            self.credentials.clear()
            self._wire.clear()
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

    def end_epoch(self, epoch: int) -> None:
        """The host enforces ``epoch`` from now on: sessions of other epochs end, and so
        does the X25519 key they were agreed with."""
        self.sessions.end_epoch(epoch)
        if self._session_key is not None and self._session_key[0] != epoch:
            self._session_key = None

    def open_session(self, verified: VerifiedAccess, *, granted: int) -> str:
        """Open the session a granted request asked for (its ``session_key``), holding
        ``granted`` micro-units; return the host's X25519 public key (hex) for the
        receipt. The host's key is one per epoch (one exchange per session); the keys
        are bound to the signed request by HKDF's salt (:func:`protocol.session.derive_keys`).
        Raises ``bad_proof`` for a low-order roamer key (call before consuming anything).
        """
        roamer_key = verified.request.session_key
        if roamer_key is None:
            raise BadProofError("the request asked for no session")
        epoch = verified.credential.epoch
        if self._session_key is None or self._session_key[0] != epoch:
            fresh = X25519PrivateKey.generate()
            self._session_key = (epoch, fresh, public_hex(fresh))
        _, own, host_key = self._session_key
        keys = derive_keys(own, roamer_key, roamer_key=roamer_key, host_key=host_key,
                           request=verified.envelope)
        self.sessions.open(keys, requester_id=verified.requester_id, epoch=epoch,
                           expires=min(verified.credential.expires + self.replays.skew,
                                       MAX_TIME),
                           balance=granted)
        return host_key

    def check_session(self, request: SessionRequest, *, epoch: int,
                      now: int) -> VerifiedSession:
        """Check a session request (:meth:`protocol.session.SessionTable.check`)."""
        return self.sessions.check(request, epoch=epoch, now=now)

    def _fast_body(self, raw: bytes) -> tuple[str, Credential, Envelope, VerifyKey | None] | None:
        """A canonical body whose credential is one this verifier verified before, read
        with one match: ``(digest, credential, request envelope, the credential's key
        loaded)``; None otherwise (the strict path then decides). The credential is found
        by its exact wire strings, so neither its envelope nor its digest is rebuilt; the
        request's envelope holds what the grammar proved (its type, 64 lowercase hex
        bytes of signer, a 64-byte signature) and its payload in the one canonical
        base64 spelling (:func:`payload_from_b64`)."""
        m = _CANONICAL_BODY.fullmatch(raw)
        if m is None:
            return None
        c_payload, c_sig, c_signer, r_payload, r_sig, r_signer = m.groups()
        known = self._wire.get((c_payload + c_sig + c_signer).decode("ascii"))
        if known is None:
            return None
        request = Envelope.from_checked(type=AccessRequest.TYPE, signer=r_signer.decode(),
                                        payload=payload_from_b64(r_payload),
                                        signature=bytes.fromhex(r_sig.decode()))
        return known[0], known[1], request, known[2]

    def check_any(self, raw: bytes, *, epoch: int,
                  now: int) -> VerifiedAccess | VerifiedSession:
        """Check what a host endpoint received: a session request
        (:meth:`check_session`) or an access body (:meth:`check`), told apart as
        :func:`parse_access` does; canonical bodies take the one-match paths."""
        session = parse_canonical_session(raw)
        if session is not None:
            return self.check_session(session, epoch=epoch, now=now)
        fast = self._fast_body(raw)
        if fast is not None:
            return self._check_request(*fast, epoch=epoch, now=now)
        body = parse_access(raw)
        if isinstance(body, SessionRequest):
            return self.check_session(body, epoch=epoch, now=now)
        return self.check_body(body, epoch=epoch, now=now)

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
        section 7, step 7): the credential's window is judged at the request's ``issued``
        (widened by :data:`MAX_CLOCK_SKEW`), not at ``now``, and freshness and replay are
        not checked, since the request is an old one the host must answer (again)
        whatever its age; nothing is remembered.
        """
        fast = self._fast_body(raw)
        if fast is not None:
            return self._check_request(*fast, epoch=epoch, now=now, relayed=relayed)
        return self.check_body(AccessBody.from_bytes(raw), epoch=epoch, now=now,
                               relayed=relayed)

    def check_body(self, body: AccessBody, *, epoch: int, now: int,
                   relayed: bool = False) -> VerifiedAccess:
        """:meth:`check` of a parsed body."""
        digest, cred = self.credential(body.credential)
        verified = self._check_request(digest, cred, body.request, epoch=epoch, now=now,
                                       relayed=relayed)
        # Verified (and found by digest): from now on found by its wire strings too.
        obj = body.credential.to_obj()
        self._wire.put(obj["payload"] + obj["signature"] + obj["signer"],
                       (digest, cred, VerifyKey.load(cred.public_key)))
        return verified

    def _check_request(self, digest: str, cred: Credential, envelope: Envelope,
                       key: VerifyKey | None = None, *, epoch: int, now: int,
                       relayed: bool = False) -> VerifiedAccess:
        check_epoch(cred.epoch, current=epoch)
        if not relayed:
            check_validity(cred.not_before, cred.expires, now=now, max_skew=self.replays.skew)
        if envelope.signer != cred.public_key:
            raise BadProofError("access request is not signed by the credential's key")
        if envelope.type != AccessRequest.TYPE:
            raise WrongTypeError(f"expected {AccessRequest.TYPE}, got {envelope.type}")
        if len(envelope.payload) > AccessRequest.MAX_PAYLOAD_BYTES:
            raise TooLargeError("access request payload over its limit")
        envelope.verify(key)  # over the exact received bytes, before they are parsed
        request = AccessRequest.parse_payload(envelope.payload)
        if request.host_id != self.host_id:
            raise BadProofError("access request is addressed to another host")
        if request.credential_digest != digest:
            raise BadProofError("access request names another credential")
        if request.epoch != cred.epoch:
            raise BadProofError("access request is bound to another epoch")
        if relayed:
            # A relay reaches the host whenever the coordinator gets to it -- after the
            # credential expired if the roamer filed late, a relay was retried or the
            # epoch was closed late -- so its window is judged at the request's own
            # ``issued``, by the rule the coordinator accepted the complaint under
            # (``EpochCore.check_complaint``: the window widened by the protocol's skew).
            # Judged at ``now``, a late relay would get a plain error and the complaint
            # would stand against an honest host (README section 7, step 7).
            check_validity(cred.not_before, cred.expires, now=request.issued,
                           max_skew=MAX_CLOCK_SKEW)
        else:
            self.replays.check_and_record(cred.node_id, request.nonce, request.issued, now)
        return VerifiedAccess(
            requester_id=cred.node_id, credential=cred, request=request, envelope=envelope
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
