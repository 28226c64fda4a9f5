"""The one-round-trip access exchange (README section 7): builder, host check, answers."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest

from protocol import (
    AccessBody,
    AccessVerifier,
    Credential,
    Envelope,
    GrantReceipt,
    Identity,
    Refusal,
    check_probe_answer,
    check_receipt,
    check_refusal,
    credential_digest,
    make_access_request,
    make_probe_answer,
    seal,
)
from protocol import identity as ident_mod
from protocol.access import MAX_ACCESS_BODY_BYTES, grant_receipt
from protocol.errors import InkindError

COORD = Identity.from_seed(b"\x01" * 32)
NODE = Identity.from_seed(b"\x02" * 32)
HOST = Identity.from_seed(b"\x03" * 32)
MALLORY = Identity.from_seed(b"\x04" * 32)
EPOCH = 7
NOW = 1_500


def code(fn: Callable[[], object]) -> str:
    with pytest.raises(InkindError) as excinfo:
        fn()
    return excinfo.value.code


def counter() -> Callable[[int], bytes]:
    c = itertools.count(1)
    return lambda n: next(c).to_bytes(n, "big")


def cred(who: Identity = NODE, *, epoch: int = EPOCH, signer: Identity = COORD) -> Envelope:
    return seal(signer, Credential(node_id=who.node_id, public_key=who.public_key, epoch=epoch,
                                   not_before=1_000, expires=2_000, location=0))


def body(who: Identity = NODE, *, credential: Envelope | None = None,
         host_id: str = HOST.node_id, now: int = NOW, amount: int = 1,
         rng: Callable[[int], bytes] | None = None) -> AccessBody:
    return make_access_request(who, credential or cred(who), host_id=host_id, amount=amount,
                               now=now, rng=rng or counter())


def verifier(**kw: Any) -> AccessVerifier:
    return AccessVerifier(host_id=HOST.node_id, coordinator_key=COORD.public_key, **kw)


def test_a_valid_request_is_granted_once_in_one_round_trip() -> None:
    v = verifier()
    b = body()
    raw = b.to_bytes()
    assert len(raw) <= MAX_ACCESS_BODY_BYTES
    ok = v.check(raw, epoch=EPOCH, now=NOW + 5)
    assert ok.requester_id == NODE.node_id and ok.envelope == b.request
    assert ok.request.credential_digest == credential_digest(b.credential)
    assert code(lambda: v.check(raw, epoch=EPOCH, now=NOW + 6)) == "replay"
    assert AccessBody.from_bytes(raw) == b


def test_the_credential_is_verified_once_and_later_requests_cost_one_verification() -> None:
    v = verifier()
    c = cred()
    rng = counter()
    calls: list[str] = []

    original = ident_mod.Ed25519PublicKey.from_public_bytes

    class Counting:  # a loaded key that records each verification it makes
        def __init__(self, raw: bytes) -> None:
            self.raw, self.key = raw, original(raw)

        def verify(self, signature: bytes, data: bytes) -> None:
            calls.append(self.raw.hex())
            self.key.verify(signature, data)

    def counting(raw: bytes) -> Any:
        return Counting(raw)

    with mock.patch.object(ident_mod.Ed25519PublicKey, "from_public_bytes", counting):
        v.check(body(credential=c, rng=rng).to_bytes(), epoch=EPOCH, now=NOW)
        assert calls == [COORD.public_key, NODE.public_key]  # first: credential + request
        calls.clear()
        for _ in range(3):
            v.check(body(credential=c, rng=rng).to_bytes(), epoch=EPOCH, now=NOW)
        assert calls == [NODE.public_key] * 3  # later: the request's signature only
    assert len(v.credentials) == 1


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # signed by another key than the credential's: refused before any verification
        (lambda: AccessBody(request=body(MALLORY, credential=cred(MALLORY)).request,
                            credential=cred()), "bad_proof"),
        (lambda: body(host_id=MALLORY.node_id), "bad_proof"),  # for another host
        (lambda: body(credential=cred(signer=MALLORY)), "unknown_key"),  # not the coordinator
        (lambda: body(credential=cred(epoch=EPOCH - 1)), "stale_epoch"),
        (lambda: body(credential=cred(epoch=EPOCH + 1)), "future_epoch"),
        (lambda: body(now=NOW - 61), "expired"),  # issued before the skew window
        (lambda: body(now=NOW + 61), "not_yet_valid"),  # issued in the future
    ],
)
def test_refusals_of_the_host_check(make: Callable[[], AccessBody], expected: str) -> None:
    v = verifier()
    assert code(lambda: v.check(make().to_bytes(), epoch=EPOCH, now=NOW)) == expected
    assert len(v.replays) == 0  # a refused request leaves no trace


@pytest.mark.parametrize(
    ("make", "expected"),
    [(lambda: AccessBody(request=body(MALLORY, credential=cred(MALLORY)).request,
                         credential=cred()), "bad_proof"),
     (lambda: body(host_id=MALLORY.node_id), "bad_proof"),
     (lambda: body(now=NOW - 61), "expired"),
     (lambda: body(now=NOW + 61), "not_yet_valid"),
     (lambda: AccessBody(request=_tampered(body()), credential=cred()), "bad_signature"),
     (lambda: AccessBody(request=body(credential=cred(epoch=EPOCH)).request,
                         credential=_other_cred()), "bad_proof")],
)
def test_the_same_refusals_once_the_credential_is_known(
    make: Callable[[], AccessBody], expected: str
) -> None:
    """A known credential takes the one-match path (:meth:`AccessVerifier._fast_body`):
    every check of the request still runs, with the same codes, and leaves no trace."""
    v = verifier()
    b = make()
    warm = make_access_request(NODE, b.credential, host_id=HOST.node_id, amount=1, now=NOW,
                               rng=lambda n: b"\xff" * n)
    v.check(warm.to_bytes(), epoch=EPOCH, now=NOW)
    assert code(lambda: v.check(b.to_bytes(), epoch=EPOCH, now=NOW)) == expected
    assert len(v.replays) == 1


def test_a_known_credential_is_forgotten_with_the_coordinator_key() -> None:
    v = verifier()
    v.check(body().to_bytes(), epoch=EPOCH, now=NOW)
    v.coordinator_key = MALLORY.public_key
    again = body(now=NOW + 1, rng=lambda n: b"\x07" * n)
    assert code(lambda: v.check(again.to_bytes(), epoch=EPOCH, now=NOW)) == (
        "unknown_key")


def test_a_body_that_is_not_canonical_is_still_decided() -> None:
    v = verifier()
    v.check(body().to_bytes(), epoch=EPOCH, now=NOW)  # the credential is known
    other = body(now=NOW + 1, rng=lambda n: b"\x07" * n)
    spaced = json.dumps(json.loads(other.to_bytes()), indent=1).encode()
    assert v.check(spaced, epoch=EPOCH, now=NOW).requester_id == NODE.node_id


def _tampered(b: AccessBody) -> Envelope:
    return Envelope(type=b.request.type, signer=b.request.signer,
                    payload=b.request.payload.replace(b'"amount":1', b'"amount":9'),
                    signature=b.request.signature)


def _other_cred() -> Envelope:
    return seal(COORD, Credential(node_id=NODE.node_id, public_key=NODE.public_key,
                                  epoch=EPOCH, not_before=1_001, expires=2_000, location=0))


def test_a_request_naming_another_credential_is_a_bad_proof() -> None:
    # Alice's request for credential 1, presented with credential 2 of hers.
    c1, c2 = cred(), seal(COORD, Credential(node_id=NODE.node_id, public_key=NODE.public_key,
                                            epoch=EPOCH, not_before=1_001, expires=2_000,
                                            location=0))
    b = AccessBody(request=body(credential=c1).request, credential=c2)
    assert code(lambda: verifier().check(b.to_bytes(), epoch=EPOCH, now=NOW)) == "bad_proof"


def test_a_tampered_request_is_a_bad_signature() -> None:
    b = body()
    tampered = Envelope(type=b.request.type, signer=b.request.signer,
                        payload=b.request.payload.replace(b'"amount":1', b'"amount":9'),
                        signature=b.request.signature)
    raw = AccessBody(request=tampered, credential=b.credential).to_bytes()
    assert code(lambda: verifier().check(raw, epoch=EPOCH, now=NOW)) == "bad_signature"


def test_a_future_epoch_credential_leaves_no_trace_so_the_body_can_be_decided_again() -> None:
    v = verifier()
    raw = body(credential=cred(epoch=EPOCH + 1)).to_bytes()
    assert code(lambda: v.check(raw, epoch=EPOCH, now=NOW)) == "future_epoch"
    assert v.check(raw, epoch=EPOCH + 1, now=NOW).requester_id == NODE.node_id


def test_no_coordinator_key_trusted_refuses_and_a_new_key_forgets_credentials() -> None:
    v = AccessVerifier(host_id=HOST.node_id)
    assert code(lambda: v.check(body().to_bytes(), epoch=EPOCH, now=NOW)) == "unknown_key"
    v.coordinator_key = COORD.public_key
    v.check(body().to_bytes(), epoch=EPOCH, now=NOW)
    assert len(v.credentials) == 1
    v.coordinator_key = MALLORY.public_key
    assert len(v.credentials) == 0


@pytest.mark.parametrize(
    "raw",
    [b"", b"[]", b"{}", b'{"request":{},"credential":{}}', b"x" * (MAX_ACCESS_BODY_BYTES + 1),
     b'{"request":1,"credential":2,"more":3}'],
)
def test_malformed_bodies_are_refused_with_a_protocol_code(raw: bytes) -> None:
    assert code(lambda: verifier().check(raw, epoch=EPOCH, now=NOW)) in {
        "malformed", "too_large", "wrong_type", "missing_field", "unknown_field"}


def test_the_builder_refuses_a_credential_of_another_key() -> None:
    assert code(lambda: body(NODE, credential=cred(MALLORY))) == "wrong_signer"


def test_answers_are_checked_against_the_very_request() -> None:
    b1, b2 = body(), body(now=NOW + 1)
    r1 = GrantReceipt(epoch=EPOCH, host_id=HOST.node_id, requester_id=NODE.node_id,
                      nonce=_nonce(b1), amount=1, time=NOW, request=b1.request)
    check_receipt(r1, b1)
    assert code(lambda: check_receipt(r1, b2)) == "bad_proof"
    f1 = Refusal(epoch=EPOCH, host_id=HOST.node_id, requester_id=NODE.node_id,
                 nonce=_nonce(b1), reason="capacity_exhausted", time=NOW, request=b1.request,
                 amount=1)
    check_refusal(f1, b1)
    assert code(lambda: check_refusal(f1, b2)) == "bad_proof"


def _nonce(b: AccessBody) -> str:
    return str(json.loads(b.request.payload)["nonce"])


def test_probe_answers_are_bound_to_the_host_epoch_and_nonce() -> None:
    nonce = "ab" * 16
    raw = make_probe_answer(HOST, epoch=3, nonce=nonce).to_bytes()
    assert check_probe_answer(raw, host_key=HOST.public_key, epoch=3, nonce=nonce).epoch == 3
    assert code(lambda: check_probe_answer(raw, host_key=MALLORY.public_key, epoch=3,
                                           nonce=nonce)) == "unknown_key"
    assert code(lambda: check_probe_answer(raw, host_key=HOST.public_key, epoch=4,
                                           nonce=nonce)) == "bad_proof"
    assert code(lambda: check_probe_answer(raw, host_key=HOST.public_key, epoch=3,
                                           nonce="cd" * 16)) == "bad_proof"


@pytest.mark.parametrize("session", [False, True])
@pytest.mark.parametrize("amount", [1, 3, 5])
def test_the_receipt_of_a_verified_request_is_the_receipt_the_checked_constructor_builds(
        session: bool, amount: int) -> None:
    v = verifier()
    key = "12" * 32 if session else None
    b = make_access_request(NODE, cred(), host_id=HOST.node_id, amount=5, now=NOW,
                            rng=counter(), session_key=key)
    verified = v.check(b.to_bytes(), epoch=EPOCH, now=NOW)
    host_key = "34" * 32 if session else None
    fast = grant_receipt(verified, host_id=HOST.node_id, amount=amount, time=NOW + 1,
                         session_key=host_key)
    checked = GrantReceipt(epoch=EPOCH, host_id=HOST.node_id, requester_id=NODE.node_id,
                           nonce=verified.request.nonce, amount=amount, time=NOW + 1,
                           request=b.request, session_key=host_key)
    assert fast == checked
    assert fast.canonical_payload() == checked.canonical_payload()
    # What the grant adds is still checked: the amount, the time, a session key only
    # for a request that asked for one, and the host the request names.
    for bad in (0, 6):
        assert code(lambda a=bad: grant_receipt(verified, host_id=HOST.node_id,  # type: ignore[misc]
                                                amount=a, time=NOW)) == "out_of_range"
    assert code(lambda: grant_receipt(verified, host_id=HOST.node_id, amount=1,
                                      time=-1)) == "out_of_range"
    assert code(lambda: grant_receipt(verified, host_id=MALLORY.node_id, amount=1,
                                      time=NOW)) == "bad_proof"
    for bad_key in ("AB" * 32, "00" * 32, "01" + "00" * 31):  # not hex; small order
        assert code(lambda k=bad_key: grant_receipt(  # type: ignore[misc]
            verified, host_id=HOST.node_id, amount=1, time=NOW,
            session_key=k)) == "out_of_range"
    if not session:
        assert code(lambda: grant_receipt(verified, host_id=HOST.node_id, amount=1,
                                          time=NOW, session_key="34" * 32)) == "out_of_range"


def test_an_envelope_from_checked_fields_equals_the_checked_one_and_seal_checks_its_input() -> None:
    env = seal(NODE, Credential(node_id=NODE.node_id, public_key=NODE.public_key, epoch=1,
                                not_before=0, expires=10, location=0))
    again = Envelope.from_checked(type=env.type, signer=env.signer, payload=env.payload,
                                  signature=env.signature)
    assert again == Envelope(type=env.type, signer=env.signer, payload=env.payload,
                             signature=env.signature) == env
    assert again.to_bytes() == env.to_bytes()
    assert code(lambda: Envelope.seal(NODE, "Bad Type", b"{}")) == "out_of_range"
    assert code(lambda: Envelope.seal(NODE, "credential",
                                      bytearray(b"{}"))) == "wrong_type"  # type: ignore[arg-type]
