"""The error hierarchy: one class per wire code, statuses by branch, wire round trip."""

from __future__ import annotations

import pytest

from protocol import errors
from protocol.errors import (
    ERROR_CLASSES,
    SERVICE_CODES,
    WIRE_CODES,
    InkindError,
    MalformedError,
    ProtocolViolationError,
    RefusedError,
    UnrecognizedError,
    error_from_code,
    from_wire,
    to_wire,
)

# The codes the design promises; more may exist, none of these may disappear.
PROMISED = {
    "bad_signature": ProtocolViolationError,
    "unknown_field": ProtocolViolationError,
    "out_of_range": ProtocolViolationError,
    "too_large": ProtocolViolationError,
    "malformed": ProtocolViolationError,
    "wrong_type": ProtocolViolationError,
    "bad_proof": ProtocolViolationError,
    "stale_epoch": RefusedError,
    "replay": RefusedError,
    "unknown_key": RefusedError,
    "expired": RefusedError,
    "not_included": RefusedError,
    "revoked": RefusedError,
    "capacity_exhausted": RefusedError,
    "duplicate_declaration": RefusedError,
    "epoch_closed": RefusedError,
    "future_epoch": RefusedError,
}

# The HTTP binding's own answers (protocol/HTTP.md): code -> (branch, HTTP status).
SERVICE = {
    "no_epoch": (RefusedError, 404),
    "unknown_epoch": (RefusedError, 404),
    "unauthorized": (RefusedError, 401),
    "wrong_phase": (RefusedError, 409),
    "probation": (RefusedError, 403),
    "not_found": (ProtocolViolationError, 404),
    "method_not_allowed": (ProtocolViolationError, 405),
}


def test_every_promised_code_exists_in_its_branch() -> None:
    for code, branch in PROMISED.items():
        assert issubclass(ERROR_CLASSES[code], branch), code


def test_every_class_ends_in_error_and_has_a_unique_code() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, InkindError)
    ]
    assert all(cls.__name__.endswith("Error") for cls in classes)
    assert len({cls.code for cls in classes}) == len(classes)
    assert set(ERROR_CLASSES.values()) == set(classes)


def test_service_codes_are_typed_wire_codes_with_their_http_status() -> None:
    assert set(SERVICE) == SERVICE_CODES
    for code, (branch, status) in SERVICE.items():
        cls = ERROR_CLASSES[code]
        assert issubclass(cls, branch) and cls.http_status == status, code
        assert code in WIRE_CODES
        # A client gets the typed error back, not UnrecognizedError(http 500).
        back = from_wire({"code": code, "message": "m"})
        assert type(back) is cls and back.code == code and back.http_status == status


def test_service_codes_are_never_a_refusal_reason() -> None:
    from protocol.messages import REFUSAL_REASONS

    assert not SERVICE_CODES & REFUSAL_REASONS
    assert "not_included" in REFUSAL_REASONS and "capacity_exhausted" in REFUSAL_REASONS


def test_violations_are_400ish_and_refusals_403_or_409() -> None:
    for cls in ERROR_CLASSES.values():
        if cls.code in SERVICE_CODES:
            continue  # HTTP binding answers: checked above
        if issubclass(cls, ProtocolViolationError):
            assert cls.http_status in {400, 401, 413}, cls
        elif issubclass(cls, RefusedError):
            assert cls.http_status in {403, 409}, cls
    assert not issubclass(RefusedError, ProtocolViolationError)
    assert not issubclass(ProtocolViolationError, RefusedError)


@pytest.mark.parametrize("code", sorted(WIRE_CODES))
def test_wire_round_trip_keeps_class_and_message(code: str) -> None:
    err = error_from_code(code, "why")
    assert type(err) is ERROR_CLASSES[code]
    assert to_wire(err) == {"code": code, "message": "why"}
    back = from_wire(to_wire(err))
    assert type(back) is type(err)
    assert str(back) == "why"


def test_unknown_code_becomes_unrecognized_error_keeping_the_code() -> None:
    err = error_from_code("teapot", "short and stout")
    assert isinstance(err, UnrecognizedError)
    assert err.wire_code == "teapot"
    assert err.code == "unrecognized"


def test_local_only_codes_are_not_accepted_from_the_wire() -> None:
    assert isinstance(error_from_code("key_file", "x"), UnrecognizedError)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "malformed",
        {"code": "replay"},
        {"code": 1, "message": "m"},
        {"code": "replay", "message": "m", "extra": 1},
    ],
)
def test_from_wire_turns_a_bad_body_into_malformed_error(body: object) -> None:
    assert isinstance(from_wire(body), MalformedError)


def test_from_wire_bounds_the_message_length() -> None:
    err = from_wire({"code": "replay", "message": "x" * 100_000})
    assert len(str(err)) == errors.MAX_ERROR_MESSAGE_CHARS
