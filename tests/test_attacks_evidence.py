"""Evidence flooding, more instances (issue 11 item 7): a roamer that collects many of an
honest host's genuine refusals cannot fill that host's evidence quota and so crowd out
the receipts that justify them (the host would be judged on refusals alone)."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.coordinator import (
    COORDINATOR,
    EPOCH_SECONDS,
    T0,
    audit_report,
    close_epoch_zero,
    commitment,
    declaration,
    new_core,
    node,
    open_now,
    raw,
    receipt,
    refusal,
    registered,
    runner,
    settings,
)

from coordinator.epoch import MAX_REFUSALS_PER_PAIR, EpochCore
from protocol import (
    Complaint,
    GrantReceipt,
    InkindError,
    Refusal,
    make_access_request,
    seal,
    seal_bytes,
)
from protocol.access import credential_digest
from protocol.messages import complained_request


def test_a_roamers_refusal_flood_does_not_crowd_out_the_hosts_receipts() -> None:
    core = EpochCore(identity=COORDINATOR,
                     settings=dataclasses.replace(settings(runner()),
                                                  max_evidence_per_signer=5))
    host, flooder, honest = registered(core, 3)
    open_now(core)
    for p in (host, flooder, honest):
        d = declaration(p, theta=950_000)
        core.apply(core.check_declaration(d, raw(p, d), T0 + 1))
    closed = core.close(T0 + EPOCH_SECONDS, runner().run)
    owed = closed.allocation.contribution_of(host.node_id) or 0
    assert owed > 0
    for p in (host, flooder, honest):
        c = commitment(p, amount=closed.allocation.contribution_of(p.node_id) or 0)
        core.apply(core.check_commitment(c, raw(p, c)))
    t = T0 + EPOCH_SECONDS + 10
    # The host gave the honest roamer all it owed, then (rightly) refused the flooder,
    # who asked again and again and reports every refusal first.
    refusals = [refusal(host, flooder, reason="capacity_exhausted", time=t + 1, n=100 + i,
                        amount=1) for i in range(20)]
    flood = core.check_audit(flooder.node_id, audit_report(flooder, refusals), now=t + 2)
    assert len(flood.new_items) == MAX_REFUSALS_PER_PAIR  # one convicts; more add nothing
    core.apply(flood)
    grant = receipt(host, honest, amount=owed, time=t, n=1)
    stored = core.check_audit(honest.node_id, audit_report(honest, [grant]), now=t + 2)
    assert len(stored.new_items) == 1  # the receipt that justifies every refusal
    core.apply(stored)
    # Judged at the next close: the honest host is not excluded (the flooder's refusals
    # were justified by the receipt it could not crowd out).
    open_now(core, T0 + 2 * EPOCH_SECONDS)
    for p in (host, flooder, honest):
        d = declaration(p, epoch=1, theta=950_000)
        core.apply(core.check_declaration(d, raw(p, d), T0 + 2 * EPOCH_SECONDS + 1))
    nxt = core.close(T0 + 4 * EPOCH_SECONDS, runner().run)
    assert host.node_id not in {x.node_id for x in nxt.exclusions}


def test_a_hosts_answer_to_a_complaint_is_kept_beyond_every_cap() -> None:
    """Its rebuttal: neither a full receipt quota nor the refusal cap keeps it out."""
    core = new_core()
    host, roamer, other = (node(i) for i in (40, 41, 42))
    _, creds = close_epoch_zero(core, [host, roamer, other])
    core.settings = dataclasses.replace(core.settings, max_evidence_per_signer=2)
    t = T0 + EPOCH_SECONDS + 5
    # The quota of host's receipts and its refusals of the roamer are full.
    full = [receipt(host, other, amount=1, time=t, n=500 + i) for i in range(2)]
    full += [refusal(host, roamer, reason="capacity_exhausted", time=t, n=600 + i, amount=1)
             for i in range(MAX_REFUSALS_PER_PAIR)]
    core.apply(core.check_audit(other.node_id, audit_report(other, full), now=t))
    for answer_kind in ("receipt", "refusal"):
        body = make_access_request(roamer, creds[roamer.node_id], host_id=host.node_id,
                                   amount=1, now=t + 1)
        c = Complaint(epoch=0, requester_id=roamer.node_id, host_id=host.node_id,
                      request=body.request)
        data = seal_bytes(roamer, c)
        filed = core.check_complaint(c, data, now=t + 1,
                                     credential_digest=credential_digest(creds[roamer.node_id]))
        assert filed is not None
        core.apply(filed)
        req = complained_request(c)
        if answer_kind == "receipt":
            answer = seal(host, GrantReceipt(
                epoch=0, host_id=host.node_id, requester_id=roamer.node_id, nonce=req.nonce,
                amount=1, time=t + 2, request=body.request))
        else:
            answer = seal(host, Refusal(
                epoch=0, host_id=host.node_id, requester_id=roamer.node_id, nonce=req.nonce,
                reason="capacity_exhausted", time=t + 2, request=body.request, amount=1))
        kept = core.check_audit(host.node_id, audit_report(host, [answer]), now=t + 2)
        assert len(kept.new_items) == 1, answer_kind
        core.apply(kept)
        assert core.audit is not None and core.audit.answered(
            (host.node_id, roamer.node_id, req.nonce))


def test_replayed_and_foreign_epoch_evidence_changes_nothing() -> None:
    """Framing with selective evidence: an item of another epoch refuses the whole report
    (its code, nothing stored); the same item filed again, by anyone, is one item."""
    core = new_core()
    host, roamer, other = (node(i) for i in (50, 51, 52))
    close_epoch_zero(core, [host, roamer, other])
    t = T0 + EPOCH_SECONDS + 5
    good = refusal(host, roamer, reason="capacity_exhausted", time=t, n=1, amount=1)
    for wrong in (1, 7):
        foreign = refusal(host, roamer, reason="capacity_exhausted", time=t, n=2, amount=1,
                          epoch=wrong)
        with pytest.raises(InkindError) as exc:
            core.check_audit(roamer.node_id, audit_report(roamer, [good, foreign]), now=t)
        assert exc.value.code in ("future_epoch", "stale_epoch")
        assert core.audit is not None and core.audit.evidence == {}
    first = core.check_audit(roamer.node_id, audit_report(roamer, [good, good]), now=t)
    assert len(first.new_items) == 1
    core.apply(first)
    for reporter in (roamer, other, host):
        again = core.check_audit(reporter.node_id, audit_report(reporter, [good]), now=t + 1)
        assert again.new_items == ()
    assert core.audit is not None and len(core.audit.evidence) == 1
