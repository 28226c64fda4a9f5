"""Signed envelopes: the signing rule, the wire form, and tamper detection."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import decode
from protocol.envelope import Envelope, envelope_size_limit, signing_input
from protocol.errors import InkindError
from protocol.identity import Identity

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=100)
ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)

types = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)


def test_signing_input_layout_is_exactly_as_specified() -> None:
    assert signing_input("declaration", b'{"a":1}') == (
        b"inkind/v1\x00declaration\x00" + (7).to_bytes(8, "big") + b'{"a":1}'
    )


def test_signing_input_separates_type_from_payload() -> None:
    # Without the separator and length these two would sign the same bytes.
    assert signing_input("ab", b"c") != signing_input("a", b"bc")


def test_seal_verify_and_wire_round_trip() -> None:
    env = Envelope.seal(ALICE, "declaration", b'{"x":1}')
    env.verify()
    assert Envelope.from_bytes(env.to_bytes(), max_size=1000) == env
    obj = json.loads(env.to_bytes())
    assert obj == {
        "type": "declaration",
        "signer": ALICE.public_key,
        "payload": base64.b64encode(b'{"x":1}').decode(),
        "signature": env.signature.hex(),
    }


def test_envelope_wire_form_tolerates_whitespace_and_key_order() -> None:
    env = Envelope.seal(ALICE, "declaration", b"{}")
    loose = json.dumps(dict(reversed(list(env.to_obj().items()))), indent=2).encode()
    assert Envelope.from_bytes(loose, max_size=1000) == env


@FAST
@given(types, st.binary(max_size=300))
def test_any_payload_round_trips_and_verifies(message_type: str, payload: bytes) -> None:
    env = Envelope.seal(ALICE, message_type, payload)
    back = Envelope.from_bytes(env.to_bytes(), max_size=envelope_size_limit(300))
    assert back == env
    back.verify()


@FAST
@given(st.binary(min_size=1, max_size=200), st.data())
def test_tampering_any_payload_byte_is_detected(payload: bytes, data: st.DataObject) -> None:
    env = Envelope.seal(ALICE, "declaration", payload)
    i = data.draw(st.integers(0, len(payload) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(payload)
    tampered[i] ^= flip
    bad = Envelope(
        type=env.type, signer=env.signer, payload=bytes(tampered), signature=env.signature
    )
    with pytest.raises(InkindError) as excinfo:
        bad.verify()
    assert excinfo.value.code == "bad_signature"


@FAST
@given(st.integers(0, 63), st.integers(1, 255))
def test_tampering_any_signature_byte_is_detected(i: int, flip: int) -> None:
    env = Envelope.seal(ALICE, "declaration", b'{"a":1}')
    sig = bytearray(env.signature)
    sig[i] ^= flip
    bad = Envelope(type=env.type, signer=env.signer, payload=env.payload, signature=bytes(sig))
    with pytest.raises(InkindError) as excinfo:
        bad.verify()
    assert excinfo.value.code == "bad_signature"


def test_a_payload_signed_as_one_type_does_not_verify_as_another() -> None:
    env = Envelope.seal(ALICE, "declaration", b"{}")
    relabelled = Envelope(
        type="commitment", signer=env.signer, payload=env.payload, signature=env.signature
    )
    with pytest.raises(InkindError) as excinfo:
        relabelled.verify()
    assert excinfo.value.code == "bad_signature"


def test_a_signature_does_not_verify_under_another_signer() -> None:
    env = Envelope.seal(ALICE, "declaration", b"{}")
    claimed = Envelope(
        type=env.type, signer=BOB.public_key, payload=env.payload, signature=env.signature
    )
    with pytest.raises(InkindError) as excinfo:
        claimed.verify()
    assert excinfo.value.code == "bad_signature"


def _obj(**changes: object) -> dict[str, object]:
    obj: dict[str, object] = dict(Envelope.seal(ALICE, "declaration", b"{}").to_obj())
    for key, value in changes.items():
        if value is None:
            del obj[key]
        else:
            obj[key] = value
    return obj


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ([], "wrong_type"),
        ({**_obj(), "extra": "x"}, "unknown_field"),
        (_obj(signature=None), "missing_field"),
        (_obj(payload="e30"), "malformed"),  # missing padding
        (_obj(payload="e31="), "malformed"),  # non-zero pad bits
        (_obj(payload="e3 0="), "malformed"),
        (_obj(payload="é30="), "malformed"),
        (_obj(payload=5), "wrong_type"),
        (_obj(signature="AB" * 64), "out_of_range"),
        (_obj(signature="ab" * 63), "out_of_range"),
        (_obj(signature=" a" * 64), "out_of_range"),
        (_obj(signer="AB" * 32), "out_of_range"),
        (_obj(signer=1), "wrong_type"),
        (_obj(type="Declaration"), "out_of_range"),
        (_obj(type=""), "out_of_range"),
        (_obj(type="x" * 33), "out_of_range"),
    ],
)
def test_envelope_object_refusals(obj: object, code: str) -> None:
    with pytest.raises(InkindError) as excinfo:
        Envelope.from_obj(obj)
    assert excinfo.value.code == code


def test_from_bytes_enforces_the_size_limit_and_flat_shape() -> None:
    raw = Envelope.seal(ALICE, "declaration", b"{}").to_bytes()
    with pytest.raises(InkindError) as excinfo:
        Envelope.from_bytes(raw, max_size=len(raw) - 1)
    assert excinfo.value.code == "too_large"
    nested = raw.replace(b'"type":"declaration"', b'"type":["declaration"]')
    with pytest.raises(InkindError) as excinfo:
        Envelope.from_bytes(nested, max_size=1000)
    assert excinfo.value.code == "malformed"


def test_building_an_envelope_checks_formats() -> None:
    with pytest.raises(InkindError) as excinfo:
        Envelope(type="x", signer=ALICE.public_key, payload=b"", signature=b"\x00" * 63)
    assert excinfo.value.code == "out_of_range"
    with pytest.raises(InkindError) as excinfo:
        Envelope(type="x", signer=ALICE.public_key, payload="{}", signature=b"\x00" * 64)  # type: ignore[arg-type]
    assert excinfo.value.code == "wrong_type"


@FAST
@given(st.binary(max_size=300))
def test_parsing_random_bytes_raises_only_project_errors(raw: bytes) -> None:
    with contextlib.suppress(InkindError):
        Envelope.from_bytes(raw, max_size=1000).verify()


def _strict(raw: bytes, max_size: int) -> Envelope | str:
    """What the strict parser makes of ``raw``: the envelope, or its error's code."""
    try:
        return Envelope.from_obj(decode(raw, max_bytes=max_size, max_depth=1))
    except InkindError as exc:
        return exc.code


def _parsed(raw: bytes, max_size: int) -> Envelope | str:
    try:
        return Envelope.from_bytes(raw, max_size=max_size)
    except InkindError as exc:
        return exc.code


@FAST
@given(payload=st.binary(max_size=300), kind=types, signature=st.binary(min_size=64,
                                                                         max_size=64))
def test_a_canonical_envelope_parses_as_the_strict_parser_parses_it(
        payload: bytes, kind: str, signature: bytes) -> None:
    env = Envelope(type=kind, signer=ALICE.public_key, payload=payload, signature=signature)
    raw = env.to_bytes()
    assert _parsed(raw, 1000) == _strict(raw, 1000) == env
    assert _parsed(raw, len(raw) - 1) == "too_large"


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(st.data())
def test_a_mutated_envelope_is_judged_as_the_strict_parser_judges_it(
        data: st.DataObject) -> None:
    # Bytes near the canonical form (what the one-match path sees first): same envelope
    # or same error code either way.
    env = Envelope.seal(ALICE, "declaration", data.draw(st.binary(max_size=60)))
    raw = bytearray(env.to_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.sampled_from(b'"{}:,= +/Aa0f9zZ\\\x00\xff'))
    assert _parsed(bytes(raw), 1000) == _strict(bytes(raw), 1000)


@pytest.mark.parametrize("b64", ["e30", "e31=", "====", "e30=="])
def test_a_canonical_shaped_envelope_with_bad_base64_is_refused(b64: str) -> None:
    raw = Envelope.seal(ALICE, "declaration", b"{}").to_bytes()
    raw = raw.replace(b'"e30="', f'"{b64}"'.encode())
    assert _parsed(raw, 1000) == _strict(raw, 1000) == "malformed"
