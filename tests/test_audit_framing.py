"""The audit never excludes a host on evidence it could rebut (issue 11, item 2).

A roamer that drains a host and reports only the host's later ``capacity_exhausted``
refusal cannot frame it: the host files its own ledger of receipts, each embedding the
roamer's signed request. Both sides may report selectively; each case below is one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from helpers.clock import NOW, FakeClock
from helpers.coordinator import (
    T0,
    audit_report,
    close_epoch_zero,
    new_core,
    node,
    receipt,
    refusal,
)
from helpers.node import BedNode, node_bed, step_all
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.enforcement import UNJUSTIFIED_REFUSAL, find_free_riders
from coordinator.epoch import EpochCore
from node import host as host_module
from node.host import AccessOutcome, Host
from protocol import (
    MAX_CLOCK_SKEW,
    MICRO,
    AccessBody,
    AccessRequest,
    Allocation,
    Complaint,
    Credential,
    Envelope,
    GrantReceipt,
    Identity,
    Refusal,
    make_access_request,
    open_embedded,
    open_envelope,
    seal,
)
from protocol.access import credential_digest
from protocol.messages import MAX_AUDIT_ITEMS

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
        # back-dated before it was asked
        receipt(HOST, ROAMER, amount=OWED, time=T0 + 5, n=3, issued=T0 + 5 + 61),
        # granted (a relayed request, asked long ago) only after the refusal
        receipt(HOST, ROAMER, amount=OWED, time=T0 + 11, n=3, issued=T0 + 11 - 61),
    ):
        assert excluded([REFUSED, fake])


def test_a_relayed_request_granted_long_after_it_was_asked_counts_when_granted() -> None:
    # A request relayed from a complaint is decided whatever its age (Host.resolve): its
    # receipt is dated when the host granted it, more than the skew after it was asked.
    relayed = receipt(HOST, ROAMER, amount=OWED, time=T0 + 9, n=3, issued=T0 - 55)
    assert not excluded([REFUSED, relayed])


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


@dataclass
class Closed:
    """Epoch 0 closed on a real core with HOST owing ``owed``; the roamers' credentials."""

    core: EpochCore
    alloc: Allocation
    owed: int
    creds: dict[str, Envelope]
    now: int

    def host(self, *, shares: bool = True, **kw: Any) -> Host:
        """The host's gate; ``shares=False``: it holds no roamer to a share (it is told
        it owes nothing), for the cases about its ledger alone -- the audit, which
        judges by what the allocation says it owes, is then only more lenient."""
        host = Host(HOST, kind="wlan_coverage", location=0,
                    coordinator_key=self.core.identity.public_key, **kw)
        host.open_epoch(epoch=0, included=self.alloc.included, opened=self.owed,
                        now=self.now, owed=self.owed if shares else 0)
        return host

    def ask(self, host: Host, who: Identity, amount: int, at: int) -> AccessOutcome:
        req = make_access_request(who, self.creds[who.node_id], host_id=HOST.node_id,
                                  amount=amount, now=at)
        return host.access(req.to_bytes(), now=at)

    def file(self, who: Identity, evidence: Sequence[Envelope]) -> None:
        for start in range(0, len(evidence), MAX_AUDIT_ITEMS):
            chunk = evidence[start:start + MAX_AUDIT_ITEMS]
            self.core.apply(self.core.check_audit(who.node_id, audit_report(who, chunk)))

    def judged(self, evidence: Sequence[GrantReceipt | Refusal] | None = None) -> set[str]:
        audit = self.core.audit
        assert audit is not None
        return {x.node_id for x in find_free_riders(
            allocation=self.alloc, commitments=audit.commitments,
            evidence=list(audit.evidence.values()) if evidence is None else evidence,
            credential_windows=audit.windows, complained=audit.complained())}


def closed_epoch() -> Closed:
    core: EpochCore = new_core()
    closed, creds = close_epoch_zero(core, [HOST, ROAMER, OTHER, OUTSIDER])
    alloc = closed.allocation
    assert {ROAMER.node_id, OTHER.node_id} <= set(alloc.included)
    owed = alloc.contribution_of(HOST.node_id) or 0
    assert owed > 0
    start = max(c.credential.not_before for c in closed.credentials) + 1
    return Closed(core=core, alloc=alloc, owed=owed, creds=creds, now=start)


def test_end_to_end_the_ledger_a_host_files_rebuts_a_drain_and_hide() -> None:
    bed = closed_epoch()
    host = bed.host()
    assert bed.ask(host, ROAMER, 10 * bed.owed, bed.now).granted  # all there is
    outcome = bed.ask(host, ROAMER, 1, bed.now + 1)
    assert outcome.refusal is not None and outcome.decision.reason == "capacity_exhausted"
    # The roamer reports only the refusal ...
    bed.file(ROAMER, [outcome.refusal])
    assert HOST.node_id in bed.judged()  # what the framing relied on
    # ... and the host files its ledger.
    ledger = host.unfiled(0)
    assert len(ledger) == 1
    bed.file(HOST, ledger)
    assert HOST.node_id not in bed.judged()


def _stale_request() -> tuple[Closed, Host, AccessBody, int]:
    """A closed epoch, the host, the roamer's request for all the host owes, signed and
    never sent, and a moment more than the skew later, inside the credential window."""
    bed = closed_epoch()
    stale = make_access_request(ROAMER, bed.creds[ROAMER.node_id], host_id=HOST.node_id,
                                amount=bed.owed, now=bed.now)
    return bed, bed.host(), stale, bed.now + MAX_CLOCK_SKEW + 1


def test_a_roamer_cannot_frame_a_host_with_its_own_stale_request_relayed() -> None:
    # The roamer signs a request for its whole share and never sends it; more than the
    # skew later it complains that it went unanswered, so the coordinator relays it and
    # the host grants it then (Host.resolve decides a relayed request whatever its age).
    # Its next request is refused for its share: the relayed grant must count, or the
    # host that served the roamer its share is excluded for refusing it more.
    bed, host, stale, late = _stale_request()
    assert host.resolve(stale.to_bytes(), now=late).granted
    outcome = bed.ask(host, ROAMER, 1, late + 1)
    assert outcome.refusal is not None and outcome.decision.reason == "capacity_exhausted"
    bed.file(ROAMER, [outcome.refusal])
    bed.file(HOST, host.unfiled(0))
    assert HOST.node_id not in bed.judged()


def _complain(bed: Closed, request: Envelope, at: int) -> None:
    data = seal(ROAMER, Complaint(epoch=0, requester_id=ROAMER.node_id,
                                  host_id=HOST.node_id, request=request)).to_bytes()
    change = bed.core.check_complaint(
        open_envelope(data, Complaint, trusted=bed.core.keys)[1], data, now=at,
        credential_digest=credential_digest(bed.creds[ROAMER.node_id]))
    assert change is not None
    bed.core.apply(change)


def test_a_roamer_cannot_frame_a_host_with_the_refusal_of_its_stale_request_relayed() -> None:
    # The roamer signs a request and never sends it; more than the skew later it takes
    # its whole share with another request, then complains that the first went
    # unanswered. Relayed, it is refused for the share the roamer has just taken -- a
    # refusal given (as a relay's answer must be) long after the request was issued, so
    # the grants before it count up to the refusal's own time, not the request's.
    bed, host, stale, later = _stale_request()
    assert bed.ask(host, ROAMER, bed.owed, later).granted
    _complain(bed, stale.request, later + 1)
    answer = host.resolve(stale.to_bytes(), now=later + 2)
    assert answer.refusal is not None and answer.decision.reason == "capacity_exhausted"
    bed.core.apply(bed.core.check_audit(HOST.node_id, audit_report(HOST, [answer.refusal]),
                                        now=later + 1, at=later + 2))
    bed.file(HOST, host.unfiled(0))
    assert HOST.node_id not in bed.judged()


def test_a_refusal_answering_a_complaint_cannot_be_post_dated_to_borrow_later_grants() -> None:
    # A host answering a relayed request dates its refusal past the coordinator's clock
    # (so that grants it makes later would justify it): not held.
    bed = closed_epoch()
    stale = make_access_request(ROAMER, bed.creds[ROAMER.node_id], host_id=HOST.node_id,
                                amount=1, now=bed.now)
    _complain(bed, stale.request, bed.now + 5)
    req = open_envelope(stale.request.to_bytes(), AccessRequest,
                        trusted={ROAMER.public_key})[1]
    for late, held in ((MAX_CLOCK_SKEW, True), (MAX_CLOCK_SKEW + 1, False)):
        refused = seal(HOST, Refusal(epoch=0, host_id=HOST.node_id,
                                     requester_id=ROAMER.node_id, nonce=req.nonce,
                                     reason="capacity_exhausted", time=bed.now + 6 + late,
                                     request=stale.request, amount=1))
        audited = bed.core.check_audit(HOST.node_id, audit_report(HOST, [refused]),
                                       now=bed.now + 5, at=bed.now + 6)
        assert bool(audited.new_items) is held


@pytest.mark.parametrize("colluders", [(ROAMER,), (ROAMER, OTHER)])
def test_tiny_grants_flooding_the_ledger_cannot_hide_the_drain(
        colluders: tuple[Identity, ...]) -> None:
    # Many tiny grants first (more than the ledger holds), then one that takes the rest,
    # then the refusal the roamer files alone.
    bed = closed_epoch()
    host = bed.host()
    at = bed.now
    for i in range(MAX_AUDIT_ITEMS + 20):  # more than one report holds
        assert bed.ask(host, colluders[i % len(colluders)], 1, at).granted
    assert bed.ask(host, ROAMER, 10 * bed.owed, at + 1).granted
    outcome = bed.ask(host, ROAMER, 1, at + 2)
    assert outcome.refusal is not None
    bed.file(ROAMER, [outcome.refusal])
    bed.file(HOST, host.unfiled(0))
    assert HOST.node_id not in bed.judged()


def test_receipts_proving_a_refusal_are_not_crowded_out_by_later_grants(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A flood fills the ledger between two filings (a small bound keeps the test fast).
    # An indivisible request larger than what is left is refused while only tiny grants
    # add up to the proof; later, larger grants must not push that proof out.
    bound = 40
    monkeypatch.setattr(host_module, "MAX_LEDGER", bound)
    bed = closed_epoch()
    host = bed.host(partial_grants=False, shares=False)
    at = bed.now
    step = bed.owed // (2 * bound)
    for _ in range(bound):
        assert bed.ask(host, OTHER, step, at).granted
    left = bed.owed - bound * step
    outcome = bed.ask(host, ROAMER, left + 1, at + 1)  # just too much: justified
    assert outcome.refusal is not None and outcome.decision.reason == "capacity_exhausted"
    for _ in range(5):
        assert bed.ask(host, ROAMER, left // 8, at + 2).granted
    later = bed.ask(host, ROAMER, bed.owed, at + 3)
    assert later.refusal is not None
    bed.file(ROAMER, [outcome.refusal, later.refusal])
    bed.file(HOST, host.unfiled(0))
    assert HOST.node_id not in bed.judged()


@pytest.mark.asyncio
async def test_a_drain_after_the_hosts_report_is_filed_before_the_cut_off(
        clock: FakeClock) -> None:
    # The roamer waits until the host has sent its epoch's report, then drains it, hides
    # the receipt and files only the refusal that follows. The host files the late
    # receipt at its next step, so the audit (over everything filed) does not exclude it.
    specs = [BedNode(seed=31, location=0, kind="wlan_coverage", theta=700_000),
             BedNode(seed=32, location=1, kind="wlan_coverage", theta=700_000)]
    async with node_bed(specs, clock) as (fake, agents):
        host, roamer = agents
        assert await step_all(agents) == ["registered"] * 2
        fake.open(1, deadline=NOW + 60)
        assert await step_all(agents) == ["declared"] * 2
        clock.now = NOW + 60
        alloc = fake.close(1, owed={host.node_id: MICRO, roamer.node_id: MICRO})
        assert await step_all(agents) == ["provided"] * 2
        assert await step_all(agents) == ["roamed"] * 2
        assert await step_all(agents) == ["reported"] * 2
        cred = fake.credentials[(1, roamer.node_id)]
        clock.now += 5
        drain = make_access_request(roamer.identity, cred, host_id=host.node_id,
                                    amount=10 * MICRO, now=clock.now)
        assert host.host.access(drain.to_bytes(), now=clock.now).granted
        again = make_access_request(roamer.identity, cred, host_id=host.node_id, amount=1,
                                    now=clock.now + 1)
        refused = host.host.access(again.to_bytes(), now=clock.now + 1).refusal
        assert refused is not None
        filed = [refused]  # all the roamer files

        def judged() -> set[str]:
            windows = {}
            for (epoch, node_id), env in fake.credentials.items():
                if epoch == 1:
                    c = open_envelope(env.to_bytes(), Credential, trusted=env.signer)[1]
                    windows[node_id] = (c.not_before, c.expires)
            items = [item(e) for e in filed] + [
                item(e) for r in fake.audits if r.epoch == 1 for e in r.evidence]
            commitments = {n: c.contribution for n, c in fake.commitments[1].items()}
            return {x.node_id for x in find_free_riders(
                allocation=alloc, commitments=commitments, evidence=items,
                credential_windows=windows)}

        assert host.node_id in judged()  # before the host's next step
        assert await step_all(agents) == ["waiting"] * 2
        assert host.node_id not in judged()
        n_reports = len(fake.audits)
        assert await step_all(agents) == ["waiting"] * 2
        assert len(fake.audits) == n_reports  # filed once


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.one_of(st.integers(1, 5), st.just(0)), min_size=1, max_size=30))
def test_a_full_ledger_gives_up_the_smallest_latest_receipt_across_filings(
        ops: list[int]) -> None:
    # ops: an amount to grant, or 0 to file what is unfiled but its last receipt. The
    # reference is the rule itself over a list: when full, the smallest kept receipt
    # (the latest of ties) gives way to a larger one; an equal or smaller one is not kept.
    bound = 4
    bed = closed_epoch()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(host_module, "MAX_LEDGER", bound)
        host = bed.host(shares=False)
        kept: list[tuple[int, bytes]] = []  # (amount, the receipt's signature)
        for op in ops:
            if op == 0:
                filed = host.unfiled(0)[:-1]
                host.filed(0, filed)
                kept = kept[len(filed):]
                continue
            outcome = bed.ask(host, ROAMER, op, bed.now)
            assert outcome.receipt is not None
            if len(kept) >= bound:
                smallest = min(reversed(range(len(kept))), key=lambda i: kept[i][0])
                if kept[smallest][0] >= op:
                    continue
                del kept[smallest]
            kept.append((op, outcome.receipt.signature))
            assert [(item(e).amount, e.signature) for e in host.unfiled(0)] == kept
