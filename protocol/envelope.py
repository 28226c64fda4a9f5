"""Signed envelopes: a message type, a signer, the exact payload bytes and a signature.

Wire form (a JSON object with exactly these four string fields)::

    {"payload": <standard base64 of the payload bytes, with padding>,
     "signature": <128 lowercase hex characters: the 64-byte Ed25519 signature>,
     "signer": <64 lowercase hex characters: the raw Ed25519 public key>,
     "type": <message type, [a-z][a-z0-9_]{0,31}>}

The signature covers the *signing input* (normative; README "Signing rule")::

    b"inkind/v1" 0x00 || type (ASCII) || 0x00 || u64 big-endian len(payload) || payload

The domain prefix keeps inkind signatures from being valid anywhere else; the message type
inside the signed bytes means a payload signed as one type is never accepted as another;
the length prefix leaves no ambiguity about where the payload starts and ends.

Because the payload travels as opaque bytes (base64), the signature is always checked over
exactly the bytes received, before anything parses them, and re-serialising the envelope
object (for instance when it is embedded in another message) cannot change what was
signed.

This module deliberately does not parse payloads and knows no message classes; see
:mod:`protocol.verify` for opening an envelope into a typed message.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from protocol.encoding import decode
from protocol.errors import (
    BadSignatureError,
    MalformedError,
    OutOfRangeError,
    WrongTypeError,
)
from protocol.fields import check_hex, check_object, check_public_key, check_str
from protocol.identity import SIGNATURE_BYTES, Identity, VerifyKey, verify_signature

DOMAIN = b"inkind/v1\x00"
TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
ENVELOPE_FIELDS = frozenset({"type", "signer", "payload", "signature"})
#: Bytes the envelope adds around a base64 payload (keys, quotes, key, signature), rounded up.
ENVELOPE_OVERHEAD_BYTES = 512


_new = object.__new__
_set = object.__setattr__  # builds a frozen dataclass without its checks (from_checked)


def envelope_size_limit(max_payload_bytes: int) -> int:
    """Largest encoded envelope that can carry a payload of ``max_payload_bytes``."""
    return 4 * -(-max_payload_bytes // 3) + ENVELOPE_OVERHEAD_BYTES


def check_message_type(name: str, value: object) -> str:
    """A message type: ``[a-z][a-z0-9_]{0,31}``."""
    text = check_str(name, value, max_chars=32, min_chars=1)
    if not TYPE_PATTERN.fullmatch(text):
        raise OutOfRangeError(f"{name}: {text!r} is not a message type")
    return text


def signing_input(message_type: str, payload: bytes) -> bytes:
    """The exact bytes an envelope's signature covers (see the module docstring)."""
    check_message_type("type", message_type)
    return _signing_bytes(message_type, payload)


def _signing_bytes(message_type: str, payload: bytes) -> bytes:
    # Unchecked: for a type already checked (an Envelope's own).
    return b"".join((DOMAIN, message_type.encode("ascii"), b"\x00",
                     len(payload).to_bytes(8, "big"), bytes(payload)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A signed payload. Building one checks the formats, not the signature."""

    type: str
    signer: str
    payload: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_message_type("type", self.type)
        check_public_key("signer", self.signer)
        if not isinstance(self.payload, bytes):
            raise WrongTypeError("payload: expected bytes")
        if not isinstance(self.signature, bytes):
            raise WrongTypeError("signature: expected bytes")
        if len(self.signature) != SIGNATURE_BYTES:
            raise OutOfRangeError(f"signature: expected {SIGNATURE_BYTES} bytes")

    @classmethod
    def from_checked(cls, *, type: str, signer: str, payload: bytes,
                     signature: bytes) -> Envelope:
        """An envelope of fields whose formats the caller has already established (a
        match of the canonical grammar, or its own identity's key and a type
        :func:`signing_input` checked), built without checking them a second time. Any
        other caller builds ``Envelope(...)``."""
        env = _new(cls)
        _set(env, "type", type)
        _set(env, "signer", signer)
        _set(env, "payload", payload)
        _set(env, "signature", signature)
        return env

    @classmethod
    def seal(cls, identity: Identity, message_type: str, payload: bytes) -> Envelope:
        """Sign ``payload`` as ``message_type`` with ``identity``."""
        if not isinstance(payload, bytes):
            raise WrongTypeError("payload: expected bytes")
        signature = identity.sign(signing_input(message_type, payload))  # checks the type
        # The signer is the identity's own key (Identity writes it from the raw key) and
        # an Ed25519 signature is 64 bytes: nothing left to check.
        return cls.from_checked(type=message_type, signer=identity.public_key,
                                payload=payload, signature=signature)

    def verify(self, key: VerifyKey | None = None) -> None:
        """Raise :class:`BadSignatureError` unless the signature verifies for ``signer``.
        ``key``: the signer's key loaded before (used only if it is ``signer``'s)."""
        # The type was checked when the envelope was built: no second check here.
        signed = _signing_bytes(self.type, self.payload)
        if key is not None and key.public_key == self.signer:
            ok = key.verify(self.signature, signed)
        else:
            ok = verify_signature(self.signer, self.signature, signed)
        if not ok:
            raise BadSignatureError(f"{self.type} signature does not verify")

    def to_obj(self) -> dict[str, str]:
        """The envelope as a JSON object (for embedding in another payload)."""
        return {
            "type": self.type,
            "signer": self.signer,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signature": self.signature.hex(),
        }

    def to_bytes(self) -> bytes:
        """The envelope's canonical JSON encoding (what goes on the wire). Every field is
        checked ASCII that JSON never escapes (base64, hex, a message type), so writing
        them in key order is the canonical encoding (a test compares with ``canonical``)."""
        payload = base64.b64encode(self.payload).decode("ascii")
        return (f'{{"payload":"{payload}","signature":"{self.signature.hex()}",'
                f'"signer":"{self.signer}","type":"{self.type}"}}').encode("ascii")

    @classmethod
    def from_obj(cls, obj: object) -> Envelope:
        """Parse the JSON object form; unknown or missing fields are refused."""
        fields = check_object("envelope", obj, ENVELOPE_FIELDS)
        payload = check_str("payload", fields["payload"], max_chars=1 << 62)
        sig = check_hex("signature", fields["signature"], 2 * SIGNATURE_BYTES)
        return cls(
            type=check_message_type("type", fields["type"]),
            signer=check_public_key("signer", fields["signer"]),
            payload=payload_from_b64(payload),
            signature=bytes.fromhex(sig),
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, max_size: int) -> Envelope:
        """Parse wire bytes (whitespace and key order are tolerated: they are not signed).

        The canonical encoding (what :meth:`to_bytes` writes, so every honest sender's)
        is read with one match of its exact grammar (:data:`_CANONICAL_ENVELOPE`), which
        proves every field's format, so the fields are not checked a second time; the
        payload's base64 is still required in its one spelling. Anything else goes
        through the strict parser: same envelope, same errors."""
        if type(raw) is bytes and len(raw) <= max_size:
            m = _CANONICAL_ENVELOPE.fullmatch(raw)
            if m is not None:
                payload, signature, signer, message_type = m.groups()
                return cls.from_checked(
                    type=message_type.decode("ascii"), signer=signer.decode("ascii"),
                    payload=payload_from_b64(payload.decode("ascii")),
                    signature=bytes.fromhex(signature.decode("ascii")))
        return cls.from_obj(decode(raw, max_bytes=max_size, max_depth=1))


#: The canonical wire form of an envelope, exactly: keys in order, no whitespace, base64
#: characters, lowercase hex of the right lengths, a message type (TYPE_PATTERN). Every
#: string in it is ASCII that JSON never escapes, so a match is valid JSON of exactly
#: the four fields, each of the format :meth:`Envelope.from_obj` checks.
_CANONICAL_ENVELOPE = re.compile(
    rb'\{"payload":"([A-Za-z0-9+/]*={0,2})","signature":"([0-9a-f]{128})",'
    rb'"signer":"([0-9a-f]{64})","type":"([a-z][a-z0-9_]{0,31})"\}'
)


def payload_from_b64(text: str | bytes) -> bytes:
    """An envelope's payload from its wire form (as text, or its ASCII bytes): standard
    base64 with padding, in its one canonical spelling (``malformed`` otherwise)."""
    try:
        data = text.encode("ascii") if isinstance(text, str) else bytes(text)
        # What base64.b64decode(validate=True) does, without its wrapper.
        raw = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedError("payload: not standard base64") from None
    # Refuse alternative spellings (missing padding, non-zero pad bits): one encoding only.
    if binascii.b2a_base64(raw, newline=False) != data:
        raise MalformedError("payload: non-canonical base64")
    return raw
