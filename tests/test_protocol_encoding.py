"""Canonical encoding, the strict parser, and micro-unit conversion."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import (
    MAX_SAFE_INTEGER,
    JsonValue,
    canonical,
    decode,
    decode_canonical,
    decode_object,
    from_micro,
    to_micro,
)
from protocol.errors import InkindError

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=100)

keys = st.tuples(st.sampled_from("abcxyz"), st.text("az09_", max_size=8)).map("".join)
ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    ints | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
# Anything json.dumps can write, including what the canonical form refuses.
loose_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def code_of(excinfo: pytest.ExceptionInfo[InkindError]) -> str:
    return excinfo.value.code


# --- the canonical form, pinned byte for byte -----------------------------------------


def test_canonical_sorts_keys_and_has_no_whitespace() -> None:
    assert canonical({"b": 1, "a": [1, "x", {"d": -2, "c": 0}]}) == (
        b'{"a":[1,"x",{"c":0,"d":-2}],"b":1}'
    )


def test_canonical_string_escaping_is_exactly_as_specified() -> None:
    text = '"\\/\b\t\n\f\r\x00\x1f\x7f é€😀'
    assert canonical({"s": text}) == (
        b'{"s":"\\"\\\\/\\b\\t\\n\\f\\r\\u0000\\u001f\x7f \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}'
    )


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({"x": 1.5}, "wrong_type"),
        ({"x": True}, "wrong_type"),
        ({"x": None}, "wrong_type"),
        ({"x": (1, 2)}, "wrong_type"),
        ({"x": b"bytes"}, "wrong_type"),
        ({"x": MAX_SAFE_INTEGER + 1}, "out_of_range"),
        ({"x": -MAX_SAFE_INTEGER - 1}, "out_of_range"),
        ({"Upper": 1}, "malformed"),
        ({"": 1}, "malformed"),
        ({"x": "\ud800"}, "malformed"),
        ({"x": [[[[[[[[[1]]]]]]]]]}, "malformed"),
    ],
)
def test_canonical_refuses_what_has_no_canonical_form(value: Any, code: str) -> None:
    with pytest.raises(InkindError) as excinfo:
        canonical(value)
    assert code_of(excinfo) == code


# --- the strict parser ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"a":1,"a":2}', "malformed"),
        (b'{"a":1.0}', "malformed"),
        (b'{"a":1e3}', "malformed"),
        (b'{"a":NaN}', "malformed"),
        (b'{"a":Infinity}', "malformed"),
        (b'{"a":-Infinity}', "malformed"),
        (b'{"a":true}', "wrong_type"),
        (b'{"a":null}', "wrong_type"),
        (b'{"a":9007199254740992}', "out_of_range"),
        (b'{"a":' + b"9" * 5000 + b"}", "out_of_range"),
        (b'{"A":1}', "malformed"),
        (b'{"a":"\\ud800"}', "malformed"),
        (b'{"a":"\xff"}', "malformed"),
        ('{"a":1}'.encode("utf-16"), "malformed"),
        (b"\xef\xbb\xbf{}", "malformed"),
        (b'{"a":1', "malformed"),
        (b"", "malformed"),
        (b'{"a":"\x01"}', "malformed"),
        (b"[" * 9 + b"]" * 9, "malformed"),
        (b"[" * 100_000 + b"]" * 100_000, "too_large"),
    ],
)
def test_decode_refuses_with_the_right_code(data: bytes, code: str) -> None:
    with pytest.raises(InkindError) as excinfo:
        decode(data)
    assert code_of(excinfo) == code


def test_decode_refuses_deep_nesting_without_recursion_error() -> None:
    data = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(InkindError) as excinfo:
        decode(data, max_bytes=len(data))
    assert code_of(excinfo) == "malformed"


def test_decode_checks_size_before_parsing() -> None:
    with pytest.raises(InkindError) as excinfo:
        decode(b'"' + b"x" * 100 + b'"', max_bytes=50)
    assert code_of(excinfo) == "too_large"


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(InkindError) as excinfo:
        decode("{}")  # type: ignore[arg-type]
    assert code_of(excinfo) == "wrong_type"


@pytest.mark.parametrize(
    "data",
    [b'{ "a":1}', b'{"b":1,"a":2}', b'{"a":-0}', b'{"a":"\\u0041"}', b'{"a":"\\/"}', b"{}\n"],
)
def test_decode_canonical_refuses_other_spellings_that_decode_accepts(data: bytes) -> None:
    decode(data)
    with pytest.raises(InkindError) as excinfo:
        decode_canonical(data)
    assert code_of(excinfo) == "malformed"


def test_decode_object_requires_an_object() -> None:
    with pytest.raises(InkindError) as excinfo:
        decode_object(b"[1]")
    assert code_of(excinfo) == "wrong_type"


@FAST
@given(json_values)
def test_canonical_round_trips(value: JsonValue) -> None:
    data = canonical(value, max_depth=64)
    assert decode_canonical(data, max_depth=64, max_bytes=1 << 20) == value
    assert canonical(json.loads(data), max_depth=64) == data  # stdlib reads it the same


@FAST
@given(st.binary(max_size=200))
def test_decode_of_random_bytes_raises_only_project_errors(data: bytes) -> None:
    with contextlib.suppress(InkindError):
        decode_canonical(data)


@FAST
@given(loose_values)
def test_decode_of_arbitrary_json_raises_only_project_errors(value: Any) -> None:
    for data in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode()):
        try:
            decode(data)
        except UnicodeEncodeError:
            pass  # json.dumps produced a lone surrogate: not even bytes yet
        except InkindError:
            pass


@FAST
@given(loose_values)
def test_canonical_of_arbitrary_values_raises_only_project_errors(value: Any) -> None:
    with contextlib.suppress(InkindError):
        canonical(value)


# --- micro-units ----------------------------------------------------------------------


def test_to_micro_rounds_the_exact_binary_value() -> None:
    assert to_micro(0.1) == 100_000
    assert to_micro(1) == 1_000_000
    assert to_micro(-0.25) == -250_000
    # 2**-7 * 1e6 = 7812.5 exactly: a true tie.
    assert to_micro(0.0078125) == 7812
    assert to_micro(3 * 0.0078125) == 23438
    assert to_micro(0.0078125, rounding="floor") == 7812
    assert to_micro(0.0078125, rounding="ceiling") == 7813
    assert to_micro(-0.0078125, rounding="floor") == -7813
    assert to_micro(-0.0078125, rounding="ceiling") == -7812


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (float("nan"), "out_of_range"),
        (float("inf"), "out_of_range"),
        (1e300, "out_of_range"),
        (True, "wrong_type"),
        ("1", "wrong_type"),
    ],
)
def test_to_micro_refuses(value: Any, code: str) -> None:
    with pytest.raises(InkindError) as excinfo:
        to_micro(value)
    assert code_of(excinfo) == code


def test_from_micro_refuses_non_integers() -> None:
    with pytest.raises(InkindError) as excinfo:
        from_micro(1.0)  # type: ignore[arg-type]
    assert code_of(excinfo) == "wrong_type"


@FAST
@given(st.integers(min_value=-(2**52) + 1, max_value=2**52 - 1))
def test_micro_round_trip_is_exact(micro: int) -> None:
    assert to_micro(from_micro(micro)) == micro


@FAST
@given(st.floats(min_value=-1e9, max_value=1e9))
def test_to_micro_is_within_half_a_micro_unit(value: float) -> None:
    from fractions import Fraction

    assert abs(Fraction(to_micro(value)) - Fraction(value) * 10**6) <= Fraction(1, 2)
    assert to_micro(value, rounding="floor") <= to_micro(value, rounding="ceiling")


# --- orjson writes and reads exactly what the standard-library reference does ----------
#
# protocol.encoding encodes with orjson and decodes through an orjson fast path. The
# reference below is the former standard-library implementation, kept here verbatim in
# behaviour: the canonical form is json.dumps(ensure_ascii=False, sort_keys=True,
# compact) of a checked tree; the strict parser is json.loads with hooks that refuse
# floats, constants, long integers and duplicate keys. Every answer of the module (bytes,
# value or error code) must be the reference's.

REF = settings(derandomize=True, database=None, deadline=None, max_examples=150)


def _ref_canonical(value: Any, max_depth: int = 8) -> bytes:
    from protocol.encoding import _check_tree

    _check_tree(value, max_depth)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _ref_decode(data: bytes, max_depth: int = 8) -> Any:
    # The hooks are the module's strict ones (the standard-library path, unchanged).
    from protocol.encoding import _pairs, _parse_int, _refuse_constant, _refuse_float
    from protocol.errors import MalformedError

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedError("not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_float=_refuse_float,
                           parse_int=_parse_int, parse_constant=_refuse_constant)
    except RecursionError:
        raise MalformedError("deep") from None
    except json.JSONDecodeError:
        raise MalformedError("invalid") from None
    _ref_canonical(value, max_depth)  # the tree check (the bytes are not compared here)
    return value


def _ref_decode_canonical(data: bytes) -> Any:
    from protocol.errors import MalformedError

    value = _ref_decode(data)
    if _ref_canonical(value) != data:
        raise MalformedError("not canonical")
    return value


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("value", fn(*args))
    except InkindError as exc:
        return ("error", exc.code)


any_keys = st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True)
# Every code point but lone surrogates: control characters, U+007F, U+2028, astral planes.
any_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
canonical_values: st.SearchStrategy[Any] = st.recursive(
    ints | any_texts | st.integers(min_value=-1000, max_value=1000),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_keys, inner, max_size=5),
    max_leaves=30,
)
# Canonical values plus what the form refuses somewhere inside (floats, booleans, null,
# big integers, bad keys, tuples, lone surrogates, deep nesting).
hostile_values: st.SearchStrategy[Any] = st.recursive(
    ints | any_texts | st.none() | st.booleans() | st.floats() | st.integers()
    | st.text(max_size=5),
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner)
                   | st.dictionaries(any_keys | st.text(max_size=4), inner, max_size=4)),
    max_leaves=25,
)


@REF
@given(canonical_values)
def test_orjson_canonical_is_the_reference_bytes(value: Any) -> None:
    assert canonical(value, max_depth=64) == _ref_canonical(value, max_depth=64)


@REF
@given(hostile_values)
def test_canonical_refuses_exactly_what_the_reference_refuses(value: Any) -> None:
    assert _outcome(canonical, value) == _outcome(_ref_canonical, value)


def _spellings(value: Any) -> list[bytes]:
    """The canonical bytes of ``value`` and other spellings of it a peer might send."""
    try:
        data = _ref_canonical(value, max_depth=64)
    except InkindError:
        data = json.dumps(value, default=str).encode("utf-8", "surrogatepass")
    return [data, json.dumps(value, default=str).encode("utf-8", "surrogatepass"),
            json.dumps(value, indent=1, default=str).encode("utf-8", "surrogatepass"),
            data.replace(b":", b": ", 1), data + b" ", b" " + data]


@REF
@given(hostile_values | canonical_values)
def test_decoders_answer_the_reference_on_every_spelling(value: Any) -> None:
    for data in _spellings(value):
        assert _outcome(decode, data) == _outcome(_ref_decode, data)
        assert _outcome(decode_canonical, data) == _outcome(_ref_decode_canonical, data)


@REF
@given(canonical_values, st.data())
def test_decoders_answer_the_reference_on_damaged_bytes(value: Any, data: st.DataObject) -> None:
    raw = bytearray(_ref_canonical(value, max_depth=64))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(raw)))
        edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from(b'{}[]",:-0123456789 \\u\x00\xff\xc3aeE.'))
        if edit == "insert":
            raw.insert(at, byte)
        elif at < len(raw):
            if edit == "delete":
                del raw[at]
            else:
                raw[at] = byte
    damaged = bytes(raw)
    assert _outcome(decode, damaged) == _outcome(_ref_decode, damaged)
    assert _outcome(decode_canonical, damaged) == _outcome(_ref_decode_canonical, damaged)


@REF
@given(st.binary(max_size=100))
def test_decoders_answer_the_reference_on_random_bytes(data: bytes) -> None:
    assert _outcome(decode, data) == _outcome(_ref_decode, data)
    assert _outcome(decode_canonical, data) == _outcome(_ref_decode_canonical, data)


@pytest.mark.parametrize(
    "data",
    [b'{"a":1,"a":1}', b'{"a":1,"a":2}', b'{"a":-0}', b'{"a":1.0}', b'{"a":1e2}',
     b'{"a":18446744073709551616}', b'{"a":9007199254740992}', b'{"a":"\\ud800"}',
     b'{"a":"\\u00e9"}', b'{"a":"\\/"}', b'{"a":true}', b'{"a":null}', b"\xef\xbb\xbf{}",
     b'{"a":[[[[[[[[1]]]]]]]]}', b'{"a":"\x7f"}', b'{"a":"\x1f"}', b'{"a":"\\u001F"}'],
)
def test_decoders_answer_the_reference_on_known_differences_of_parsers(data: bytes) -> None:
    # Inputs where orjson's parser and the strict one differ (orjson keeps the last of
    # duplicate keys, reads -0 as 0, big integers as floats, ...): the answer is the
    # strict parser's every time.
    assert _outcome(decode, data) == _outcome(_ref_decode, data)
    assert _outcome(decode_canonical, data) == _outcome(_ref_decode_canonical, data)
