"""The access gate: every reason code, as tables, at the gate and at the host.

Single-step cases are data: a name, how to build the request (and the view), the clock,
and the expected reason. Multi-step scenarios are lists of steps against one host with the
expected reason per step. Every refusal is also run through :class:`node.host.Host` to
check that the host's capacity did not change and that only a verified requester gets a
signed refusal. Hypothesis checks the two invariants: grants never exceed capacity, and an
excluded (not included, or revoked) requester is never granted whatever else holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from helpers.node import NOW, World, ident
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.gate import GRANTED, authorize
from node.host import Host
from protocol import (
    MICRO,
    AccessBody,
    AccessRequest,
    Declaration,
    Envelope,
    GrantReceipt,
    Refusal,
    make_access_request,
    open_embedded,
    seal,
)
from protocol.session import RoamerSession, new_session_key, open_roamer_session, public_hex

Build = Callable[[World], bytes]


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    expected: str
    view: dict[str, Any] | None = None
    now: int = NOW
    verified: bool = False  # a signed refusal is due (the requester's proof verified)
    amount: int | None = None  # the amount granted, if not what was asked


def _tamper_signature(raw: bytes) -> bytes:
    body = AccessBody.from_bytes(raw)
    env = body.request
    bad = bytes([env.signature[0] ^ 1]) + env.signature[1:]
    return replace(body, request=replace(env, signature=bad)).to_bytes()


def _forged_credential(w: World) -> Envelope:
    # Claims the coordinator as signer, but the signature is by someone else.
    good = w.credential(w.alice)
    forged = w.credential(w.alice, signer=w.mallory)
    return replace(good, signature=forged.signature)


def _declaration(w: World) -> bytes:
    decl = Declaration(epoch=5, node_id=w.alice.node_id, theta=1, nonce="00" * 16)
    return seal(w.alice, decl).to_bytes()


CASES = [
    Case("granted", lambda w: w.request(w.alice), GRANTED, verified=True),
    Case("malformed body", lambda w: b"{not json", "malformed"),
    Case("too large body", lambda w: b" " * 200_000, "too_large"),
    Case("an envelope instead of an access body", _declaration, "unknown_field"),
    Case(
        "request signature tampered",
        lambda w: _tamper_signature(w.request(w.alice)),
        "bad_signature",
    ),
    Case(
        "addressed to another host",
        lambda w: w.request(w.alice, host_id=w.bob.node_id),
        "bad_proof",
    ),
    Case(
        "credential from an untrusted coordinator",
        lambda w: w.request(w.alice, credential=w.credential(w.alice, signer=w.mallory)),
        "unknown_key",
    ),
    Case(
        "credential signature forged",
        lambda w: w.request(w.alice, credential=_forged_credential(w)),
        "bad_signature",
    ),
    Case(
        "stale credential epoch",
        lambda w: w.request(w.alice, credential=w.credential(w.alice, epoch=4)),
        "stale_epoch",
    ),
    Case(
        "future credential epoch",
        lambda w: w.request(w.alice, credential=w.credential(w.alice, epoch=6)),
        "future_epoch",
    ),
    Case(
        "credential expired beyond the skew",
        lambda w: w.request(w.alice, credential=w.credential(w.alice, expires=NOW - 60)),
        "expired",
    ),
    Case(
        "credential expired within the skew",
        lambda w: w.request(w.alice, credential=w.credential(w.alice, expires=NOW - 59)),
        GRANTED,
        verified=True,
    ),
    Case(
        "credential not yet valid beyond the skew",
        lambda w: w.request(w.alice, credential=w.credential(w.alice, not_before=NOW + 61)),
        "not_yet_valid",
    ),
    Case(
        "credential not yet valid within the skew",
        lambda w: w.request(w.alice, credential=w.credential(w.alice, not_before=NOW + 60)),
        GRANTED,
        verified=True,
    ),
    Case(
        "smaller skew makes it expired",
        lambda w: w.request(w.alice, credential=w.credential(w.alice, expires=NOW - 5)),
        "expired",
        view={"max_skew": 0},
    ),
    Case(
        "someone else's credential (no proof of possession)",
        lambda w: w.request(w.alice, signer=w.mallory),
        "bad_proof",
    ),
    Case("issued before the skew window", lambda w: w.request(w.alice, now=NOW - 61),
         "expired"),
    Case("issued at the edge of the skew window", lambda w: w.request(w.alice, now=NOW - 60),
         GRANTED, verified=True),
    Case("issued in the future", lambda w: w.request(w.alice, now=NOW + 61), "not_yet_valid"),
    Case(
        "no coordinator key trusted",
        lambda w: w.request(w.alice),
        "unknown_key",
        view={"coordinator_key": None},
    ),
    Case("revoked", lambda w: w.request(w.carol), "revoked", verified=True),
    Case(
        "revoked wins over not included",
        lambda w: w.request(w.bob),
        "revoked",
        view={"revoked": frozenset({ident(4).node_id})},
        verified=True,
    ),
    Case("not included", lambda w: w.request(w.bob), "not_included", verified=True),
    Case(
        "more than is left: a partial grant of what is left",
        lambda w: w.request(w.alice, amount=3 * MICRO + 1),
        GRANTED,
        verified=True,
        amount=3 * MICRO,
    ),
    Case(
        "more than is left, no partial grants",
        lambda w: w.request(w.alice, amount=3 * MICRO + 1),
        "capacity_exhausted",
        view={"partial": False},
        verified=True,
    ),
    Case(
        "less than one whole channel left",
        lambda w: w.request(w.alice, amount=MICRO),
        "capacity_exhausted",
        view={"unit": MICRO, "remaining": MICRO - 1},
        verified=True,
    ),
    Case(
        "a file larger than the byte budget left",
        lambda w: w.request(w.alice, amount=11, resource="file:" + "a" * 64),
        "capacity_exhausted",
        view={"costs": {"file:" + "a" * 64: 11}, "remaining": 10},
        verified=True,
    ),
    Case(
        "a compute job larger than the capacity left runs partly",
        lambda w: w.request(w.alice, amount=2 * MICRO),
        GRANTED,
        view={"shares": {ident(3).node_id: 3 * MICRO}, "remaining": MICRO},
        verified=True,
        amount=MICRO,
    ),
    Case(
        "capacity exactly used up",
        lambda w: w.request(w.alice, amount=3 * MICRO),
        GRANTED,
        verified=True,
    ),
    Case(
        "nothing opened (free rider)",
        lambda w: w.request(w.alice, amount=1),
        "capacity_exhausted",
        view={"remaining": 0},
        verified=True,
    ),
    Case(
        "not a whole channel",
        lambda w: w.request(w.alice, amount=MICRO // 2),
        "out_of_range",
        view={"unit": MICRO},
        verified=True,
    ),
    Case(
        "file of another size",
        lambda w: w.request(w.alice, amount=10, resource="file:" + "a" * 64),
        "out_of_range",
        view={"costs": {"file:" + "a" * 64: 11}},
        verified=True,
    ),
    Case(
        "file at its size",
        lambda w: w.request(w.alice, amount=11, resource="file:" + "a" * 64),
        GRANTED,
        view={"costs": {"file:" + "a" * 64: 11}},
        verified=True,
    ),
    Case(
        "compute beyond the share bought",
        lambda w: w.request(w.alice, amount=2 * MICRO),
        "out_of_range",
        view={"shares": {ident(3).node_id: 3 * MICRO}, "share_used": {ident(3).node_id: 2 * MICRO}},
        verified=True,
    ),
    Case(
        "compute without a share",
        lambda w: w.request(w.alice, amount=1),
        "out_of_range",
        view={"shares": {}},
        verified=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gate_decides_each_case_with_its_reason(case: Case) -> None:
    w = World()
    raw = case.build(w)
    decision = authorize(raw, w.view(**(case.view or {})), now=case.now)
    assert decision.reason == case.expected, decision.message
    assert decision.granted == (case.expected == GRANTED)
    assert decision.verified == case.verified
    if decision.granted:
        assert decision.request is not None
        asked = decision.request.amount
        assert decision.amount == (asked if case.amount is None else case.amount)
    else:
        assert decision.amount == 0
        assert decision.error().code == case.expected


def _host(w: World, view: dict[str, Any] | None, capacity: int = 3 * MICRO) -> Host:
    """A host whose state matches ``w.view(**view)``."""
    view = view or {}
    kind = "wlan_channels" if view.get("unit") == MICRO else "wlan_coverage"
    if "shares" in view:
        kind = "compute"
    host = Host(
        w.host,
        kind=kind,
        location=0,
        coordinator_key=view.get("coordinator_key", w.coord.public_key),
        max_skew=view.get("max_skew", 60),
        partial_grants=view.get("partial", True),
    )
    host.open_epoch(
        epoch=w.epoch,
        included=w.included,
        opened=view.get("remaining", capacity),
        now=NOW,
        shares=view.get("shares"),
    )
    for who, used in view.get("share_used", {}).items():
        host.resource.opened += used
        host.resource.consume(used, now=NOW, requester=who)
    host.revoke(view.get("revoked", {w.carol.node_id}))
    host._costs = view.get("costs", {})
    return host


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_host_applies_each_decision_and_refusals_leave_capacity_unchanged(case: Case) -> None:
    w = World()
    host = _host(w, case.view)
    before = host.resource.remaining(NOW)
    outcome = host.access(case.build(w), now=case.now)
    assert outcome.decision.reason == case.expected
    after = host.resource.remaining(NOW)
    if case.expected == GRANTED:
        assert outcome.receipt is not None and outcome.refusal is None
        _, receipt = open_embedded(outcome.receipt, GrantReceipt, trusted=w.host.public_key)
        assert before - after == receipt.amount
        assert receipt.requester_id == outcome.decision.requester_id
        return
    assert after == before, "a refusal must not change the host's capacity"
    assert outcome.receipt is None
    if case.verified:
        assert outcome.refusal is not None
        _, refusal = open_embedded(outcome.refusal, Refusal, trusted=w.host.public_key)
        assert refusal.reason == case.expected
        assert refusal.epoch == w.epoch and refusal.time == case.now
    else:
        assert outcome.refusal is None, "never sign a refusal for an unverified requester"
    assert host.status(NOW)["refusals"] == {case.expected: 1}


# --- multi-step scenarios --------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    build: Callable[[World, list[bytes], int], bytes]  # world, requests sent so far, now
    expected: str
    now: int = NOW


def _fresh(
    amount: int = MICRO, who: str = "alice", resource: str | None = None
) -> Callable[[World, list[bytes], int], bytes]:
    return lambda w, sent, now: w.request(
        getattr(w, who), amount=amount, resource=resource, now=now
    )


def _again(index: int) -> Callable[[World, list[bytes], int], bytes]:
    return lambda w, sent, now: sent[index]


SCENARIOS: dict[str, tuple[str, int, list[Step]]] = {
    # name: (kind, opened, steps)
    "a replayed request is refused and uses no capacity": (
        "wlan_coverage",
        3 * MICRO,
        [Step(_fresh(), GRANTED), Step(_again(0), "replay"), Step(_fresh(), GRANTED)],
    ),
    "a partial grant, then nothing is left": (
        "wlan_coverage",
        3 * MICRO // 2,
        [Step(_fresh(), GRANTED), Step(_fresh(), GRANTED), Step(_fresh(1), "capacity_exhausted")],
    ),
    "coverage is used up and stays used up": (
        "wlan_coverage",
        2 * MICRO,
        [
            Step(_fresh(), GRANTED),
            Step(_fresh(), GRANTED),
            Step(_fresh(), "capacity_exhausted"),
            Step(_fresh(), "capacity_exhausted", now=NOW + 3000),
        ],
    ),
    "a channel is released when its session ends": (
        "wlan_channels",
        MICRO,
        [
            Step(_fresh(), GRANTED),
            Step(_fresh(), "capacity_exhausted", now=NOW + 59),
            Step(_fresh(), GRANTED, now=NOW + 60),
        ],
    ),
    "a refused stranger does not block an included roamer": (
        "wlan_coverage",
        MICRO,
        [Step(_fresh(who="bob"), "not_included"), Step(_fresh(), GRANTED)],
    ),
    "compute jobs add up to the share bought": (
        "compute",
        10 * MICRO,
        [
            Step(_fresh(MICRO, resource="compute"), GRANTED),
            Step(_fresh(2 * MICRO, resource="compute"), "out_of_range"),
            Step(_fresh(MICRO, resource="compute"), GRANTED),
            Step(_fresh(1, resource="compute"), "out_of_range"),
        ],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_steps_give_the_expected_reasons(name: str) -> None:
    kind, opened, steps = SCENARIOS[name]
    w = World()
    host = Host(
        w.host, kind=kind, location=0, coordinator_key=w.coord.public_key, session_seconds=60
    )
    shares = {w.alice.node_id: 2 * MICRO} if kind == "compute" else None
    host.open_epoch(epoch=w.epoch, included=w.included, opened=opened, now=NOW, shares=shares)
    sent: list[bytes] = []
    for i, step in enumerate(steps):
        raw = step.build(w, sent, step.now)
        sent.append(raw)
        before = host.resource.remaining(step.now)
        outcome = host.access(raw, now=step.now, resource="compute" if kind == "compute" else None)
        assert outcome.decision.reason == step.expected, f"step {i}: {outcome.decision.message}"
        if not outcome.granted:
            assert host.resource.remaining(step.now) == before


def test_a_request_that_fails_its_proof_leaves_no_trace() -> None:
    w = World()
    good = w.request(w.alice)
    assert authorize(_tamper_signature(good), w.view(), now=NOW).reason == "bad_signature"
    assert authorize(good, w.view(), now=NOW).granted  # its nonce was not recorded


def test_a_policy_refusal_records_the_request_so_its_replay_is_refused() -> None:
    w = World()
    raw = w.request(w.bob)
    assert authorize(raw, w.view(), now=NOW).reason == "not_included"
    assert authorize(raw, w.view(), now=NOW).reason == "replay"


def test_the_endpoint_resource_must_match_the_request() -> None:
    w = World()
    raw = w.request(w.alice, resource="file:" + "b" * 64)
    decision = authorize(raw, w.view(), now=NOW, resource="file:" + "c" * 64)
    assert decision.reason == "out_of_range" and decision.verified


def test_a_granted_decision_is_not_an_error() -> None:
    w = World()
    decision = authorize(w.request(w.alice), w.view(), now=NOW)
    with pytest.raises(ValueError):
        decision.error()


# --- invariants ------------------------------------------------------------------------

WHO = ("alice", "bob", "carol")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    opened=st.integers(0, 5 * MICRO),
    requests=st.lists(
        st.tuples(st.sampled_from(WHO), st.integers(1, 2 * MICRO), st.integers(0, 100)),
        max_size=12,
    ),
    kind=st.sampled_from(["wlan_coverage", "wlan_channels", "compute"]),
)
def test_grants_never_exceed_the_capacity_opened(
    opened: int, requests: list[tuple[str, int, int]], kind: str
) -> None:
    w = World()
    host = Host(
        w.host, kind=kind, location=0, coordinator_key=w.coord.public_key, session_seconds=50
    )
    shares = {w.alice.node_id: 3 * MICRO} if kind == "compute" else None
    host.open_epoch(epoch=w.epoch, included=w.included, opened=opened, now=NOW, shares=shares)
    host.revoke([w.carol.node_id])
    now = NOW
    held: list[tuple[int, int]] = []  # (end, amount) of granted sessions
    granted_total = 0
    for who, amount, dt in requests:
        now += dt
        if kind == "wlan_channels":
            amount = max(1, amount // MICRO) * MICRO
        outcome = host.access(
            w.request(
                getattr(w, who),
                amount=amount,
                now=now,
                resource="compute" if kind == "compute" else None,
            ),
            now=now,
            resource="compute" if kind == "compute" else None,
        )
        if outcome.granted:
            assert who == "alice"
            assert 0 < outcome.decision.amount <= amount
            granted_total += outcome.decision.amount
            held.append((now + 50, outcome.decision.amount))
        in_use = (
            sum(a for end, a in held if end > now) if kind == "wlan_channels" else granted_total
        )
        assert in_use <= host.resource.opened <= opened
        assert host.resource.remaining(now) == host.resource.opened - in_use
    if kind == "compute":
        assert granted_total <= 3 * MICRO


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    who=st.sampled_from(["bob", "carol"]),
    remaining=st.integers(0, 10**15),
    unit=st.sampled_from([1, MICRO]),
    amount=st.integers(1, 4 * MICRO),
    shares=st.none() | st.just("generous"),
    included_too=st.booleans(),
)
def test_an_excluded_requester_is_never_granted(
    who: str, remaining: int, unit: int, amount: int, shares: str | None, included_too: bool
) -> None:
    w = World()
    requester = getattr(w, who)
    included = w.included | {requester.node_id} if (included_too and who == "carol") else w.included
    share_map = {requester.node_id: 10**15} if shares else None
    view = w.view(remaining=remaining, unit=unit, shares=share_map, included=included)
    decision = authorize(w.request(requester, amount=amount), view, now=NOW)
    assert not decision.granted
    assert decision.reason in ("not_included", "revoked")


def test_the_request_class_is_the_protocols() -> None:
    # The gate accepts exactly protocol access requests; a sanity check on the fixture.
    w = World()
    env = AccessBody.from_bytes(w.request(w.alice)).request
    _, req = open_embedded(env, AccessRequest, trusted=None)
    assert req.host_id == w.host.node_id


# --- sessions (README section 7.1) -------------------------------------------------------


def _open_at(host: Host, w: World, *, amount: int = 3 * MICRO, who: str = "alice",
             resource: str | None = None) -> tuple[RoamerSession, GrantReceipt]:
    """``who`` opens a session at ``host`` with one signed request of ``amount``."""
    person = getattr(w, who)
    own = new_session_key()
    body = make_access_request(person, w.credential(person), host_id=w.host.node_id,
                               amount=amount, now=NOW, resource=resource, rng=w.rng,
                               session_key=public_hex(own))
    outcome = host.access(body.to_bytes(), now=NOW, resource=resource)
    assert outcome.granted and outcome.receipt is not None, outcome.decision.message
    _, receipt = open_embedded(outcome.receipt, GrantReceipt, trusted=w.host.public_key)
    assert receipt.session_key is not None
    return open_roamer_session(own, request=body.request, host_id=w.host.node_id,
                               host_session_key=receipt.session_key), receipt


def test_a_session_draws_on_the_signed_grant_and_adds_nothing_to_the_ledger() -> None:
    w = World()
    host = _host(w, None, capacity=5 * MICRO)
    session, receipt = _open_at(host, w, amount=3 * MICRO)
    assert receipt.amount == 3 * MICRO and host.resource.remaining(NOW) == 2 * MICRO
    ledger = host.unfiled(w.epoch)
    for _ in range(3):
        req = session.request(MICRO)
        outcome = host.access(req.to_bytes(), now=NOW + 1)
        assert outcome.decision.reason == GRANTED and outcome.session_answer is not None
        assert session.check_answer(outcome.session_answer.to_obj(), req) == MICRO
        assert outcome.receipt is None and outcome.refusal is None
    # Capacity was consumed once, by the signed request; the ledger holds only its receipt.
    assert host.resource.remaining(NOW) == 2 * MICRO
    assert host.unfiled(w.epoch) == ledger
    assert host.access(session.request(MICRO).to_bytes(), now=NOW).decision.reason == (
        "unknown_session")  # spent


def _over_balance(w: World, s: RoamerSession, host: Host) -> bytes:
    return s.request(4 * MICRO).to_bytes()


def _revoked_since(w: World, s: RoamerSession, host: Host) -> bytes:
    host.revoke([w.alice.node_id])
    return s.request(MICRO).to_bytes()


def _other_resource(w: World, s: RoamerSession, host: Host) -> bytes:
    return s.request(MICRO, resource="file:" + "b" * 64).to_bytes()  # endpoint: "c" * 64


def _bad_mac(w: World, s: RoamerSession, host: Host) -> bytes:
    req = s.request(MICRO)
    return replace(req, mac="00" * 32).to_bytes()


def _replayed(w: World, s: RoamerSession, host: Host) -> bytes:
    raw = s.request(MICRO).to_bytes()
    assert host.access(raw, now=NOW).granted
    return raw


def _other_host(w: World, s: RoamerSession, host: Host) -> bytes:
    s.host_id = w.bob.node_id
    return s.request(MICRO).to_bytes()


SESSION_REFUSALS: list[tuple[str, Callable[[World, RoamerSession, Host], bytes], str, int]] = [
    ("over the balance", _over_balance, "out_of_range", NOW),
    ("revoked since it opened", _revoked_since, "revoked", NOW),
    ("another resource than the endpoint's", _other_resource, "out_of_range", NOW),
    ("wrong MAC", _bad_mac, "bad_proof", NOW),
    ("replay", _replayed, "replay", NOW),
    ("wrong host", _other_host, "bad_proof", NOW),
    ("expired credential", lambda w, s, h: s.request(MICRO).to_bytes(), "expired",
     NOW + 3600 + 60),
    ("unknown session", lambda w, s, h: replace(s.request(MICRO), session="ef" * 16).to_bytes(),
     "unknown_session", NOW),
]


@pytest.mark.parametrize("build,expected,now", [r[1:] for r in SESSION_REFUSALS],
                         ids=[r[0] for r in SESSION_REFUSALS])
def test_a_refused_session_request_gets_a_plain_error_and_consumes_nothing(
    build: Callable[[World, RoamerSession, Host], bytes], expected: str, now: int
) -> None:
    w = World()
    host = _host(w, None, capacity=5 * MICRO)
    session, _ = _open_at(host, w, amount=3 * MICRO)
    raw = build(w, session, host)
    balance = host.verifier.sessions.balance(session.session_id)
    remaining = host.resource.remaining(NOW)
    ledger = host.unfiled(w.epoch)
    endpoint = "file:" + "c" * 64 if build is _other_resource else None
    outcome = host.access(raw, now=now, resource=endpoint)
    assert outcome.decision.reason == expected
    assert outcome.refusal is None and outcome.receipt is None
    assert outcome.session_answer is None
    assert host.verifier.sessions.balance(session.session_id) == balance
    assert host.resource.remaining(NOW) == remaining and host.unfiled(w.epoch) == ledger


def test_a_new_epoch_ends_every_session() -> None:
    w = World()
    host = _host(w, None)
    session, _ = _open_at(host, w, amount=2 * MICRO)
    host.open_epoch(epoch=w.epoch + 1, included=w.included, opened=3 * MICRO, now=NOW)
    assert len(host.verifier.sessions) == 0
    assert host.access(session.request(MICRO).to_bytes(), now=NOW).decision.reason == (
        "unknown_session")


def test_a_request_without_session_key_opens_no_session() -> None:
    w = World()
    host = _host(w, None)
    outcome = host.access(w.request(w.alice), now=NOW)
    assert outcome.receipt is not None and len(host.verifier.sessions) == 0
    _, receipt = open_embedded(outcome.receipt, GrantReceipt, trusted=w.host.public_key)
    assert receipt.session_key is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(opened=st.integers(MICRO, 5 * MICRO),
       asks=st.lists(st.integers(1, 2 * MICRO), max_size=15))
def test_session_grants_never_exceed_what_the_requester_signed_for(
    opened: int, asks: list[int]
) -> None:
    w = World()
    host = _host(w, None, capacity=opened)
    session, receipt = _open_at(host, w, amount=3 * MICRO)
    assert receipt.amount <= 3 * MICRO  # partial when less is open
    drawn = 0
    for ask in asks:
        outcome = host.access(session.request(ask).to_bytes(), now=NOW)
        if outcome.granted:
            drawn += outcome.decision.amount
    assert drawn <= receipt.amount
    assert host.resource.remaining(NOW) == max(0, host.resource.opened - receipt.amount)
