"""Weak keys, more places (issue 11 item 1): X25519 session keys of small order in every
encoding, at the host's gate, in a receipt, in a complaint; the coordinator key a host
or a node's command line trusts."""

from __future__ import annotations

import itertools
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from helpers.node import counter_rng, ident

from node.cli import build_parser
from protocol import (
    AccessVerifier,
    Complaint,
    Credential,
    Envelope,
    GrantReceipt,
    make_access_request,
    seal,
)
from protocol.access import AccessBody
from protocol.errors import InkindError
from protocol.messages import check_session_key
from protocol.session import new_session_key, open_roamer_session, public_hex

COORD, NODE, HOST = ident(1), ident(2), ident(3)
EPOCH, NOW, EXPIRES = 7, 1_500, 2_000
P = 2**255 - 19

#: libsodium's X25519 blocklist (crypto_scalarmult/curve25519/ref10): the small-order
#: u-coordinates 0, 1, the two of order 8, p - 1, and the non-canonical p and p + 1.
_BASE = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
]


def _top_bit(h: str) -> str:
    raw = bytearray(bytes.fromhex(h))
    raw[31] |= 0x80  # RFC 7748 section 5: the receiver masks it, so the point is the same
    return raw.hex()


LOW_ORDER = [*_BASE, *(_top_bit(h) for h in _BASE)]


def code(fn: object) -> str:
    with pytest.raises(InkindError) as exc:
        fn()  # type: ignore[operator]
    return exc.value.code


def cred() -> Envelope:
    return seal(COORD, Credential(node_id=NODE.node_id, public_key=NODE.public_key,
                                  epoch=EPOCH, not_before=1_000, expires=EXPIRES, location=0))


def forged_request(session_key: str) -> AccessBody:
    """A request correctly signed by NODE whose session_key is ``session_key`` (built
    around the validating constructor, as an attacker would)."""
    honest = make_access_request(NODE, cred(), host_id=HOST.node_id, amount=1, now=NOW,
                                 rng=counter_rng(),
                                 session_key=public_hex(new_session_key()))
    good = honest.request
    payload = good.payload.replace(honest_key(good).encode(), session_key.encode())
    return AccessBody(request=Envelope.seal(NODE, good.type, payload),
                      credential=honest.credential)


def honest_key(env: Envelope) -> str:
    return str(json.loads(env.payload)["session_key"])


@pytest.mark.parametrize("key", LOW_ORDER)
def test_every_small_order_x25519_key_gives_the_all_zero_secret_and_is_refused(
        key: str) -> None:
    with pytest.raises(ValueError):  # OpenSSL's own check, independent of ours
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(
            bytes.fromhex(key)))
    assert code(lambda: check_session_key("session_key", key)) == "out_of_range"


def test_random_keys_pass() -> None:
    for _ in range(50):
        key = public_hex(new_session_key())
        assert check_session_key("session_key", key) == key


@pytest.mark.parametrize("key", LOW_ORDER)
def test_a_request_with_a_small_order_session_key_is_refused_before_anything_happens(
        key: str) -> None:
    v = AccessVerifier(host_id=HOST.node_id, coordinator_key=COORD.public_key)
    body = forged_request(key)
    assert code(lambda: v.check(body.to_bytes(), epoch=EPOCH, now=NOW)) == "out_of_range"
    assert len(v.sessions) == 0 and len(v.replays) == 0


@pytest.mark.parametrize("key", LOW_ORDER)
def test_a_complaint_about_a_request_no_host_could_grant_cannot_be_built(key: str) -> None:
    """Else a roamer could frame an honest host: its request gets a plain error (no
    session can be agreed), the relayed complaint too, and the host stays unanswered."""
    body = forged_request(key)
    assert code(lambda: Complaint(epoch=EPOCH, requester_id=NODE.node_id,
                                  host_id=HOST.node_id, request=body.request)) == "out_of_range"


@pytest.mark.parametrize("key", LOW_ORDER)
def test_the_roamer_refuses_a_receipt_or_host_key_of_small_order(key: str) -> None:
    own = new_session_key()
    body = make_access_request(NODE, cred(), host_id=HOST.node_id, amount=1, now=NOW,
                               rng=counter_rng(), session_key=public_hex(own))
    assert code(lambda: GrantReceipt(
        epoch=EPOCH, host_id=HOST.node_id, requester_id=NODE.node_id,
        nonce="00" * 15 + "01", amount=1, time=NOW, request=body.request,
        session_key=key)) == "out_of_range"
    assert code(lambda: open_roamer_session(own, request=body.request, host_id=HOST.node_id,
                                            host_session_key=key)) in ("bad_proof",
                                                                       "out_of_range")


WEAK_ED25519 = [
    "01" + "00" * 31,  # the identity
    "ec" + "ff" * 30 + "7f",  # order 2
    "00" * 32,  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "0100000000000000000000000000000000000000000000000000000000000080",  # -0 encoding
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
]


@pytest.mark.parametrize("key", WEAK_ED25519)
def test_a_host_never_trusts_a_weak_coordinator_key(key: str) -> None:
    assert code(lambda: AccessVerifier(host_id=HOST.node_id, coordinator_key=key)) == \
        "out_of_range"
    v = AccessVerifier(host_id=HOST.node_id, coordinator_key=COORD.public_key)
    assert code(lambda: setattr(v, "coordinator_key", key)) == "out_of_range"
    assert v.coordinator_key == COORD.public_key  # unchanged


@pytest.mark.parametrize("key", WEAK_ED25519)
def test_the_node_command_refuses_a_weak_coordinator_key(
        key: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--coordinator", "http://127.0.0.1:1",
                                   "--coordinator-key", key])
    assert exc.value.code == 2
    assert "prime-order" in capsys.readouterr().err


def test_the_vectors_are_distinct() -> None:
    assert len(set(LOW_ORDER)) == len(LOW_ORDER) == 14
    assert all(a != b for a, b in itertools.combinations(LOW_ORDER, 2))
