"""The one error hierarchy of the inkind protocol.

Every error the protocol package raises is an :class:`InkindError`. Each concrete class
carries, as class attributes, a stable machine-readable wire ``code`` and the HTTP status
a service answers with. Two branches matter to a peer:

* :class:`ProtocolViolationError` -- *you* broke the protocol: the bytes are malformed,
  too large, badly typed, out of range or not authentic. Resending the same bytes can
  never succeed (HTTP 400, 401 or 413).
* :class:`RefusedError` -- the message is well formed and authentic, but the peer
  refuses it given its state: stale or future epoch, replay, expired credential, not
  included, capacity exhausted... (HTTP 403 or 409).

The HTTP binding (``protocol/HTTP.md``) adds a few answers about the service rather than
a message (``no_epoch``, ``unknown_epoch``, ``unauthorized``, ``wrong_phase``,
``not_found``, ``method_not_allowed``, with HTTP 401, 404, 405 or 409); they live here
too, so every client turns them back into typed errors (:data:`SERVICE_CODES`).

:class:`KeyFileError` is local (a key file on disk) and never travels on the wire.

This module deliberately does not know about HTTP frameworks: ``http_status`` is a
number, and :func:`to_wire` / :func:`from_wire` turn an error into a plain ``dict`` and
back, so the service middleware and the client stay thin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class InkindError(Exception):
    """Base class of every error raised by the protocol package (never raised itself)."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500


# --- "you broke the protocol" ---------------------------------------------------------


class ProtocolViolationError(InkindError):
    """The input violates the protocol; the same bytes will always be rejected."""

    code = "protocol_violation"
    http_status = 400


class MalformedError(ProtocolViolationError):
    """Not parseable: invalid JSON/UTF-8/base64, duplicate keys, floats, nesting too deep."""

    code = "malformed"


class TooLargeError(ProtocolViolationError):
    """A body, payload or list is larger than its documented limit."""

    code = "too_large"
    http_status = 413


class UnknownFieldError(ProtocolViolationError):
    """An object carries a field the catalogue does not define (never ignored)."""

    code = "unknown_field"


class MissingFieldError(ProtocolViolationError):
    """A required field is absent."""

    code = "missing_field"


class WrongTypeError(ProtocolViolationError):
    """A field has the wrong JSON type (for instance a boolean where an integer is due)."""

    code = "wrong_type"


class OutOfRangeError(ProtocolViolationError):
    """A value has the right type but lies outside its documented range or format."""

    code = "out_of_range"


class UnexpectedMessageError(ProtocolViolationError):
    """The envelope's message type is not the one expected at this point."""

    code = "unexpected_message"


class BadSignatureError(ProtocolViolationError):
    """The Ed25519 signature does not verify over the exact received bytes."""

    code = "bad_signature"
    http_status = 401


class WrongSignerError(ProtocolViolationError):
    """The signature is valid but the signer is not the identity the message names."""

    code = "wrong_signer"
    http_status = 401


class BadProofError(ProtocolViolationError):
    """Proof of possession failed: not signed by the credential key, or for another host."""

    code = "bad_proof"
    http_status = 401


# --- "the peer refused" ---------------------------------------------------------------


class RefusedError(InkindError):
    """Well formed and authentic, but refused given the receiver's state or policy."""

    code = "refused"
    http_status = 403


class UnknownKeyError(RefusedError):
    """The signer's key is not one the receiver trusts or has registered."""

    code = "unknown_key"


class StaleEpochError(RefusedError):
    """The message belongs to an epoch older than the receiver's current one."""

    code = "stale_epoch"
    http_status = 409


class FutureEpochError(RefusedError):
    """The message belongs to an epoch the receiver has not opened yet."""

    code = "future_epoch"
    http_status = 409


class EpochClosedError(RefusedError):
    """The epoch is current but its declaration deadline has passed."""

    code = "epoch_closed"
    http_status = 409


class ReplayError(RefusedError):
    """This nonce has already been used."""

    code = "replay"
    http_status = 409


class DuplicateDeclarationError(RefusedError):
    """The node already declared in this epoch (a declaration is final)."""

    code = "duplicate_declaration"
    http_status = 409


class ExpiredError(RefusedError):
    """A credential or a request is past its validity window."""

    code = "expired"


class NotYetValidError(RefusedError):
    """A credential is presented before its ``not_before`` time."""

    code = "not_yet_valid"


class NotIncludedError(RefusedError):
    """The requester is not in the epoch's included set."""

    code = "not_included"


class RevokedError(RefusedError):
    """The credential or node has been revoked."""

    code = "revoked"


class CapacityExhaustedError(RefusedError):
    """The host (or a bounded table) has no capacity left for this request."""

    code = "capacity_exhausted"
    http_status = 409


class UnknownSessionError(RefusedError):
    """No open session at this host has that id (never opened, closed to make room,
    spent, or ended with its epoch): open another with a signed request."""

    code = "unknown_session"


# --- answers of the HTTP binding (protocol/HTTP.md) -----------------------------------
#
# They are about the service, not about one message: nothing published yet, a missing
# operator token, a phase that has no such transition, an unknown path or method. They
# are wire codes like the others (clients get the typed error back), but never a
# refusal's reason (see SERVICE_CODES).


class NoEpochError(RefusedError):
    """No epoch has been opened yet (``GET /v1/announcement`` before the first one)."""

    code = "no_epoch"
    http_status = 404


class UnknownEpochError(RefusedError):
    """The epoch asked for has not been closed (no allocation, credential or directory)."""

    code = "unknown_epoch"
    http_status = 404


class UnauthorizedError(RefusedError):
    """An operator action without the configured bearer token."""

    code = "unauthorized"
    http_status = 401


class WrongPhaseError(RefusedError):
    """The epoch state machine has no transition for this event in its current phase."""

    code = "wrong_phase"
    http_status = 409


class ProbationError(RefusedError):
    """The node is included in the epoch (it owes its contribution) but gets no
    credential yet: no audit has found it delivering what it owed (the coordinator's
    probation of new keys, coordinator README "Probation")."""

    code = "probation"
    http_status = 403


class NotFoundError(ProtocolViolationError):
    """No such path (or no such resource at this path)."""

    code = "not_found"
    http_status = 404


class MethodNotAllowedError(ProtocolViolationError):
    """The path exists, the method does not."""

    code = "method_not_allowed"
    http_status = 405


# --- local only -----------------------------------------------------------------------


class KeyFileError(InkindError):
    """A private key file is missing, unreadable, invalid, or readable by others."""

    code = "key_file"
    http_status = 500


class UnrecognizedError(InkindError):
    """A peer sent an error code this implementation does not know.

    The peer's code is kept in :attr:`wire_code`; ``code`` stays ``"unrecognized"`` so
    that the class attribute remains a stable constant.
    """

    code = "unrecognized"
    http_status = 500

    def __init__(self, message: str, *, wire_code: str) -> None:
        super().__init__(message)
        self.wire_code = wire_code


def _collect(root: type[InkindError]) -> dict[str, type[InkindError]]:
    found: dict[str, type[InkindError]] = {}
    stack: list[type[InkindError]] = [root]
    while stack:
        cls = stack.pop()
        if cls.code in found:  # a duplicated code would make error_from_code ambiguous
            raise AssertionError(f"duplicate error code {cls.code!r}")
        found[cls.code] = cls
        stack.extend(cls.__subclasses__())
    return found


#: Every wire code mapped to its class, the abstract branches included.
ERROR_CLASSES: Mapping[str, type[InkindError]] = _collect(InkindError)

#: Codes a peer may legitimately send (local-only and meta classes excluded).
WIRE_CODES: frozenset[str] = frozenset(ERROR_CLASSES) - {"key_file", "unrecognized"}

#: Codes of the HTTP binding's own answers: wire codes, but never a refusal's reason.
SERVICE_CODES: frozenset[str] = frozenset({
    NoEpochError.code, UnknownEpochError.code, UnauthorizedError.code,
    WrongPhaseError.code, NotFoundError.code, MethodNotAllowedError.code,
    ProbationError.code,
})


def error_from_code(code: str, message: str) -> InkindError:
    """Turn a wire code back into a typed error; unknown codes give UnrecognizedError."""
    cls = ERROR_CLASSES.get(code)
    if cls is None or code not in WIRE_CODES:
        return UnrecognizedError(message, wire_code=code)
    return cls(message)


def to_wire(err: InkindError) -> dict[str, str]:
    """The JSON error body: ``{"code": ..., "message": ...}``."""
    return {"code": err.code, "message": str(err)}


MAX_ERROR_MESSAGE_CHARS = 1024


def from_wire(body: object) -> InkindError:
    """Parse an error body produced by :func:`to_wire`.

    A body that is not a ``{"code": str, "message": str}`` object becomes a
    :class:`MalformedError` describing what was received (never an exception).
    """
    if (
        not isinstance(body, dict)
        or set(body) != {"code", "message"}
        or not isinstance(body["code"], str)
        or not isinstance(body["message"], str)
    ):
        return MalformedError(f"not an error body: {body!r:.200}")
    return error_from_code(body["code"], body["message"][:MAX_ERROR_MESSAGE_CHARS])
