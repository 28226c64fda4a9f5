"""Canonical, deterministic JSON for signed payloads, and its strict parser.

The canonical form (normative; see ``protocol/README.md``, section "Canonical encoding"):

* values are objects, arrays, strings and integers only: no floats, no ``true``/``false``,
  no ``null`` (optional fields are omitted instead);
* integers lie in [-(2**53 - 1), 2**53 - 1] (the I-JSON range, RFC 7493, so that every
  JSON implementation reads them exactly), written in plain decimal, no ``+``, no
  leading zeros, no ``-0``;
* object keys match ``[a-z][a-z0-9_]{0,63}``, so sorting them by code point is plain
  ASCII byte order; no key appears twice;
* no whitespace; separators are ``,`` and ``:``;
* strings are UTF-8; ``"`` and ``\\`` are escaped as ``\\"`` and ``\\\\``; U+0008, U+0009,
  U+000A, U+000C, U+000D as ``\\b \\t \\n \\f \\r``; other code points below U+0020 as
  ``\\u00XX`` with lowercase hex; everything else (U+007F and non-ASCII included) is
  written as raw UTF-8. Lone surrogates are not allowed.

Both directions go through orjson where it gives the same answer (``protocol/README.md``
section 3 stays the normative text; the tests compare orjson's bytes with the standard
library's reference encoding on arbitrary values). Encoding: the tree is checked, then
orjson writes it (its compact, sorted output is the canonical form for every value the
check lets through). Decoding: orjson parses, the tree is checked once, and if orjson's
encoding of the result is exactly the input, the input is canonical and the value is
returned; anything else (another spelling, an error) goes to the strict standard-library
parser, which decides and names the error. So the fast path changes no answer: it accepts
only bytes that are the canonical encoding of a checked value, which the strict parser
accepts with the same value.

Quantities are integers in micro-units (1e-6 of the unit); :func:`to_micro` and
:func:`from_micro` convert with an explicit rounding rule.

This module deliberately does not sign or verify anything and knows no message types:
it turns values into bytes and bytes into values, nothing more.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Literal, NoReturn, TypeAlias

import orjson

from protocol.errors import MalformedError, OutOfRangeError, TooLargeError, WrongTypeError

JsonValue: TypeAlias = "dict[str, JsonValue] | list[JsonValue] | str | int"
JsonObject: TypeAlias = "dict[str, JsonValue]"

#: Largest integer magnitude allowed anywhere in a payload (RFC 7493 I-JSON).
MAX_SAFE_INTEGER = 2**53 - 1
#: Default size limit for one JSON body, in bytes (callers pass larger limits as data).
DEFAULT_MAX_BYTES = 64 * 1024
#: Default nesting limit (an object inside a list inside an object has depth 3).
DEFAULT_MAX_DEPTH = 8
#: Micro-units per unit.
MICRO = 1_000_000

KEY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
# 16 digits hold 2**53 - 1; anything longer is refused before int() sees it (cost bound).
_MAX_INT_DIGITS = 16

Rounding = Literal["half_even", "floor", "ceiling"]


# --- encoding -------------------------------------------------------------------------


def canonical(value: JsonValue, *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """Encode ``value`` in the canonical form; raise if it holds anything not allowed.

    Raises :class:`WrongTypeError` for floats, booleans, None or other objects,
    :class:`OutOfRangeError` for integers beyond the safe range and
    :class:`MalformedError` for bad keys, lone surrogates or nesting beyond ``max_depth``.
    """
    _check_tree(value, max_depth)
    # Cannot fail: _check_tree let only str keys, safe ints, lists, dicts and strings
    # without lone surrogates through.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# --- decoding -------------------------------------------------------------------------


def _refuse_float(text: str) -> NoReturn:
    raise MalformedError(f"floats are not allowed: {text[:40]!r}")


def _refuse_constant(text: str) -> NoReturn:
    raise MalformedError(f"non-JSON constant {text!r}")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise OutOfRangeError(f"integer with {len(text)} characters")
    return int(text)


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, val in pairs:
        if key in out:  # json.loads would silently keep the last one
            raise MalformedError(f"duplicate key {key!r}")
        out[key] = val
    return out


def _decode_if_canonical(data: bytes, max_depth: int) -> object:
    """The value ``data`` is the canonical encoding of, or ``_NOT_CANONICAL``.

    Never raises: anything but a canonical encoding of an allowed value is left to the
    strict parser, which then decides (the module docstring says why that is the same
    answer)."""
    try:
        value = orjson.loads(data)
        _check_tree(value, max_depth)
    except (orjson.JSONDecodeError, MalformedError, OutOfRangeError, WrongTypeError):
        return _NOT_CANONICAL
    if orjson.dumps(value, option=orjson.OPT_SORT_KEYS) != data:
        return _NOT_CANONICAL
    return value


_NOT_CANONICAL = object()


def decode(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> JsonValue:
    """Parse JSON strictly: UTF-8 only, size and depth bounded, canonical value types.

    Whitespace and key order are tolerated (use :func:`decode_canonical` to refuse
    them). Every failure is an :class:`~protocol.errors.InkindError`.
    """
    value = _decode_checked(data, max_bytes, max_depth)
    if value is _NOT_CANONICAL:
        return _decode_strict(data, max_depth)
    return value  # type: ignore[return-value]  # _check_tree proved the shape


def _decode_checked(data: bytes, max_bytes: int, max_depth: int) -> object:
    """Type and size checks, then the canonical fast path (or ``_NOT_CANONICAL``)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WrongTypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise TooLargeError(f"body of {len(data)} bytes exceeds {max_bytes}")
    return _decode_if_canonical(bytes(data), max_depth)


def _decode_strict(data: bytes, max_depth: int) -> JsonValue:
    """The standard library's parser with every hook of the strict form."""
    try:
        # Decode ourselves: json.loads(bytes) would also guess UTF-16 and UTF-32.
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"not UTF-8: {exc.reason}") from None
    try:
        value: object = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=_refuse_float,
            parse_int=_parse_int,
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        raise MalformedError("nesting too deep") from None
    except json.JSONDecodeError as exc:
        raise MalformedError(f"invalid JSON: {exc.msg} at {exc.pos}") from None
    _check_tree(value, max_depth)
    return value  # type: ignore[return-value]  # _check_tree proved the shape


def decode_canonical(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> JsonValue:
    """Like :func:`decode`, but also refuse any byte string that is not canonical.

    Signed payloads must be canonical so that one message has exactly one encoding.
    """
    value = _decode_checked(data, max_bytes, max_depth)
    if value is not _NOT_CANONICAL:
        return value  # type: ignore[return-value]  # _check_tree proved the shape
    # Not canonical, or not even valid: the strict parser names the error if there is
    # one, else the payload parses but is another spelling.
    _decode_strict(data, max_depth)
    raise MalformedError("payload is not in canonical form")


def decode_object(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    require_canonical: bool = True,
) -> JsonObject:
    """Decode bytes that must hold a JSON object (the shape of every payload)."""
    parse = decode_canonical if require_canonical else decode
    value = parse(data, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(value, dict):
        raise WrongTypeError(f"expected a JSON object, got {_json_type(value)}")
    return value


# --- shared value check ---------------------------------------------------------------


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    if value is None:
        return "null"
    return type(value).__name__


def _check_tree(value: object, max_depth: int, depth: int = 1) -> None:
    # Recursion is bounded: a container deeper than max_depth is refused before its
    # items are looked at, so a hostile structure cannot exhaust the Python stack.
    if isinstance(value, str):
        if not value.isascii():  # ASCII holds no surrogates: skip the encode
            _check_text(value)
    elif isinstance(value, bool) or not isinstance(value, int | list | dict):
        raise WrongTypeError(f"{_json_type(value)} is not allowed in a payload")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise OutOfRangeError("integer outside [-(2**53-1), 2**53-1]")
    elif depth > max_depth:
        raise MalformedError(f"nesting deeper than {max_depth}")
    else:
        # Every key of an object before its values, and the items last to first: the
        # order of the former explicit-stack walk, so a value with several faults is
        # still refused for the same one.
        if isinstance(value, dict):
            for key in value:
                if type(key) is not str or key not in _GOOD_KEYS:
                    _check_key(key)
            items = reversed(value.values())
        else:
            items = reversed(value)
        for sub in items:
            # Exact ints and strings (most leaves) inline; anything else recurses.
            kind = type(sub)
            if kind is int:
                if not -MAX_SAFE_INTEGER <= sub <= MAX_SAFE_INTEGER:
                    raise OutOfRangeError("integer outside [-(2**53-1), 2**53-1]")
            elif kind is str:
                if not sub.isascii():
                    _check_text(sub)
            else:
                _check_tree(sub, max_depth, depth + 1)


#: Object keys already found good (the message catalogue's field names, in practice);
#: bounded so that keys a peer makes up cannot grow it without limit.
_GOOD_KEYS: set[str] = set()
_GOOD_KEYS_MAX = 1024


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise MalformedError(f"bad object key {key!r:.80}")
    if len(_GOOD_KEYS) < _GOOD_KEYS_MAX:
        _GOOD_KEYS.add(key)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError("string holds a lone surrogate") from None


# --- micro-units ----------------------------------------------------------------------


def to_micro(value: float | int, *, rounding: Rounding = "half_even") -> int:
    """Convert a quantity in units to integer micro-units.

    The exact binary value of a float is scaled by 10**6 with rational arithmetic and then
    rounded: ``"half_even"`` to the nearest integer, ties to even (the default);
    ``"floor"`` toward minus infinity; ``"ceiling"`` toward plus infinity (use it for
    what a node owes, so rounding never lowers an obligation). NaN, infinities, booleans
    and results outside the safe integer range are refused.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WrongTypeError(f"expected a number, got {_json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise OutOfRangeError(f"{value!r} has no micro-unit value")
    scaled = Fraction(value) * MICRO
    if rounding == "half_even":
        micro = round(scaled)
    elif rounding == "floor":
        micro = math.floor(scaled)
    elif rounding == "ceiling":
        micro = math.ceil(scaled)
    else:
        raise ValueError(f"unknown rounding {rounding!r}")
    if not -MAX_SAFE_INTEGER <= micro <= MAX_SAFE_INTEGER:
        raise OutOfRangeError(f"{value!r} units is outside the micro-unit range")
    return micro


def from_micro(micro: int) -> float:
    """Micro-units to units, as the float nearest to ``micro / 10**6``.

    Exact inverse of :func:`to_micro` (half_even) for ``|micro| < 2**52``.
    """
    if isinstance(micro, bool) or not isinstance(micro, int):
        raise WrongTypeError(f"expected an integer, got {_json_type(micro)}")
    return micro / MICRO  # int / int is correctly rounded in Python
