"""Coordinator-local error codes of the HTTP binding (``protocol/HTTP.md``).

The protocol's hierarchy (:mod:`protocol.errors`) covers every message check. The HTTP
binding adds a few answers that are about the service, not about a message: nothing
published yet (``no_epoch``, ``unknown_epoch``), a missing admin token
(``unauthorized``), an operator action the epoch's phase does not allow
(``wrong_phase``), and unknown paths or methods (``not_found``, ``method_not_allowed``).
They join the same hierarchy so that the one error middleware serialises them; a
client that does not know them sees ``UnrecognizedError`` with the code kept.

These classes are deliberately defined after ``protocol.errors`` collected its
registry, so ``protocol.error_from_code`` is unaffected by them.
"""

from __future__ import annotations

from protocol.errors import ProtocolViolationError, RefusedError


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


class NotFoundError(ProtocolViolationError):
    """No such path."""

    code = "not_found"
    http_status = 404


class MethodNotAllowedError(ProtocolViolationError):
    """The path exists, the method does not."""

    code = "method_not_allowed"
    http_status = 405
