"""The audit never excludes a host on evidence it could rebut (issue 11, item 2).

A roamer that drains a host and reports only the host's later ``capacity_exhausted``
refusal cannot frame it: the host files its own ledger of receipts, each embedding the
roamer's signed request. Both sides may report selectively; each case below is one way.
"""

from __future__ import annotations

from collections.abc import Sequence

from helpers.coordinator import (
    EPOCH_SECONDS,
    T0,
    audit_report,
    commitment,
    declaration,
    new_core,
    node,
    raw,
    receipt,
    refusal,
    registration,
    runner,
)

from coordinator.enforcement import UNJUSTIFIED_REFUSAL, find_free_riders
from coordinator.epoch import EpochCore
from node.host import Host
from protocol import (
    MAX_CLOCK_SKEW,
    Allocation,
    Envelope,
    GrantReceipt,
    Refusal,
    make_access_request,
    open_embedded,
    seal,
)

HOST, ROAMER, OTHER, OUTSIDER = node(0), node(1), node(2), node(3)
OWED = 2_000_000
WINDOW = (T0, T0 + 1000)
ALLOC = Allocation(epoch=0, mechanism="posted_fee", q=(1,),
                   included=tuple(sorted([HOST.node_id, ROAMER.node_id, OTHER.node_id])),
                   contributions=tuple(OWED if n == HOST.node_id else 0 for n in sorted(
                       [HOST.node_id, ROAMER.node_id, OTHER.node_id])),
                   expected_welfare=0)
WINDOWS = {n: WINDOW for n in (HOST.node_id, ROAMER.node_id, OTHER.node_id)}


def item(env: Envelope) -> GrantReceipt | Refusal:
    if env.type == "grant_receipt":
        return open_embedded(env, GrantReceipt, trusted=None)[1]
    return open_embedded(env, Refusal, trusted=None)[1]


def excluded(evidence: Sequence[Envelope]) -> bool:
    found = find_free_riders(allocation=ALLOC, commitments={HOST.node_id: OWED},
                             evidence=[item(e) for e in evidence], credential_windows=WINDOWS)
    assert all(x.reason == UNJUSTIFIED_REFUSAL for x in found)
    return any(x.node_id == HOST.node_id for x in found)


# The drain: one big request granted in full, then a refusal for lack of capacity.
DRAIN = receipt(HOST, ROAMER, amount=OWED, time=T0 + 5, n=1, asked=5 * OWED)
REFUSED = refusal(HOST, ROAMER, reason="capacity_exhausted", time=T0 + 10, n=2, amount=1)


def test_a_roamer_hiding_its_receipt_frames_nobody_once_the_host_files_its_ledger() -> None:
    assert excluded([REFUSED])  # the roamer's selective report alone ...
    assert not excluded([REFUSED, DRAIN])  # ... is rebutted by the host's own ledger


def test_receipts_the_host_could_fabricate_never_excuse_it() -> None:
    for fake in (
        receipt(HOST, HOST, amount=OWED, time=T0 + 5, n=3),  # to itself
        receipt(HOST, OUTSIDER, amount=OWED, time=T0 + 5, n=3),  # to a non-member
        receipt(HOST, ROAMER, amount=OWED, time=T0 - MAX_CLOCK_SKEW - 5, n=3),  # before
        receipt(HOST, ROAMER, amount=OWED, time=T0 + 1000 + MAX_CLOCK_SKEW, n=3),  # after
        # granted long after the roamer asked (a stale request the gate would refuse),
        # or back-dated before it was asked
        receipt(HOST, ROAMER, amount=OWED, time=T0 + 9, n=3, issued=T0 + 9 - 61),
        receipt(HOST, ROAMER, amount=OWED, time=T0 + 5, n=3, issued=T0 + 5 + 61),
    ):
        assert excluded([REFUSED, fake])


def test_a_grant_counts_toward_a_refusal_only_if_it_came_before() -> None:
    later = receipt(HOST, ROAMER, amount=OWED, time=T0 + 11, n=1)
    assert excluded([REFUSED, later])


def test_a_refusal_dated_late_cannot_borrow_later_grants() -> None:
    # Refused at T0 + 10 (the roamer's request says so) but dated T0 + 500; the host
    # fills its capacity at T0 + 400 and hopes the audit counts that.
    late = refusal(HOST, ROAMER, reason="capacity_exhausted", time=T0 + 500, n=2, amount=1,
                   issued=T0 + 10)
    filled = receipt(HOST, OTHER, amount=OWED, time=T0 + 400, n=5)
    assert excluded([late, filled])
    on_time = refusal(HOST, ROAMER, reason="capacity_exhausted", time=T0 + 450, n=2,
                      amount=1, issued=T0 + 450)
    assert not excluded([on_time, filled])


def test_an_equivocating_host_gets_no_credit_for_the_request_it_also_refused() -> None:
    # The host refused request 2 for capacity and also files a receipt for it.
    req_refused = item(REFUSED).request
    claimed = seal(HOST, GrantReceipt(epoch=0, host_id=HOST.node_id,
                                      requester_id=ROAMER.node_id, nonce=item(REFUSED).nonce,
                                      amount=1, time=T0 + 10, request=req_refused))
    assert excluded([REFUSED, claimed, receipt(HOST, OTHER, amount=OWED - 1, time=T0 + 1,
                                               n=7)])


def test_a_roamer_reusing_a_nonce_cannot_void_a_grant() -> None:
    # The roamer's second request reuses the granted nonce (another issued time: another
    # request); its refusal must not cancel the first, granted, request.
    reuse = refusal(HOST, ROAMER, reason="capacity_exhausted", time=T0 + 10, n=1, amount=1,
                    issued=T0 + 10)
    assert not excluded([reuse, DRAIN])


def test_a_slow_host_clock_keeps_its_receipts() -> None:
    # One clock policy: a receipt dated within the skew before the window still counts.
    early = receipt(HOST, ROAMER, amount=OWED, time=T0 - 30, n=1, issued=T0 - 30)
    assert not excluded([REFUSED, early])


# --- the whole path: the host's gate, its ledger, its own report, the coordinator's core


def test_end_to_end_the_ledger_a_host_files_rebuts_a_drain_and_hide() -> None:
    core: EpochCore = new_core()
    people = [HOST, ROAMER, OTHER, OUTSIDER]
    for p in people:
        r = registration(p)
        core.apply(core.check_registration(r, raw(p, r), now=T0))  # type: ignore[arg-type]
    fees, q = runner().announcement_terms()
    core.apply(core.plan_open(T0, fees=fees, q=q))
    for p in people:
        d = declaration(p, theta=950_000)
        core.apply(core.check_declaration(d, raw(p, d), T0 + 1))
    closed = core.close(T0 + EPOCH_SECONDS, runner().run)
    alloc = closed.allocation
    assert ROAMER.node_id in alloc.included
    owed = alloc.contribution_of(HOST.node_id) or 0
    assert owed > 0
    for p in people:
        c = commitment(p, amount=alloc.contribution_of(p.node_id) or 0)
        core.apply(core.check_commitment(c, raw(p, c)))
    cred = next(c for c in closed.credentials if c.credential.node_id == ROAMER.node_id)
    cred_env = Envelope.from_bytes(cred.envelope, max_size=1 << 16)
    now = cred.credential.not_before + 1
    host = Host(HOST, kind="wlan_coverage", location=0,
                coordinator_key=core.identity.public_key)
    host.open_epoch(epoch=0, included=alloc.included, opened=owed, now=now, owed=owed)
    big = make_access_request(ROAMER, cred_env, host_id=HOST.node_id, amount=10 * owed,
                              now=now)
    assert host.access(big.to_bytes(), now=now).granted  # all there is
    again = make_access_request(ROAMER, cred_env, host_id=HOST.node_id, amount=1,
                                now=now + 1)
    outcome = host.access(again.to_bytes(), now=now + 1)
    assert outcome.refusal is not None and outcome.decision.reason == "capacity_exhausted"
    # The roamer reports only the refusal ...
    core.apply(core.check_audit(ROAMER.node_id, audit_report(ROAMER, [outcome.refusal])))
    assert core.audit is not None
    refusal_only = list(core.audit.evidence.values())
    # ... and the host files its ledger.
    ledger = host.ledger(0)
    assert len(ledger) == 1
    core.apply(core.check_audit(HOST.node_id, audit_report(HOST, ledger)))

    def judged(evidence: list[GrantReceipt | Refusal]) -> set[str]:
        assert core.audit is not None
        return {x.node_id for x in find_free_riders(
            allocation=alloc, commitments=core.audit.commitments, evidence=evidence,
            credential_windows=core.audit.windows)}

    assert HOST.node_id in judged(refusal_only)  # what the framing relied on
    assert HOST.node_id not in judged(list(core.audit.evidence.values()))
