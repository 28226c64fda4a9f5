"""Weak Ed25519 keys are refused wherever a key enters (README section 2).

The curve arithmetic below is an independent affine implementation (not the one in
:mod:`protocol.identity`), so the tests do not grade the code with itself.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Credential, Identity, Registration, open_envelope, seal
from protocol.envelope import Envelope, signing_input
from protocol.errors import BadSignatureError, InkindError
from protocol.identity import (
    GROUP_ORDER,
    VerifyKey,
    check_strong_public_key,
    is_strong_public_key,
    verify_signature,
)

P = 2**255 - 19
D = (-121665 * pow(121666, P - 2, P)) % P
L = 2**252 + 27742317777372353535851937790883648493
BASE_Y = 4 * pow(5, P - 2, P) % P

# The 8 small-order points, canonically encoded ("Taming the many EdDSAs", Brendel et
# al. 2020, Table 6; also libsodium's blocklist), with their orders.
SMALL_ORDER_CANONICAL = {
    "0100000000000000000000000000000000000000000000000000000000000000": 1,
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f": 2,
    "0000000000000000000000000000000000000000000000000000000000000000": 4,
    "0000000000000000000000000000000000000000000000000000000000000080": 4,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05": 8,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85": 8,
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a": 8,
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa": 8,
}
# Their non-canonical encodings: y = p and y = p + 1 (y >= p), and x = 0 with the sign
# bit set ("negative zero") for the two points whose x is 0.
SMALL_ORDER_NON_CANONICAL = [
    "0100000000000000000000000000000000000000000000000000000000000080",  # O, -0
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # order 2, -0
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # O, y = p + 1
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 4, y = p
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
]
ALL_SMALL_ORDER = [*SMALL_ORDER_CANONICAL, *SMALL_ORDER_NON_CANONICAL]
#: The forged signature of issue 11: R = identity, S = 0 verifies under the identity key.
IDENTITY_FORGERY = bytes.fromhex("01" + "00" * 63)


# --- an independent affine Edwards implementation ---------------------------------------

Affine = tuple[int, int]


def _inv(x: int) -> int:
    return pow(x, P - 2, P)


def _add(p1: Affine, p2: Affine) -> Affine:
    (x1, y1), (x2, y2) = p1, p2
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + y1 * x2) * _inv(1 + t) % P, (y1 * y2 + x1 * x2) * _inv(1 - t) % P)


def _mul(k: int, pt: Affine) -> Affine:
    acc: Affine = (0, 1)
    while k:
        if k & 1:
            acc = _add(acc, pt)
        pt, k = _add(pt, pt), k >> 1
    return acc


def _x_of(y: int, sign: int) -> int:
    x2 = (y * y - 1) * _inv(D * y * y + 1) % P
    x = pow(x2, (P + 3) // 8, P)
    if x * x % P != x2:
        x = x * pow(2, (P - 1) // 4, P) % P
    assert x * x % P == x2
    return P - x if x and x & 1 != sign else x  # x = 0 has one encoding: +0


def _encode(pt: Affine) -> bytes:
    x, y = pt
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(raw: bytes) -> Affine:
    n = int.from_bytes(raw, "little")
    y = (n & ((1 << 255) - 1)) % P
    return (_x_of(y, n >> 255), y)


BASE: Affine = (_x_of(BASE_Y, 0), BASE_Y)


def _sign_as(seed: bytes, public: bytes, message: bytes) -> bytes:
    """An RFC 8032 signature by the secret scalar of ``seed``, claiming key ``public``."""
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    r = int.from_bytes(hashlib.sha512(h[32:] + message).digest(), "little") % L
    big_r = _encode(_mul(r, BASE))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % L
    return big_r + ((r + k * a) % L).to_bytes(32, "little")


# --- the vectors themselves -------------------------------------------------------------


def test_the_small_order_vectors_are_what_they_claim() -> None:
    for key, order in SMALL_ORDER_CANONICAL.items():
        pt = _decode(bytes.fromhex(key))
        assert _encode(pt).hex() == key
        assert _mul(order, pt) == (0, 1)
        assert order == 1 or _mul(order // 2, pt) != (0, 1)
    for key in SMALL_ORDER_NON_CANONICAL:
        pt = _decode(bytes.fromhex(key))
        assert _encode(pt).hex() in SMALL_ORDER_CANONICAL
        assert _encode(pt).hex() != key


def test_the_group_order_is_the_base_points() -> None:
    assert GROUP_ORDER == L
    assert _mul(L, BASE) == (0, 1)


@pytest.mark.parametrize("key", ALL_SMALL_ORDER)
def test_every_small_order_key_in_every_encoding_is_weak(key: str) -> None:
    assert not is_strong_public_key(key)
    assert not is_strong_public_key(bytes.fromhex(key))
    with pytest.raises(InkindError) as excinfo:
        check_strong_public_key("public_key", key)
    assert excinfo.value.code == "out_of_range"


def test_the_issue_11_forgery_verifies_in_openssl_but_not_here() -> None:
    identity = bytes.fromhex(next(iter(SMALL_ORDER_CANONICAL)))
    # The backend alone accepts it for any message: that is the attack.
    Ed25519PublicKey.from_public_bytes(identity).verify(IDENTITY_FORGERY, b"anything")
    for data in (b"", b"anything", signing_input("registration", b"{}")):
        assert not verify_signature(identity.hex(), IDENTITY_FORGERY, data)


@pytest.mark.parametrize("key", ALL_SMALL_ORDER)
def test_no_signature_verifies_under_a_small_order_key(key: str) -> None:
    # For a small-order A, R = -[k]A with S = 0 is the forgery; trying every small-order
    # R with S = 0 covers it whatever k is.
    for r in SMALL_ORDER_CANONICAL:
        assert not verify_signature(key, bytes.fromhex(r) + bytes(32), b"m")


def test_a_registration_under_the_identity_key_is_refused() -> None:
    key = next(iter(SMALL_ORDER_CANONICAL))
    payload = json.dumps(
        {"capacity": 1, "epoch": 0, "home_location": 0, "kind": "wlan_channels",
         "public_key": key}, separators=(",", ":"), sort_keys=True).encode()
    env = Envelope(type="registration", signer=key, payload=payload,
                   signature=IDENTITY_FORGERY)
    with pytest.raises(BadSignatureError):
        open_envelope(env.to_bytes(), Registration, trusted=None)
    with pytest.raises(InkindError) as excinfo:
        Registration(public_key=key, epoch=0, home_location=0, capacity=1,
                     kind="wlan_channels")
    assert excinfo.value.code == "out_of_range"


@pytest.mark.parametrize("key", ALL_SMALL_ORDER)
def test_credentials_and_announcements_refuse_weak_keys(key: str) -> None:
    nid = hashlib.sha256(bytes.fromhex(key)).hexdigest()
    with pytest.raises(InkindError) as excinfo:
        Credential(node_id=nid, public_key=key, epoch=0, not_before=0, expires=10,
                   location=0)
    assert excinfo.value.code == "out_of_range"


def _mixed(seed: bytes, torsion: str) -> bytes:
    """A strong key plus a torsion point: the key of ``seed`` with a torsion component."""
    strong = Identity.from_seed(seed).public_key
    return _encode(_add(_decode(bytes.fromhex(strong)), _decode(bytes.fromhex(torsion))))


@pytest.mark.parametrize("torsion", [k for k, o in SMALL_ORDER_CANONICAL.items() if o > 1])
def test_mixed_order_keys_are_weak_even_with_a_signature_openssl_accepts(torsion: str) -> None:
    seed = bytes(range(32))
    mixed = _mixed(seed, torsion)
    assert not is_strong_public_key(mixed)
    # With k = H(R || A' || M) a multiple of the torsion's order, a signature by the
    # strong key's scalar verifies under the mixed key in OpenSSL: find such a message.
    backend = Ed25519PublicKey.from_public_bytes(mixed)
    for i in range(200):
        message = b"m%d" % i
        sig = _sign_as(seed, mixed, message)
        try:
            backend.verify(sig, message)
        except Exception:
            continue
        assert not verify_signature(mixed.hex(), sig, message)
        break
    else:  # pragma: no cover - probability (7/8)^200
        pytest.fail("no message found whose signature the backend accepts")


def test_non_canonical_s_is_refused() -> None:
    ident = Identity.from_seed(bytes(range(32)))
    sig = ident.sign(b"m")
    s = int.from_bytes(sig[32:], "little")
    assert verify_signature(ident.public_key, sig, b"m")
    assert not verify_signature(ident.public_key, sig[:32] + (s + L).to_bytes(32, "little"),
                                b"m")


def test_bytes_that_name_no_point_are_weak() -> None:
    # y = 2 has no x on the curve (x^2 would be a non-square).
    assert not is_strong_public_key((2).to_bytes(32, "little"))
    assert not is_strong_public_key("zz" * 32)
    assert not is_strong_public_key(b"\x01" * 31)


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.sampled_from(list(SMALL_ORDER_CANONICAL)))
def test_generated_keys_are_strong_and_their_torsion_variants_are_not(
    seed: bytes, torsion: str
) -> None:
    ident = Identity.from_seed(seed)
    assert is_strong_public_key(ident.public_key)
    assert check_strong_public_key("k", ident.public_key) == ident.public_key
    variant = _mixed(seed, torsion)
    assert is_strong_public_key(variant) == (SMALL_ORDER_CANONICAL[torsion] == 1)
    message = b"x"
    env = seal(ident, Registration(public_key=ident.public_key, epoch=0, home_location=0,
                                   capacity=1, kind="files"))
    assert verify_signature(ident.public_key, ident.sign(message), message)
    assert open_envelope(env.to_bytes(), Registration, trusted=None)[0] == ident.public_key


@pytest.mark.parametrize("key", ALL_SMALL_ORDER[:3] + SMALL_ORDER_NON_CANONICAL[:2])
def test_the_directory_and_the_coordinator_key_refuse_weak_keys(key: str) -> None:
    from node.client import CoordinatorClient, parse_directory

    nid = hashlib.sha256(bytes.fromhex(key)).hexdigest()
    body = {"epoch": 0, "nodes": [{"node_id": nid, "public_key": key, "location": 0,
                                   "endpoint": "127.0.0.1:1", "kind": "files",
                                   "contribution": 1}]}
    with pytest.raises(InkindError) as excinfo:
        parse_directory(body)
    assert excinfo.value.code == "out_of_range"
    with pytest.raises(InkindError):
        CoordinatorClient(None, "http://x", coordinator_key=key)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ALL_SMALL_ORDER)
def test_a_weak_key_is_never_loaded_for_verification(key: str) -> None:
    assert VerifyKey.load(key) is None


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), data=st.binary(max_size=200),
       flip=st.integers(0, 63))
def test_a_loaded_key_verifies_exactly_what_verify_signature_does(
        seed: bytes, data: bytes, flip: int) -> None:
    who = Identity.from_seed(seed)
    key = VerifyKey.load(who.public_key)
    assert key is not None
    good = who.sign(data)
    bad = good[:flip] + bytes([good[flip] ^ 1]) + good[flip + 1:]
    s = int.from_bytes(good[32:], "little")
    malleated = good[:32] + (s + GROUP_ORDER).to_bytes(32, "little")  # S >= L, same point
    for signature in (good, bad, malleated, good[:63], b""):
        assert key.verify(signature, data) == verify_signature(who.public_key, signature, data)
    assert key.verify(good, data) and not key.verify(malleated, data)
