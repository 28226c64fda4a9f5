"""The message catalogue: construction rules, payload round trips and refusal codes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.access import credential_digest
from protocol.encoding import canonical, decode_canonical, decode_object
from protocol.envelope import Envelope
from protocol.errors import InkindError
from protocol.fields import MAX_EPOCH, MAX_TIME
from protocol.identity import Identity
from protocol.messages import (
    MAX_AUDIT_ITEMS,
    MAX_CREDENTIAL_LIFETIME,
    MAX_INCLUDED,
    MAX_LOCATIONS,
    MAX_QUANTITY_MICRO,
    MAX_WELFARE_MICRO,
    MESSAGE_TYPES,
    REFUSAL_REASONS,
    THETA_MAX_MICRO,
    AccessRequest,
    Allocation,
    AuditReport,
    Commitment,
    Complaint,
    Credential,
    Declaration,
    DutyRequest,
    EpochAnnouncement,
    GrantReceipt,
    Message,
    ProbeAnswer,
    Refusal,
    Registration,
    ShoppingList,
    message_from_payload,
)
from protocol.verify import open_envelope, seal, seal_bytes

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=60)
COORD = Identity.from_seed(b"\x01" * 32)
NODE = Identity.from_seed(b"\x02" * 32)
HOST = Identity.from_seed(b"\x03" * 32)
OTHER = Identity.from_seed(b"\x04" * 32)
NONCE = "0123456789abcdef0123456789abcdef"

CREDENTIAL = Credential(
    node_id=NODE.node_id,
    public_key=NODE.public_key,
    epoch=7,
    not_before=1_000,
    expires=2_000,
    location=3,
)
CREDENTIAL_ENV = Envelope.seal(COORD, "credential", canonical(CREDENTIAL.to_payload()))
ACCESS = AccessRequest(
    credential_digest=credential_digest(CREDENTIAL_ENV),
    host_id=HOST.node_id,
    epoch=7,
    issued=1_500,
    nonce=NONCE,
    amount=1_000_000,
    resource="sha256:abcd",
)
ACCESS_ENV = seal(NODE, ACCESS)
RECEIPT = GrantReceipt(
    epoch=7,
    host_id=HOST.node_id,
    requester_id=NODE.node_id,
    nonce=NONCE,
    amount=1_000_000,
    time=1_500,
    request=ACCESS_ENV,
)
REFUSAL = Refusal(
    epoch=7,
    host_id=HOST.node_id,
    requester_id=NODE.node_id,
    nonce=NONCE,
    reason="capacity_exhausted",
    time=1_500,
    request=ACCESS_ENV,
    amount=1_000_000,
)

SAMPLES: dict[str, Message] = {
    "registration": Registration(
        public_key=NODE.public_key,
        epoch=7,
        home_location=3,
        capacity=2_500_000,
        kind="wlan_channels",
        endpoint="node-1.example:8443",
    ),
    "epoch_announcement": EpochAnnouncement(
        epoch=7,
        mechanism="posted_fee",
        payment="in_kind",
        deadline=1_000,
        fees=(100_000, 250_000),
        q=(900_000, 0),
        coordinator_key=COORD.public_key,
    ),
    "declaration": Declaration(epoch=7, node_id=NODE.node_id, theta=420_000, nonce=NONCE),
    "allocation": Allocation(
        epoch=7,
        mechanism="optimal",
        q=(500_000, 1_000_000),
        included=tuple(sorted([NODE.node_id, HOST.node_id])),
        contributions=(1, 2),
        expected_welfare=-12_345,
    ),
    "credential": CREDENTIAL,
    "commitment": Commitment(epoch=7, node_id=NODE.node_id, contribution=1_000_000),
    "access_request": ACCESS,
    "grant_receipt": RECEIPT,
    "refusal": REFUSAL,
    "audit_report": AuditReport(
        epoch=7,
        reporter_id=NODE.node_id,
        evidence=(
            Envelope.seal(HOST, "grant_receipt", canonical(RECEIPT.to_payload())),
            Envelope.seal(HOST, "refusal", canonical(REFUSAL.to_payload())),
        ),
    ),
    "probe_answer": ProbeAnswer(epoch=7, host_id=HOST.node_id, nonce=NONCE),
    "complaint": Complaint(epoch=7, requester_id=NODE.node_id, host_id=HOST.node_id,
                           request=ACCESS_ENV),
    "duty_request": DutyRequest(epoch=7, node_id=NODE.node_id, issued=1_700_000_000),
    "shopping_list": ShoppingList(epoch=7, shopper_id=NODE.node_id, hosts=(HOST.node_id,)),
}


def payload_of(message_type: str, **changes: Any) -> dict[str, Any]:
    """A sample's payload with fields replaced (``...`` deletes a field)."""
    payload: dict[str, Any] = dict(SAMPLES[message_type].to_payload())
    for key, value in changes.items():
        if value is ...:
            del payload[key]
        else:
            payload[key] = value
    return payload


def refusal_code(message_type: str, **changes: Any) -> str:
    with pytest.raises(InkindError) as excinfo:
        MESSAGE_TYPES[message_type].from_payload(payload_of(message_type, **changes))
    return excinfo.value.code


def test_every_registered_type_has_a_sample_and_a_matching_type_string() -> None:
    assert set(SAMPLES) == set(MESSAGE_TYPES)
    for name, cls in MESSAGE_TYPES.items():
        assert name == cls.TYPE
        assert type(SAMPLES[name]) is cls
        assert cls.SIGNER in {"node", "coordinator", "credential_holder"}


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_payload_round_trip_through_canonical_bytes(message_type: str) -> None:
    msg = SAMPLES[message_type]
    data = canonical(msg.to_payload(), max_depth=msg.MAX_DEPTH)
    back = message_from_payload(message_type, decode_canonical(data, max_depth=msg.MAX_DEPTH))
    assert back == msg
    assert hash(back) == hash(msg)


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_messages_are_frozen_slotted_and_keyword_only(message_type: str) -> None:
    msg = SAMPLES[message_type]
    field = dataclasses.fields(msg)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(msg, field, None)
    assert not hasattr(msg, "__dict__")
    values = [getattr(msg, f.name) for f in dataclasses.fields(msg)]
    with pytest.raises(TypeError):
        type(msg)(*values)


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_unknown_field_is_refused(message_type: str) -> None:
    assert refusal_code(message_type, surprise=1) == "unknown_field"


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_every_required_field_is_required(message_type: str) -> None:
    for spec in dataclasses.fields(MESSAGE_TYPES[message_type]):
        if spec.default is dataclasses.MISSING:
            assert refusal_code(message_type, **{spec.name: ...}) == "missing_field", spec.name


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_payload_that_is_not_an_object_is_wrong_type(message_type: str) -> None:
    with pytest.raises(InkindError) as excinfo:
        MESSAGE_TYPES[message_type].from_payload([])
    assert excinfo.value.code == "wrong_type"


def test_optional_fields_are_omitted_when_absent_and_null_is_refused() -> None:
    sample = SAMPLES["registration"]
    assert isinstance(sample, Registration)
    reg = dataclasses.replace(sample, endpoint=None)
    assert "endpoint" not in reg.to_payload()
    assert Registration.from_payload(reg.to_payload()) == reg
    assert refusal_code("registration", endpoint=None) == "wrong_type"


def test_unknown_message_type_is_refused() -> None:
    with pytest.raises(InkindError) as excinfo:
        message_from_payload("teleport", {})
    assert excinfo.value.code == "unexpected_message"


# One row per kind of bad input: (message type, field, bad value, expected code).
BAD_FIELDS = [
    # booleans are not integers, floats and strings are not either
    ("declaration", "theta", True, "wrong_type"),
    ("declaration", "theta", 0.5, "wrong_type"),
    ("declaration", "theta", "1", "wrong_type"),
    ("declaration", "epoch", False, "wrong_type"),
    ("declaration", "theta", 1_000_001, "out_of_range"),
    ("declaration", "theta", -1, "out_of_range"),
    ("declaration", "epoch", -1, "out_of_range"),
    ("declaration", "node_id", NODE.node_id.upper(), "out_of_range"),
    ("declaration", "node_id", NODE.node_id[:-1], "out_of_range"),
    ("declaration", "node_id", 5, "wrong_type"),
    ("declaration", "nonce", "xyz", "out_of_range"),
    ("declaration", "nonce", NONCE + "00", "out_of_range"),
    ("registration", "home_location", MAX_LOCATIONS, "out_of_range"),
    ("registration", "capacity", MAX_QUANTITY_MICRO + 1, "out_of_range"),
    ("registration", "kind", "bandwidth", "out_of_range"),
    ("registration", "kind", 1, "wrong_type"),
    ("registration", "public_key", "00" * 31, "out_of_range"),
    ("registration", "endpoint", "no-port", "out_of_range"),
    ("registration", "endpoint", ["h:1"], "wrong_type"),
    ("epoch_announcement", "mechanism", "vcg", "out_of_range"),
    ("epoch_announcement", "payment", "barter", "out_of_range"),
    ("epoch_announcement", "fees", (1, 2), "wrong_type"),  # a tuple is not JSON
    ("epoch_announcement", "fees", [1, True], "wrong_type"),
    ("epoch_announcement", "fees", [1, -2], "out_of_range"),
    ("epoch_announcement", "fees", [1], "out_of_range"),  # not one per location of q
    ("epoch_announcement", "fees", 1, "wrong_type"),
    ("epoch_announcement", "fees", [0] * (MAX_LOCATIONS + 1), "too_large"),
    ("epoch_announcement", "deadline", -5, "out_of_range"),
    ("allocation", "expected_welfare", 2**53, "out_of_range"),
    ("allocation", "included", [NODE.node_id, NODE.node_id], "out_of_range"),
    ("allocation", "included", sorted([NODE.node_id, HOST.node_id], reverse=True), "out_of_range"),
    ("allocation", "contributions", [1], "out_of_range"),
    ("allocation", "contributions", [1, -1], "out_of_range"),
    ("allocation", "q", [0] * (MAX_LOCATIONS + 1), "too_large"),
    ("credential", "node_id", OTHER.node_id, "out_of_range"),
    ("credential", "expires", 1_000, "out_of_range"),
    ("credential", "expires", 1_000 + MAX_CREDENTIAL_LIFETIME + 1, "out_of_range"),
    ("credential", "location", -1, "out_of_range"),
    ("commitment", "contribution", -1, "out_of_range"),
    ("access_request", "amount", 0, "out_of_range"),
    ("access_request", "resource", "", "out_of_range"),
    ("access_request", "resource", "caf\u00e9", "out_of_range"),
    ("access_request", "resource", "x" * 129, "out_of_range"),
    ("access_request", "credential_digest", "ab" * 31, "out_of_range"),
    ("access_request", "nonce", NONCE[:-2], "out_of_range"),
    ("access_request", "issued", -1, "out_of_range"),
    ("grant_receipt", "time", 1.5, "wrong_type"),
    ("grant_receipt", "request", "opaque", "wrong_type"),
    ("grant_receipt", "request", {"type": "access_request"}, "missing_field"),
    ("grant_receipt", "amount", 1_000_001, "out_of_range"),  # more than was asked
    ("grant_receipt", "nonce", "ff" * 16, "out_of_range"),  # not the request's nonce
    ("grant_receipt", "requester_id", OTHER.node_id, "out_of_range"),  # not its signer
    ("grant_receipt", "host_id", OTHER.node_id, "out_of_range"),  # not its addressee
    ("grant_receipt", "epoch", 8, "out_of_range"),
    ("refusal", "amount", 2, "out_of_range"),  # not what was asked
    ("refusal", "nonce", "ff" * 16, "out_of_range"),
    ("probe_answer", "nonce", "00", "out_of_range"),
    ("refusal", "reason", "because", "out_of_range"),
    ("refusal", "reason", "refused", "out_of_range"),
    ("audit_report", "evidence", "all", "wrong_type"),
    ("audit_report", "evidence", [1], "wrong_type"),
]


@pytest.mark.parametrize(("message_type", "field", "value", "code"), BAD_FIELDS)
def test_bad_field_is_refused_with_its_code(
    message_type: str, field: str, value: object, code: str
) -> None:
    assert refusal_code(message_type, **{field: value}) == code


@pytest.mark.parametrize(
    "endpoint", ["example.org:8080", "10.0.0.1:1", "[::1]:65535", "a:1", "node-7.lan:443"]
)
def test_valid_endpoints(endpoint: str) -> None:
    Registration.from_payload(payload_of("registration", endpoint=endpoint))


@pytest.mark.parametrize(
    "endpoint",
    [
        "host",
        ":80",
        "host:",
        "host:0",
        "host:65536",
        "host:080",
        "ho st:80",
        "-host:80",
        "host:+80",
        "host:٨٠",
        "[::1:80",
        "h:1" + "0" * 300,
        "x" * 250 + ".org:80",
    ],
)
def test_invalid_endpoints(endpoint: str) -> None:
    assert refusal_code("registration", endpoint=endpoint) == "out_of_range"


def test_posted_fee_announcement_needs_fees() -> None:
    assert refusal_code("epoch_announcement", fees=[], q=[]) == "out_of_range"
    optimal = payload_of("epoch_announcement", mechanism="optimal", fees=[], q=[])
    assert EpochAnnouncement.from_payload(optimal).fees == ()


def test_allocation_bounds_the_included_set_before_checking_each_id() -> None:
    ids = [f"{i:064x}" for i in range(MAX_INCLUDED + 1)]
    assert refusal_code("allocation", included=ids, contributions=[0] * len(ids)) == "too_large"


def test_allocation_contribution_lookup() -> None:
    alloc = SAMPLES["allocation"]
    assert isinstance(alloc, Allocation)
    for node, owed in zip(alloc.included, alloc.contributions, strict=True):
        assert alloc.contribution_of(node) == owed
    assert alloc.contribution_of(OTHER.node_id) is None


def test_answers_must_embed_an_access_request() -> None:
    wrong = Envelope.seal(COORD, "allocation", b"{}")
    assert refusal_code("grant_receipt", request=wrong.to_obj()) == "unexpected_message"
    assert refusal_code("refusal", request=wrong.to_obj()) == "unexpected_message"


def test_audit_report_evidence_is_bounded_and_typed() -> None:
    receipt = SAMPLES["audit_report"].to_payload()["evidence"][0]  # type: ignore[index]
    too_many = [receipt] * (MAX_AUDIT_ITEMS + 1)
    assert refusal_code("audit_report", evidence=too_many) == "too_large"
    decl = Envelope.seal(NODE, "declaration", b"{}").to_obj()
    assert refusal_code("audit_report", evidence=[decl]) == "unexpected_message"


def test_registration_node_id_is_derived_from_its_key() -> None:
    reg = SAMPLES["registration"]
    assert isinstance(reg, Registration)
    assert reg.node_id == NODE.node_id == reg.signer_node_id()


# Values of every JSON type, plus the ones the canonical form never produces.
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@FAST
@given(st.sampled_from(sorted(MESSAGE_TYPES)), st.data())
def test_from_payload_raises_only_project_errors(message_type: str, data: st.DataObject) -> None:
    names = [f.name for f in dataclasses.fields(MESSAGE_TYPES[message_type])]
    payload: dict[str, Any] = dict(SAMPLES[message_type].to_payload())
    for name in data.draw(st.lists(st.sampled_from([*names, "other"]), max_size=3)):
        payload[name] = data.draw(anything)
    with contextlib.suppress(InkindError):
        MESSAGE_TYPES[message_type].from_payload(payload)


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_every_message_type_survives_seal_and_open(message_type: str) -> None:
    msg = SAMPLES[message_type]
    cls = MESSAGE_TYPES[message_type]
    if cls.SIGNER == "coordinator":
        ident = COORD
    elif isinstance(msg, GrantReceipt | Refusal | ProbeAnswer):
        ident = HOST
    else:
        ident = NODE
    signer, back = open_envelope(seal_bytes(ident, msg), cls, trusted={ident.public_key})
    assert (signer, back) == (ident.public_key, msg)


def test_the_largest_audit_report_fits_its_payload_limit() -> None:
    longest_reason = max(REFUSAL_REASONS, key=len)
    request = seal(NODE, AccessRequest(
        credential_digest="ab" * 32, host_id=HOST.node_id, epoch=MAX_EPOCH, issued=MAX_TIME,
        nonce=NONCE, amount=MAX_QUANTITY_MICRO, resource="r" * 128))
    item = Refusal(
        epoch=MAX_EPOCH,
        host_id=HOST.node_id,
        requester_id=NODE.node_id,
        nonce=NONCE,
        reason=longest_reason,
        time=MAX_TIME,
        request=request,
        amount=MAX_QUANTITY_MICRO,
    )
    env = seal(HOST, item)
    report = AuditReport(
        epoch=MAX_EPOCH, reporter_id=NODE.node_id, evidence=(env,) * MAX_AUDIT_ITEMS
    )
    seal(NODE, report)  # raises too_large if the limits disagree


def test_the_largest_allocation_fits_its_payload_limit() -> None:
    ids = tuple(f"{i:064x}" for i in range(MAX_INCLUDED))
    alloc = Allocation(
        epoch=MAX_EPOCH,
        mechanism="posted_fee",
        q=(MAX_QUANTITY_MICRO,) * MAX_LOCATIONS,
        included=ids,
        contributions=(MAX_QUANTITY_MICRO,) * MAX_INCLUDED,
        expected_welfare=-MAX_WELFARE_MICRO,
    )
    raw = seal_bytes(COORD, alloc)
    assert open_envelope(raw, Allocation, trusted={COORD.public_key})[1] == alloc


def _declaration_of(payload: bytes) -> Declaration | str:
    """``Declaration.parse_payload``: the message, or its error's code."""
    try:
        return Declaration.parse_payload(payload)
    except InkindError as exc:
        return exc.code


def _strict_declaration(payload: bytes) -> Declaration | str:
    try:
        return Declaration.from_payload(decode_object(payload, max_bytes=64 * 1024))
    except InkindError as exc:
        return exc.code


@settings(derandomize=True, database=None, deadline=None, max_examples=200)
@given(epoch=st.integers(0, MAX_EPOCH), theta=st.integers(0, THETA_MAX_MICRO),
       nonce=st.binary(min_size=16, max_size=16))
def test_a_canonical_declaration_parses_as_the_strict_parser_parses_it(
        epoch: int, theta: int, nonce: bytes) -> None:
    decl = Declaration(epoch=epoch, node_id=NODE.node_id, theta=theta, nonce=nonce.hex())
    payload = canonical(decl.to_payload())
    assert _declaration_of(payload) == _strict_declaration(payload) == decl
    assert _declaration_of(b" " + payload) == "malformed"  # not canonical


@pytest.mark.parametrize("field,value", [("theta", THETA_MAX_MICRO + 1), ("epoch", 2**53),
                                         ("theta", 10**16 - 1), ("epoch", 10**16 - 1)])
def test_an_out_of_range_integer_in_a_canonical_declaration_is_refused_alike(
        field: str, value: int) -> None:
    # The grammar admits up to 16 digits; the ranges are checked after the match.
    fields: dict[str, object] = {"epoch": 1, "node_id": NODE.node_id, "nonce": "ab" * 16,
                                 "theta": 5}
    fields[field] = value
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert _declaration_of(payload) == _strict_declaration(payload) == "out_of_range"


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(st.data())
def test_a_mutated_declaration_is_judged_as_the_strict_parser_judges_it(
        data: st.DataObject) -> None:
    decl = Declaration(epoch=3, node_id=NODE.node_id, theta=250_000, nonce="cd" * 16)
    raw = bytearray(canonical(decl.to_payload()))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.sampled_from(b'"{}:,0123456789aAfgz -\\\x00\xff'))
    assert _declaration_of(bytes(raw)) == _strict_declaration(bytes(raw))
