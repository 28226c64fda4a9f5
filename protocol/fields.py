"""Field formats shared by the messages, and the checks that enforce them.

Each ``check_*`` function takes a field name and a value, raises the documented error
(:class:`~protocol.errors.WrongTypeError` for a wrong JSON type,
:class:`~protocol.errors.OutOfRangeError` for a bad value or format,
:class:`~protocol.errors.TooLargeError` for an over-long list) and returns the value
unchanged, so that message constructors read as a list of rules.

This module deliberately holds no message definitions and no cryptography.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from protocol.encoding import MAX_SAFE_INTEGER
from protocol.errors import (
    MissingFieldError,
    OutOfRangeError,
    TooLargeError,
    UnknownFieldError,
    WrongTypeError,
)

#: Raw Ed25519 public key (32 bytes) as lowercase hex.
PUBLIC_KEY_HEX_CHARS = 64
#: Node id: full SHA-256 of the raw public key, lowercase hex.
NODE_ID_HEX_CHARS = 64
#: Nonces: 16 random bytes, lowercase hex.
NONCE_BYTES = 16
NONCE_HEX_CHARS = 2 * NONCE_BYTES

#: The one clock policy (README section 6): how far apart, in seconds, two honest peers'
#: clocks may be. The host's gate accepts a request issued within it of its own clock and
#: a credential within it of its window; the coordinator's audit counts receipts with the
#: same tolerance, so a host with a slow clock is never judged by a stricter rule than
#: the one it enforced.
MAX_CLOCK_SKEW = 60

MAX_EPOCH = MAX_SAFE_INTEGER
#: Times are integer Unix seconds (UTC); the protocol never reads a clock itself.
MAX_TIME = MAX_SAFE_INTEGER

_HEX_RE = re.compile(r"[0-9a-f]*")


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    return type(value).__name__


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """An integer (never a bool) in the closed range [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongTypeError(f"{name}: expected integer, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise OutOfRangeError(f"{name}: {value} not in [{lo}, {hi}]")
    return value


def check_object(name: str, value: object, keys: frozenset[str]) -> dict[str, object]:
    """A JSON object with exactly ``keys`` (``unknown_field``, ``missing_field``)."""
    if not isinstance(value, dict):
        raise WrongTypeError(f"{name}: expected a JSON object")
    unknown = set(value) - keys
    if unknown:
        raise UnknownFieldError(f"{name}: unknown fields {sorted(unknown)}")
    missing = keys - set(value)
    if missing:
        raise MissingFieldError(f"{name}: missing fields {sorted(missing)}")
    return value


def check_str(name: str, value: object, *, max_chars: int, min_chars: int = 0) -> str:
    """A string whose length in code points lies in [min_chars, max_chars]."""
    if not isinstance(value, str):
        raise WrongTypeError(f"{name}: expected string, got {_type_name(value)}")
    if not min_chars <= len(value) <= max_chars:
        raise OutOfRangeError(f"{name}: length {len(value)} not in [{min_chars}, {max_chars}]")
    return value


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """A string from a closed set."""
    if not isinstance(value, str):
        raise WrongTypeError(f"{name}: expected string, got {_type_name(value)}")
    if value not in choices:
        raise OutOfRangeError(f"{name}: {value!r:.40} not one of {sorted(choices)}")
    return value


def check_hex(name: str, value: object, chars: int) -> str:
    """Lowercase hex of exactly ``chars`` characters (uppercase is refused: one encoding)."""
    text = check_str(name, value, max_chars=chars)
    if len(text) != chars or not _HEX_RE.fullmatch(text):
        raise OutOfRangeError(f"{name}: expected {chars} lowercase hex characters")
    return text


def check_public_key(name: str, value: object) -> str:
    """Ed25519 public key as 64 lowercase hex characters.

    Only the format is checked here (this module knows no cryptography); message fields
    holding a key use :func:`protocol.identity.check_strong_public_key`, which also
    requires a prime-order point, and every signature check refuses a weak key.
    """
    return check_hex(name, value, PUBLIC_KEY_HEX_CHARS)


def check_node_id(name: str, value: object) -> str:
    """Node id as 64 lowercase hex characters."""
    return check_hex(name, value, NODE_ID_HEX_CHARS)


def check_nonce(name: str, value: object) -> str:
    """Nonce as 32 lowercase hex characters."""
    return check_hex(name, value, NONCE_HEX_CHARS)


def check_epoch(name: str, value: object) -> int:
    """Epoch number in [0, 2**53 - 1]."""
    return check_int(name, value, 0, MAX_EPOCH)


def check_time(name: str, value: object) -> int:
    """Unix time in integer seconds, in [0, 2**53 - 1]."""
    return check_int(name, value, 0, MAX_TIME)


def check_tuple(name: str, value: object, *, max_len: int) -> tuple[object, ...]:
    """A tuple (messages hold tuples, the wire holds arrays) of at most ``max_len`` items."""
    if not isinstance(value, tuple):
        raise WrongTypeError(f"{name}: expected tuple, got {_type_name(value)}")
    if len(value) > max_len:
        raise TooLargeError(f"{name}: {len(value)} items exceed {max_len}")
    return value


def check_int_tuple(name: str, value: object, lo: int, hi: int, *, max_len: int) -> None:
    """A tuple of integers, each in [lo, hi]."""
    for i, item in enumerate(check_tuple(name, value, max_len=max_len)):
        check_int(f"{name}[{i}]", item, lo, hi)


_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def check_endpoint(name: str, value: object, *, max_chars: int) -> str:
    """``host:port``: a DNS name or IPv4 address, or ``[IPv6]``; port in 1..65535."""
    text = check_str(name, value, max_chars=max_chars, min_chars=3)
    host, sep, port = text.rpartition(":")
    if (
        not sep
        or not _HOST_RE.fullmatch(host)
        or not port.isascii()
        or not port.isdigit()
        or len(port) > 5
        or port != str(int(port))  # no leading zeros: one spelling per endpoint
        or not 1 <= int(port) <= 65535
    ):
        raise OutOfRangeError(f"{name}: {text!r:.80} is not host:port")
    return text
