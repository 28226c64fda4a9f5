"""Opening envelopes in the right order, and the credential, access and audit checks."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import canonical
from protocol.envelope import Envelope
from protocol.errors import InkindError
from protocol.identity import Identity, VerifyKey
from protocol.messages import (
    AccessRequest,
    Allocation,
    AuditReport,
    Credential,
    Declaration,
    EpochAnnouncement,
    GrantReceipt,
    Refusal,
    Registration,
)
from protocol.verify import (
    check_credential,
    check_declaration,
    check_epoch,
    open_any,
    open_embedded,
    open_envelope,
    open_evidence,
    seal,
    seal_bytes,
)

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=100)
COORD = Identity.from_seed(b"\x01" * 32)
NODE = Identity.from_seed(b"\x02" * 32)
HOST = Identity.from_seed(b"\x03" * 32)
MALLORY = Identity.from_seed(b"\x04" * 32)
NONCE = "0123456789abcdef0123456789abcdef"
EPOCH = 7


def code(fn: Callable[[], object]) -> str:
    with pytest.raises(InkindError) as excinfo:
        fn()
    return excinfo.value.code


def credential_for(
    ident: Identity, *, epoch: int = EPOCH, nb: int = 1_000, exp: int = 2_000
) -> Credential:
    return Credential(
        node_id=ident.node_id,
        public_key=ident.public_key,
        epoch=epoch,
        not_before=nb,
        expires=exp,
        location=0,
    )


DECLARATION = Declaration(epoch=EPOCH, node_id=NODE.node_id, theta=500_000, nonce=NONCE)
ANNOUNCEMENT = EpochAnnouncement(
    epoch=EPOCH,
    mechanism="optimal",
    payment="money",
    deadline=1_000,
    fees=(),
    q=(),
    coordinator_key=COORD.public_key,
)


def signed(ident: Identity, message_type: str, payload: Any) -> bytes:
    """An envelope signed over arbitrary bytes or values, bypassing seal()'s checks."""
    if isinstance(payload, bytes):
        data = payload
    else:  # canonical layout, but json.dumps also writes what canonical() refuses
        data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return Envelope.seal(ident, message_type, data).to_bytes()


# --- open_envelope --------------------------------------------------------------------


def test_seal_then_open_returns_signer_and_equal_message() -> None:
    raw = seal_bytes(NODE, DECLARATION)
    signer, msg = open_envelope(raw, Declaration, trusted={NODE.public_key})
    assert signer == NODE.public_key
    assert msg == DECLARATION


def test_open_without_trusted_set_accepts_self_certifying_messages() -> None:
    reg = Registration(
        public_key=NODE.public_key, epoch=0, home_location=0, capacity=0, kind="files"
    )
    signer, msg = open_envelope(seal_bytes(NODE, reg), Registration, trusted=None)
    assert (signer, msg) == (NODE.public_key, reg)


def test_coordinator_messages_cannot_be_opened_without_trusted_keys() -> None:
    raw = seal_bytes(COORD, ANNOUNCEMENT)
    with pytest.raises(ValueError):
        open_envelope(raw, EpochAnnouncement, trusted=None)
    assert open_envelope(raw, EpochAnnouncement, trusted={COORD.public_key})[1] == ANNOUNCEMENT


def test_a_message_of_one_type_is_refused_where_another_is_expected() -> None:
    raw = seal_bytes(NODE, DECLARATION)
    assert code(lambda: open_envelope(raw, Registration, trusted=None)) == "unexpected_message"


def test_relabelling_the_type_breaks_the_signature() -> None:
    obj = json.loads(seal_bytes(NODE, DECLARATION))
    obj["type"] = "commitment"
    raw = json.dumps(obj).encode()
    assert code(lambda: open_any(raw, trusted=None, max_size=10_000)) == "bad_signature"


def test_untrusted_signer_is_refused_before_any_signature_work() -> None:
    obj = json.loads(
        seal_bytes(
            MALLORY,
            DECLARATION.__class__(epoch=EPOCH, node_id=MALLORY.node_id, theta=0, nonce=NONCE),
        )
    )
    obj["signature"] = "00" * 64  # would be bad_signature if it were checked
    raw = json.dumps(obj).encode()
    assert code(lambda: open_envelope(raw, Declaration, trusted={NODE.public_key})) == (
        "unknown_key"
    )


def test_signature_is_checked_before_the_payload_is_parsed() -> None:
    garbage = Envelope.seal(NODE, "declaration", b"\xff not json")
    assert code(lambda: open_embedded(garbage, Declaration, trusted=None)) == "malformed"
    forged = Envelope(
        type=garbage.type, signer=garbage.signer, payload=garbage.payload, signature=bytes(64)
    )
    assert code(lambda: open_embedded(forged, Declaration, trusted=None)) == "bad_signature"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"epoch": 7}', "malformed"),  # authentic, but not canonical
        (b"[]", "wrong_type"),
        ({**DECLARATION.to_payload(), "extra": 1}, "unknown_field"),
        ({**DECLARATION.to_payload(), "theta": True}, "wrong_type"),
        ({**DECLARATION.to_payload(), "theta": 2_000_000}, "out_of_range"),
    ],
)
def test_authentic_but_invalid_payloads_are_refused(payload: Any, expected: str) -> None:
    raw = signed(NODE, "declaration", payload)
    assert code(lambda: open_envelope(raw, Declaration, trusted=None)) == expected


def test_a_message_naming_another_node_than_its_signer_is_refused() -> None:
    raw = signed(MALLORY, "declaration", DECLARATION.to_payload())
    assert code(lambda: open_envelope(raw, Declaration, trusted=None)) == "wrong_signer"


def test_an_announcement_must_name_its_signing_coordinator() -> None:
    raw = signed(MALLORY, "epoch_announcement", ANNOUNCEMENT.to_payload())
    trusted = {COORD.public_key, MALLORY.public_key}
    assert code(lambda: open_envelope(raw, EpochAnnouncement, trusted=trusted)) == "wrong_signer"


def test_seal_refuses_to_sign_for_another_node() -> None:
    assert code(lambda: seal(MALLORY, DECLARATION)) == "wrong_signer"


def test_seal_refuses_a_payload_over_the_type_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Declaration, "MAX_PAYLOAD_BYTES", 10)
    assert code(lambda: seal(NODE, DECLARATION)) == "too_large"


def test_size_limits_apply_to_the_envelope_and_to_the_payload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = seal_bytes(NODE, DECLARATION)
    assert code(lambda: open_envelope(raw, Declaration, trusted=None, max_size=100)) == (
        "too_large"
    )
    monkeypatch.setattr(Declaration, "MAX_PAYLOAD_BYTES", 10)
    assert code(lambda: open_envelope(raw, Declaration, trusted=None, max_size=10_000)) == (
        "too_large"
    )


def test_open_any_dispatches_on_the_envelope_type() -> None:
    _signer, msg = open_any(seal_bytes(NODE, DECLARATION), trusted=None, max_size=10_000)
    assert msg == DECLARATION
    raw = signed(NODE, "teleport", {})
    assert code(lambda: open_any(raw, trusted=None, max_size=10_000)) == "unexpected_message"
    assert code(lambda: open_any(b"x" * 20, trusted=None, max_size=10)) == "too_large"


@FAST
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_project_errors(raw: bytes) -> None:
    with contextlib.suppress(InkindError):
        open_envelope(raw, Declaration, trusted=None)


@FAST
@given(st.data())
def test_any_single_byte_change_of_a_sealed_envelope_is_refused(data: st.DataObject) -> None:
    raw = bytearray(seal_bytes(NODE, DECLARATION))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        result = open_envelope(bytes(raw), Declaration, trusted=None)
    except InkindError:
        return
    # Only a change the signature does not cover may pass, and it must not change meaning.
    assert result == (NODE.public_key, DECLARATION)


@FAST
@given(st.data())
def test_any_single_byte_change_of_the_payload_is_detected(data: st.DataObject) -> None:
    obj = json.loads(seal_bytes(NODE, DECLARATION))
    payload = bytearray(base64.b64decode(obj["payload"]))
    i = data.draw(st.integers(0, len(payload) - 1))
    payload[i] ^= data.draw(st.integers(1, 255))
    obj["payload"] = base64.b64encode(payload).decode()
    assert code(lambda: open_envelope(json.dumps(obj).encode(), Declaration, trusted=None)) == (
        "bad_signature"
    )


# --- epochs and declarations ----------------------------------------------------------


def test_check_epoch() -> None:
    check_epoch(7, current=7)
    assert code(lambda: check_epoch(6, current=7)) == "stale_epoch"
    assert code(lambda: check_epoch(8, current=7)) == "future_epoch"


def test_declarations_are_accepted_strictly_before_the_deadline() -> None:
    check_declaration(DECLARATION, ANNOUNCEMENT, now=999)
    assert code(lambda: check_declaration(DECLARATION, ANNOUNCEMENT, now=1_000)) == "epoch_closed"
    old = Declaration(epoch=EPOCH - 1, node_id=NODE.node_id, theta=0, nonce=NONCE)
    assert code(lambda: check_declaration(old, ANNOUNCEMENT, now=0)) == "stale_epoch"


# --- credentials ----------------------------------------------------------------------


def test_a_valid_credential_checks_as_envelope_or_bytes() -> None:
    env = seal(COORD, credential_for(NODE))
    assert check_credential(env, COORD.public_key, epoch=EPOCH, now=1_500) == credential_for(NODE)
    assert check_credential(env.to_bytes(), COORD.public_key, epoch=EPOCH, now=1_500).node_id == (
        NODE.node_id
    )


@pytest.mark.parametrize(
    ("now", "epoch", "expected"),
    [
        (939, EPOCH, "not_yet_valid"),  # not_before 1000, skew 60
        (940, EPOCH, None),
        (2_059, EPOCH, None),
        (2_060, EPOCH, "expired"),
        (1_500, EPOCH + 1, "stale_epoch"),
        (1_500, EPOCH - 1, "future_epoch"),
    ],
)
def test_credential_windows_with_skew(now: int, epoch: int, expected: str | None) -> None:
    env = seal(COORD, credential_for(NODE))

    def check() -> Credential:
        return check_credential(env, COORD.public_key, epoch=epoch, now=now, max_skew=60)

    if expected is None:
        check()
    else:
        assert code(check) == expected


def test_a_credential_not_signed_by_the_coordinator_is_refused() -> None:
    env = seal(MALLORY, credential_for(MALLORY))
    assert code(lambda: check_credential(env, COORD.public_key, epoch=EPOCH, now=1_500)) == (
        "unknown_key"
    )


# --- audit evidence -------------------------------------------------------------------


def request(host: Identity, epoch: int = EPOCH, requester: Identity = NODE) -> Envelope:
    return seal(requester, AccessRequest(credential_digest="ab" * 32, host_id=host.node_id,
                                         epoch=epoch, issued=1_500, nonce=NONCE, amount=1))


def receipt(host: Identity, epoch: int = EPOCH, requester: Identity = NODE) -> Envelope:
    return seal(
        host,
        GrantReceipt(
            epoch=epoch,
            host_id=host.node_id,
            requester_id=requester.node_id,
            nonce=NONCE,
            amount=1,
            time=1_500,
            request=request(host, epoch, requester),
        ),
    )


def refusal(host: Identity) -> Envelope:
    return seal(
        host,
        Refusal(
            epoch=EPOCH,
            host_id=host.node_id,
            requester_id=NODE.node_id,
            nonce=NONCE,
            reason="capacity_exhausted",
            time=1_500,
            request=request(host),
        ),
    )


def report(*evidence: Envelope) -> AuditReport:
    raw = seal_bytes(NODE, AuditReport(epoch=EPOCH, reporter_id=NODE.node_id, evidence=evidence))
    return open_envelope(raw, AuditReport, trusted=None)[1]


def test_audit_evidence_opens_into_receipts_and_refusals() -> None:
    keys = {HOST.public_key, NODE.public_key}
    items = open_evidence(report(receipt(HOST), refusal(HOST)), host_keys=keys)
    assert [type(item) for _, item in items] == [GrantReceipt, Refusal]
    assert all(signer == HOST.public_key for signer, _ in items)


def test_audit_evidence_refusals() -> None:
    keys = {HOST.public_key}
    assert code(lambda: open_evidence(report(receipt(MALLORY)), host_keys=keys)) == "unknown_key"
    late = report(receipt(HOST, epoch=EPOCH + 1))
    assert code(lambda: open_evidence(late, host_keys=keys)) == "future_epoch"
    payload = GrantReceipt(
        epoch=EPOCH,
        host_id=HOST.node_id,
        requester_id=NODE.node_id,
        nonce=NONCE,
        amount=1,
        time=1,
        request=request(HOST),
    ).to_payload()
    framed = Envelope.seal(MALLORY, "grant_receipt", canonical(payload))
    keys_m = {MALLORY.public_key, NODE.public_key}
    assert code(lambda: open_evidence(report(framed), host_keys=keys_m)) == "wrong_signer"


def test_a_receipt_backed_by_a_request_its_requester_never_signed_is_refused() -> None:
    # The host signs a receipt around a request it made up (signed by itself, or by a
    # key that is not registered): the ledger entry is worthless.
    keys = {HOST.public_key, NODE.public_key}
    made_up = receipt(HOST, requester=MALLORY)
    assert code(lambda: open_evidence(report(made_up), host_keys=keys)) == "unknown_key"
    forged_req = Envelope(type="access_request", signer=NODE.public_key,
                          payload=request(HOST).payload, signature=bytes(64))
    bad = GrantReceipt(epoch=EPOCH, host_id=HOST.node_id, requester_id=NODE.node_id,
                       nonce=NONCE, amount=1, time=1_500, request=forged_req)
    assert code(lambda: open_evidence(report(seal(HOST, bad)), host_keys=keys)) == (
        "bad_signature")


def test_coordinator_signed_allocation_needs_a_trusted_signer() -> None:
    alloc = Allocation(
        epoch=EPOCH, mechanism="optimal", q=(), included=(), contributions=(), expected_welfare=0
    )
    raw = seal_bytes(COORD, alloc)
    assert code(lambda: open_envelope(raw, Allocation, trusted={NODE.public_key})) == (
        "unknown_key"
    )


def test_open_any_refuses_coordinator_types_when_no_key_is_trusted() -> None:
    raw = seal_bytes(COORD, ANNOUNCEMENT)
    assert code(lambda: open_any(raw, trusted=None, max_size=10_000)) == "unknown_key"
    assert open_any(raw, trusted={COORD.public_key}, max_size=10_000)[1] == ANNOUNCEMENT


def test_a_single_trusted_key_given_as_a_string_is_not_a_substring_match() -> None:
    raw = seal_bytes(COORD, ANNOUNCEMENT)
    assert open_envelope(raw, EpochAnnouncement, trusted=COORD.public_key)[1] == ANNOUNCEMENT
    both = NODE.public_key + COORD.public_key
    assert code(lambda: open_envelope(raw, EpochAnnouncement, trusted=both)) == "unknown_key"


def test_trusted_keys_given_loaded_open_exactly_what_a_key_set_opens() -> None:
    # A mapping of trusted keys to their loaded VerifyKey (the coordinator's registered
    # set): the same message, and the same refusals, as with the plain set of keys.
    loaded = {k: VerifyKey.load(k) for k in (NODE.public_key, MALLORY.public_key)}
    plain = set(loaded)
    raw = seal_bytes(NODE, DECLARATION)
    assert open_envelope(raw, Declaration, trusted=loaded) == \
        open_envelope(raw, Declaration, trusted=plain) == (NODE.public_key, DECLARATION)
    env = Envelope.from_bytes(raw, max_size=4096)
    tampered = Envelope(type=env.type, signer=env.signer, payload=env.payload,
                        signature=bytes(64)).to_bytes()
    # Signed by MALLORY but naming NODE; and a key not trusted at all.
    forged = Envelope.seal(MALLORY, "declaration", env.payload).to_bytes()
    stranger = seal_bytes(HOST, Declaration(epoch=EPOCH, node_id=HOST.node_id, theta=1,
                                            nonce=NONCE))
    for bad, want in ((tampered, "bad_signature"), (forged, "wrong_signer"),
                      (stranger, "unknown_key")):
        assert code(lambda b=bad: open_envelope(b, Declaration, trusted=loaded)) == want
        assert code(lambda b=bad: open_envelope(b, Declaration, trusted=plain)) == want
    # A key that would not load (None) is checked the long way, with the same answer.
    assert open_envelope(raw, Declaration, trusted={NODE.public_key: None})[1] == DECLARATION
