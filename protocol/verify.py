"""Opening and sealing messages, and the checks the coordinator and hosts share.

The order of :func:`open_envelope` is the security argument (after python-tuf's
trusted metadata set): bound the size, parse the envelope (which never parses the
payload), check the message type, check the signer is trusted, verify the signature over
the exact payload bytes, and only then parse the payload (canonical form required) into
a typed message and check that the signer is the identity the message names.

Time is always the argument ``now``, in integer Unix seconds, read once by the caller per
request. This module deliberately keeps no state of its own: replay tables and caches
live in :mod:`protocol.guards`, the access exchange in :mod:`protocol.access`, and
policy (revocation, inclusion, capacity) is the host's ``authorize`` function.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import TypeVar

from protocol.encoding import canonical
from protocol.envelope import Envelope, envelope_size_limit
from protocol.errors import (
    EpochClosedError,
    ExpiredError,
    FutureEpochError,
    NotYetValidError,
    StaleEpochError,
    TooLargeError,
    UnexpectedMessageError,
    UnknownKeyError,
    WrongSignerError,
)
from protocol.fields import MAX_CLOCK_SKEW, check_int, check_time
from protocol.identity import Identity, VerifyKey, node_id_of
from protocol.messages import (
    MESSAGE_TYPES,
    AccessRequest,
    AuditReport,
    Credential,
    Declaration,
    EpochAnnouncement,
    GrantReceipt,
    Message,
    Refusal,
)

M = TypeVar("M", bound=Message)



def seal(identity: Identity, message: Message) -> Envelope:
    """Encode ``message`` canonically and sign it with ``identity``.

    Refuses (``wrong_signer``) to sign a message that names another node as its signer,
    and (``too_large``) a payload over the type's limit, so a node never emits what its
    peers must refuse.
    """
    payload = canonical(message.to_payload(), max_depth=message.MAX_DEPTH)
    if len(payload) > message.MAX_PAYLOAD_BYTES:
        raise TooLargeError(f"{message.TYPE} payload of {len(payload)} bytes")
    required = message.signer_node_id()
    if required is not None and required != identity.node_id:
        raise WrongSignerError(f"{message.TYPE} names node {required[:16]}..., not the signer")
    return Envelope.seal(identity, message.TYPE, payload)


def seal_bytes(identity: Identity, message: Message) -> bytes:
    """:func:`seal`, then the envelope's wire bytes."""
    return seal(identity, message).to_bytes()


def open_envelope(
    raw: bytes,
    expected: type[M],
    *,
    trusted: Container[str] | None,
    max_size: int | None = None,
) -> tuple[str, M]:
    """Verify and parse wire bytes into ``(signer public key, message)``.

    ``trusted`` is the set of public keys (hex) accepted as signer, or None to accept any
    key (self-certifying messages: registrations, and messages bound to a node id that
    the caller resolves afterwards). Coordinator-signed types require ``trusted``.
    ``max_size`` defaults to the largest envelope that can carry the type's payload.
    """
    limit = envelope_size_limit(expected.MAX_PAYLOAD_BYTES) if max_size is None else max_size
    if len(raw) > limit:
        raise TooLargeError(f"envelope of {len(raw)} bytes exceeds {limit}")
    envelope = Envelope.from_bytes(raw, max_size=limit)
    return open_embedded(envelope, expected, trusted=trusted)


def open_embedded(
    envelope: Envelope, expected: type[M], *, trusted: Container[str] | None
) -> tuple[str, M]:
    """:func:`open_envelope` for an already parsed envelope (an embedded one, say).

    A single key passed as a ``str`` is treated as the set of that one key. ``trusted``
    may map each key to its :class:`~protocol.identity.VerifyKey` (loaded once, strong):
    the signature is then checked with it instead of loading the key again.
    """
    if envelope.type != expected.TYPE:
        raise UnexpectedMessageError(f"expected {expected.TYPE}, got {envelope.type}")
    if isinstance(trusted, str):  # one key: never let `in` fall back to substring search
        trusted = frozenset({trusted})
    if trusted is None and expected.SIGNER == "coordinator":
        # A programming error, not a peer's: trusting anyone as coordinator is never right.
        raise ValueError(f"{expected.TYPE} must be opened with the trusted coordinator keys")
    if trusted is not None and envelope.signer not in trusted:
        raise UnknownKeyError(f"{envelope.type} signer {envelope.signer[:16]}... not trusted")
    if len(envelope.payload) > expected.MAX_PAYLOAD_BYTES:
        raise TooLargeError(f"{expected.TYPE} payload of {len(envelope.payload)} bytes")
    # A mapping of trusted keys holds each one loaded (strong, checked once): used as is.
    key: VerifyKey | None = (
        trusted.get(envelope.signer) if isinstance(trusted, Mapping) else None)
    envelope.verify(key)  # over the exact received bytes, before they are parsed
    message = expected.parse_payload(envelope.payload)  # canonical form required
    required = message.signer_node_id()
    if required is not None and (
            key.node_id if key is not None else node_id_of(envelope.signer)) != required:
        raise WrongSignerError(f"{expected.TYPE} names another node than its signer")
    return envelope.signer, message


def open_any(raw: bytes, *, trusted: Container[str] | None, max_size: int) -> tuple[str, Message]:
    """Open an envelope of any registered type (the type is read from the envelope).

    With ``trusted=None``, coordinator-signed types are refused as ``unknown_key``.
    """
    if len(raw) > max_size:
        raise TooLargeError(f"envelope of {len(raw)} bytes exceeds {max_size}")
    envelope = Envelope.from_bytes(raw, max_size=max_size)
    cls = MESSAGE_TYPES.get(envelope.type)
    if cls is None:
        raise UnexpectedMessageError(f"unknown message type {envelope.type!r}")
    if trusted is None and cls.SIGNER == "coordinator":
        # The peer chose the type here, so this is its error, not a programming error.
        raise UnknownKeyError(f"no coordinator key is trusted for {envelope.type}")
    return open_embedded(envelope, cls, trusted=trusted)


# --- epoch and time windows -----------------------------------------------------------


def check_epoch(epoch: int, *, current: int) -> None:
    """Refuse a message for another epoch than ``current`` (stale or future)."""
    if epoch < current:
        raise StaleEpochError(f"epoch {epoch} is before current epoch {current}")
    if epoch > current:
        raise FutureEpochError(f"epoch {epoch} is after current epoch {current}")


def check_declaration(
    declaration: Declaration, announcement: EpochAnnouncement, *, now: int
) -> None:
    """A declaration is accepted for the announced epoch while ``now < deadline``."""
    check_epoch(declaration.epoch, current=announcement.epoch)
    if check_time("now", now) >= announcement.deadline:
        raise EpochClosedError(f"epoch {announcement.epoch} closed at {announcement.deadline}")


def check_validity(not_before: int, expires: int, *, now: int, max_skew: int) -> None:
    """Valid iff ``not_before - max_skew <= now < expires + max_skew``."""
    check_time("now", now)
    check_int("max_skew", max_skew, 0, 24 * 3600)
    if now + max_skew < not_before:
        raise NotYetValidError(f"not valid before {not_before} (now {now})")
    if now - max_skew >= expires:
        raise ExpiredError(f"expired at {expires} (now {now})")


def check_credential(
    credential: Envelope | bytes,
    coordinator_key: str,
    *,
    epoch: int,
    now: int,
    max_skew: int = MAX_CLOCK_SKEW,
) -> Credential:
    """Verify a credential: coordinator signature, epoch ``epoch``, valid at ``now``.

    Revocation and inclusion in the allocation are the caller's policy, not checked here.
    """
    trusted = (coordinator_key,)
    if isinstance(credential, Envelope):
        _, cred = open_embedded(credential, Credential, trusted=trusted)
    else:
        _, cred = open_envelope(credential, Credential, trusted=trusted)
    check_epoch(cred.epoch, current=epoch)
    check_validity(cred.not_before, cred.expires, now=now, max_skew=max_skew)
    return cred


def open_evidence(
    report: AuditReport, *, host_keys: Container[str]
) -> list[tuple[str, GrantReceipt | Refusal]]:
    """Verify every receipt and refusal in an audit report against registered host keys.

    Each item must be signed by a key in ``host_keys`` and by the host it names, and
    belong to the report's epoch; a receipt's embedded request must be signed by a key in
    ``host_keys`` too (the requester's: so a host cannot make a ledger entry up), and so
    must a refusal's (so its requester and time are the requester's word too). The
    first bad item refuses the whole report.
    """
    opened: list[tuple[str, GrantReceipt | Refusal]] = []
    for envelope in report.evidence:
        signer: str
        item: GrantReceipt | Refusal
        if envelope.type == GrantReceipt.TYPE:
            signer, item = open_embedded(envelope, GrantReceipt, trusted=host_keys)
        else:
            signer, item = open_embedded(envelope, Refusal, trusted=host_keys)
        check_epoch(item.epoch, current=report.epoch)
        open_embedded(item.request, AccessRequest, trusted=host_keys)
        opened.append((signer, item))
    return opened
