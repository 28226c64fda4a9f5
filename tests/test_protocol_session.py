"""Access sessions (README section 7.1): key agreement, MACed requests, the host's table.

Every refusal path of a session request is a table row with its wire code, and each is
checked to leave the host's table exactly as it was. Hypothesis checks the invariants: a
counter is accepted at most once and exactly when the sliding window allows it; the table
never exceeds its bounds whatever the order of openings; one requester never closes
another's session while that requester is under its own limit.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from helpers.node import counter_rng, ident
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    AccessRequest,
    AccessVerifier,
    Credential,
    Envelope,
    GrantReceipt,
    Identity,
    make_access_request,
    seal,
)
from protocol.access import parse_access
from protocol.encoding import canonical, decode
from protocol.envelope import signing_input
from protocol.errors import InkindError
from protocol.messages import check_session_key
from protocol.session import (
    REPLAY_WINDOW,
    RoamerSession,
    SessionKeys,
    SessionRequest,
    SessionTable,
    derive_keys,
    new_session_key,
    open_roamer_session,
    parse_canonical_session,
    public_hex,
)

COORD, NODE, HOST, OTHER_HOST = ident(1), ident(2), ident(3), ident(4)
EPOCH = 7
NOW = 1_500
EXPIRES = 2_000


def code(fn: Callable[[], object]) -> str:
    with pytest.raises(InkindError) as excinfo:
        fn()
    return excinfo.value.code


def cred(who: Identity = NODE) -> Envelope:
    return seal(COORD, Credential(node_id=who.node_id, public_key=who.public_key, epoch=EPOCH,
                                  not_before=1_000, expires=EXPIRES, location=0))


@dataclass
class Opened:
    verifier: AccessVerifier
    roamer: RoamerSession
    host_key: str


def open_session(amount: int = 10, verifier: AccessVerifier | None = None,
                 who: Identity = NODE, nonce: Callable[[int], bytes] | None = None) -> Opened:
    """A roamer's signed request with a session key, granted ``amount`` by the host."""
    v = verifier or AccessVerifier(host_id=HOST.node_id, coordinator_key=COORD.public_key)
    own = new_session_key()
    body = make_access_request(who, cred(who), host_id=HOST.node_id, amount=amount, now=NOW,
                               rng=nonce or counter_rng(), session_key=public_hex(own))
    verified = v.check(body.to_bytes(), epoch=EPOCH, now=NOW)
    host_key = v.open_session(verified, granted=amount)
    roamer = open_roamer_session(own, request=body.request, host_id=HOST.node_id,
                                 host_session_key=host_key)
    return Opened(verifier=v, roamer=roamer, host_key=host_key)


def test_both_sides_derive_the_same_keys_and_a_request_draws_on_the_balance() -> None:
    o = open_session(amount=10)
    table = o.verifier.sessions
    assert o.roamer.session_id in table and table.balance(o.roamer.session_id) == 10
    req = o.roamer.request(4)
    parsed = parse_access(req.to_bytes())
    assert parsed == req
    ok = o.verifier.check_session(req, epoch=EPOCH, now=NOW + 1)
    assert ok.requester_id == NODE.node_id and ok.balance == 10
    answer = table.grant(ok, 4)
    assert o.roamer.check_answer(answer.to_obj(), req) == 4
    assert table.balance(o.roamer.session_id) == 6
    # The spent session closes: its slot is free, later requests are unknown_session.
    last = o.roamer.request(6)
    table.grant(o.verifier.check_session(last, epoch=EPOCH, now=NOW), 6)
    assert o.roamer.session_id not in table
    assert code(lambda: o.verifier.check_session(o.roamer.request(1), epoch=EPOCH,
                                                 now=NOW)) == "unknown_session"


def test_the_receipt_may_carry_a_session_key_only_if_the_request_asked() -> None:
    plain = make_access_request(NODE, cred(), host_id=HOST.node_id, amount=1, now=NOW,
                                rng=counter_rng())
    with pytest.raises(InkindError) as exc:
        GrantReceipt(epoch=EPOCH, host_id=HOST.node_id, requester_id=NODE.node_id,
                     nonce="00" * 15 + "01", amount=1, time=NOW, request=plain.request,
                     session_key="11" * 32)
    assert exc.value.code == "out_of_range"


def test_a_low_order_session_key_gets_no_session() -> None:
    # Refused where the request is built (and parsed: tests/test_attacks_keys.py) ...
    assert code(lambda: make_access_request(
        NODE, cred(), host_id=HOST.node_id, amount=1, now=NOW, rng=counter_rng(),
        session_key="00" * 32)) == "out_of_range"  # the identity point
    # ... and, should one get that far, by the key derivation itself.
    body = make_access_request(NODE, cred(), host_id=HOST.node_id, amount=1, now=NOW,
                               rng=counter_rng(), session_key=public_hex(new_session_key()))
    assert code(lambda: derive_keys(new_session_key(), "00" * 32, roamer_key="00" * 32,
                                    host_key="11" * 32, request=body.request)) == "bad_proof"


def test_the_answer_mac_is_checked_by_the_roamer() -> None:
    o = open_session()
    req = o.roamer.request(2)
    answer = o.verifier.sessions.grant(
        o.verifier.check_session(req, epoch=EPOCH, now=NOW), 2).to_obj()
    assert code(lambda: o.roamer.check_answer({**answer, "amount": 1}, req)) == "bad_proof"
    assert code(lambda: o.roamer.check_answer({**answer, "mac": "00" * 32}, req)) == (
        "bad_proof")
    other = o.roamer.request(2)
    assert code(lambda: o.roamer.check_answer(answer, other)) == "bad_proof"


# --- every refusal path: its wire code, and no state change ----------------------------


def _mac_flipped(r: SessionRequest) -> SessionRequest:
    return replace(r, mac=("0" if r.mac[0] != "0" else "1") + r.mac[1:])


REFUSALS: list[tuple[str, Callable[[Opened, SessionRequest], SessionRequest], int, str]] = [
    ("wrong MAC", lambda o, r: _mac_flipped(r), NOW, "bad_proof"),
    ("amount changed under the MAC", lambda o, r: replace(r, amount=r.amount + 1), NOW,
     "bad_proof"),
    ("resource added under the MAC", lambda o, r: replace(r, resource="compute"), NOW,
     "bad_proof"),
    ("counter changed under the MAC", lambda o, r: replace(r, counter=r.counter + 5), NOW,
     "bad_proof"),
    ("replay of an accepted request", lambda o, r: r, NOW, "replay"),
    ("unknown session", lambda o, r: replace(r, session="ab" * 16), NOW, "unknown_session"),
    ("expired session", lambda o, r: o.roamer.request(1), EXPIRES + 60, "expired"),
    ("wrong host", lambda o, r: replace(r, host_id=OTHER_HOST.node_id), NOW, "bad_proof"),
]


@pytest.mark.parametrize("build,now,expected", [row[1:] for row in REFUSALS],
                         ids=[row[0] for row in REFUSALS])
def test_each_refused_session_request_has_its_code_and_changes_nothing(
    build: Callable[[Opened, SessionRequest], SessionRequest], now: int, expected: str
) -> None:
    o = open_session(amount=10)
    accepted = o.roamer.request(1)
    o.verifier.sessions.grant(o.verifier.check_session(accepted, epoch=EPOCH, now=NOW), 1)
    bad = build(o, accepted)
    before = copy.deepcopy(o.verifier.sessions._sessions)
    assert code(lambda: o.verifier.check_session(bad, epoch=EPOCH, now=now)) == expected
    assert o.verifier.sessions._sessions == before
    # The refused request consumed nothing: the next honest one is accepted.
    nxt = o.roamer.request(1)
    assert o.verifier.check_session(nxt, epoch=EPOCH, now=NOW).balance == 9


def test_sessions_end_with_the_epoch() -> None:
    o = open_session()
    req = o.roamer.request(1)
    assert code(lambda: o.verifier.check_session(req, epoch=EPOCH + 1, now=NOW)) == (
        "unknown_session")
    o.verifier.end_epoch(EPOCH + 1)
    assert len(o.verifier.sessions) == 0
    assert code(lambda: o.verifier.check_session(req, epoch=EPOCH, now=NOW)) == (
        "unknown_session")


def test_malformed_session_requests_are_refused_with_their_codes() -> None:
    o = open_session()
    good = o.roamer.request(1).to_bytes()
    assert code(lambda: parse_access(good.replace(b'"counter":1', b'"counter":"1"'))) == (
        "wrong_type")
    assert code(lambda: parse_access(good.replace(b'"counter":1', b'"counter":0'))) == (
        "out_of_range")
    assert code(lambda: parse_access(good[:-1] + b',"x":1}')) == "unknown_field"
    assert code(lambda: parse_access(good.replace(b'"amount":1,', b""))) == "missing_field"
    padded = good[:-1] + b',"resource":"' + b"a" * 500 + b'"}'
    assert code(lambda: parse_access(padded)) == "too_large"


# --- invariants ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200), max_size=120))
def test_a_counter_is_accepted_once_and_exactly_when_the_window_allows(
    counters: list[int],
) -> None:
    keys = SessionKeys(session_id="cd" * 16, request_key=b"k" * 32, answer_key=b"a" * 32)
    table = SessionTable(host_id=HOST.node_id)
    table.open(keys, requester_id=NODE.node_id, epoch=EPOCH, expires=EXPIRES, balance=10**9)
    roamer = RoamerSession(keys, host_id=HOST.node_id)
    seen: set[int] = set()
    top = 0
    for c in counters:
        roamer.counter = c - 1
        req = roamer.request(1)
        fresh = c not in seen and c > top - REPLAY_WINDOW
        try:
            table.check(req, epoch=EPOCH, now=NOW)
            ok = True
        except InkindError as exc:
            assert exc.code == "replay"
            ok = False
        assert ok == fresh, (c, top)
        if ok:
            seen.add(c)
            top = max(top, c)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), max_size=60),
       st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=3))
def test_the_table_stays_within_its_bounds_and_a_flooder_evicts_only_its_own(
    openers: list[int], capacity: int, per_requester: int
) -> None:
    table = SessionTable(host_id=HOST.node_id, capacity=capacity, per_requester=per_requester)
    ids = itertools.count()
    honest = SessionKeys(session_id=f"{0:032x}", request_key=b"h" * 32, answer_key=b"h" * 32)
    table.open(honest, requester_id="honest", epoch=EPOCH, expires=EXPIRES, balance=1)
    for who in openers:
        n = next(ids) + 1
        keys = SessionKeys(session_id=f"{n:032x}", request_key=b"k" * 32,
                           answer_key=b"a" * 32)
        table.open(keys, requester_id=f"r{who}", epoch=EPOCH, expires=EXPIRES, balance=1)
        assert len(table) <= capacity
        assert all(table.sessions_of(f"r{i}") <= per_requester for i in range(6))
        if capacity > 6 * per_requester:  # room for everyone's limit: nobody else evicts
            assert honest.session_id in table


def test_hkdf_output_matches_the_spec_construction() -> None:
    """The derivation is HKDF-SHA256 (RFC 5869) exactly as README section 7.1 states."""
    roamer = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    host = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    body = make_access_request(NODE, cred(), host_id=HOST.node_id, amount=1, now=NOW,
                               rng=counter_rng(), session_key=public_hex(roamer))
    a = derive_keys(host, public_hex(roamer), roamer_key=public_hex(roamer),
                    host_key=public_hex(host), request=body.request)
    b = derive_keys(roamer, public_hex(host), roamer_key=public_hex(roamer),
                    host_key=public_hex(host), request=body.request)
    assert a == b
    shared = roamer.exchange(host.public_key())
    env = body.request
    salt = hashlib.sha256(bytes.fromhex(env.signer) + env.signature
                          + signing_input(env.type, env.payload)).digest()
    prk = hmac.digest(salt, shared, "sha256")
    info = b"inkind/v1\x00session\x00" + roamer.public_key().public_bytes_raw() + (
        host.public_key().public_bytes_raw())
    okm, t = b"", b""
    for i in range(1, 4):
        t = hmac.digest(prk, t + info + bytes([i]), "sha256")
        okm += t
    assert a.request_key == okm[:32] and a.answer_key == okm[32:64]
    assert a.session_id == okm[64:80].hex()


_resources = st.none() | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                                  min_size=1, max_size=128)


@settings(max_examples=200, deadline=None)
@given(counter=st.integers(1, 2**53 - 1), amount=st.integers(1, 10**15), resource=_resources,
       mac=st.binary(min_size=32, max_size=32), sid=st.binary(min_size=16, max_size=16))
def test_the_canonical_fast_path_parses_exactly_what_the_strict_parser_does(
    counter: int, amount: int, resource: str | None, mac: bytes, sid: bytes
) -> None:
    req = SessionRequest(session=sid.hex(), host_id=HOST.node_id, counter=counter,
                         amount=amount, resource=resource, mac=mac.hex())
    raw = req.to_bytes()
    assert raw == canonical(json.loads(raw))  # what it writes is canonical JSON
    strict = SessionRequest.from_obj(decode(raw, max_depth=1))
    assert strict == req == parse_access(raw)
    fast = parse_canonical_session(raw)
    if resource is None or not {'"', "\\"} & set(resource):
        assert fast == strict
    else:  # JSON escapes these two: the strict parser decides
        assert fast is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_bytes_the_fast_path_accepts_the_strict_parser_accepts_alike(data: st.DataObject) -> None:
    req = SessionRequest(session="ab" * 16, host_id=HOST.node_id, counter=7, amount=9,
                         resource=data.draw(_resources), mac="cd" * 32)
    raw = bytearray(req.to_bytes())
    for _ in range(data.draw(st.integers(1, 3))):  # mutate a few bytes
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        strict: SessionRequest | str = SessionRequest.from_obj(decode(bytes(raw), max_depth=1))
    except InkindError as exc:
        strict = exc.code
    try:
        fast: SessionRequest | str | None = parse_canonical_session(bytes(raw))
    except InkindError as exc:
        fast = exc.code
    assert fast is None or fast == strict


def test_the_session_answer_is_canonical_json() -> None:
    o = open_session()
    req = o.roamer.request(3)
    answer = o.verifier.sessions.grant(o.verifier.check_session(req, epoch=EPOCH, now=NOW), 3)
    assert answer.to_bytes() == canonical(answer.to_obj())


def _of_large_order(key: bytes) -> bool:
    """Keys of small order are refused by both paths (tests/test_attacks_keys.py)."""
    try:
        check_session_key("session_key", key.hex())
    except InkindError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(amount=st.integers(1, 10**15), epoch=st.integers(0, 2**53 - 1),
       issued=st.integers(0, 2**53 - 1), resource=_resources,
       session_key=st.none() | st.binary(min_size=32, max_size=32).filter(_of_large_order),
       nonce=st.binary(min_size=16, max_size=16))
def test_an_access_request_payload_parses_alike_by_the_fast_and_the_strict_path(
    amount: int, epoch: int, issued: int, resource: str | None, session_key: bytes | None,
    nonce: bytes,
) -> None:
    req = AccessRequest(credential_digest="ab" * 32, host_id=HOST.node_id, epoch=epoch,
                        issued=issued, nonce=nonce.hex(), amount=amount, resource=resource,
                        session_key=None if session_key is None else session_key.hex())
    payload = canonical(req.to_payload(), max_depth=1)
    strict = AccessRequest.from_payload(decode(payload, max_depth=1))
    assert AccessRequest.parse_payload(payload) == strict == req
    # Not canonical (a space): the strict parser refuses it, and so does parse_payload.
    assert code(lambda: AccessRequest.parse_payload(b" " + payload)) == "malformed"


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=300), kind=st.from_regex(r"[a-z][a-z0-9_]{0,31}",
                                                          fullmatch=True))
def test_an_envelope_writes_its_canonical_json(payload: bytes, kind: str) -> None:
    env = Envelope(type=kind, signer=HOST.public_key, payload=payload, signature=b"s" * 64)
    assert env.to_bytes() == canonical(env.to_obj())


@settings(max_examples=100, deadline=None)
@given(amount=st.integers(1, 10), epoch=st.integers(0, 2**53 - 1),
       time=st.integers(0, 2**53 - 1), with_key=st.booleans(), resource=_resources)
def test_a_receipt_writes_its_canonical_payload(
    amount: int, epoch: int, time: int, with_key: bool, resource: str | None
) -> None:
    roamer_key = "12" * 32 if with_key else None
    req = AccessRequest(credential_digest="ab" * 32, host_id=HOST.node_id, epoch=epoch,
                        issued=5, nonce="cd" * 16, amount=10, resource=resource,
                        session_key=roamer_key)
    env = seal(NODE, req)
    receipt = GrantReceipt(epoch=epoch, host_id=HOST.node_id, requester_id=NODE.node_id,
                           nonce="cd" * 16, amount=amount, time=time, request=env,
                           session_key="34" * 32 if with_key else None)
    assert receipt.canonical_payload() == canonical(receipt.to_payload(), max_depth=2)


@pytest.mark.parametrize("field,value", [("amount", 0), ("amount", 10**15 + 1),
                                         ("epoch", 2**53), ("issued", 2**53),
                                         ("amount", 10**16 - 1)])
def test_an_out_of_range_integer_in_a_canonical_request_payload_is_refused_alike(
        field: str, value: int) -> None:
    # The grammar admits up to 16 digits; the ranges are checked after the match.
    fields: dict[str, object] = {"amount": 1, "credential_digest": "ab" * 32, "epoch": 1,
                                 "host_id": HOST.node_id, "issued": 1, "nonce": "cd" * 16}
    fields[field] = value
    # Written by hand: the encoder refuses integers past 2**53 - 1 itself.
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    strict = code(lambda: AccessRequest.from_payload(decode(payload, max_depth=1)))
    assert strict == "out_of_range"
    assert code(lambda: AccessRequest.parse_payload(payload)) == strict
