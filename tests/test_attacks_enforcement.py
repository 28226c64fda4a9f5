"""Attacks on the enforcement of issue 11 (probation, mystery shoppers, the one-granule
rule for capacity refusals), as a strategic or malicious peer would try them.

Each test states what a node would gain by lying, hiding, replaying, flooding or
reporting selectively, and asserts that it gains nothing -- and that an honest node is
never punished for what others did. On the sans-I/O cores, time passed in.
"""

from __future__ import annotations

from helpers.coordinator import (
    EPOCH_SECONDS,
    T0,
    audit_report,
    close_epoch_zero,
    new_core,
)

from coordinator.epoch import EpochCore, Relayed
from protocol import (
    AccessRequest,
    Complaint,
    Envelope,
    Identity,
    Refusal,
    make_access_request,
    open_envelope,
    seal,
    seal_bytes,
)
from protocol.access import credential_digest

HOST, ROAMER, OTHER, FOURTH = (Identity.from_seed(bytes([i]) * 32) for i in (121, 122, 123, 124))
PEOPLE = (HOST, ROAMER, OTHER, FOURTH)


def _channels_core() -> tuple[EpochCore, dict[str, Envelope]]:
    core = new_core()
    _, creds = close_epoch_zero(core, PEOPLE, kind="wlan_channels")
    return core, creds


def _complain(core: EpochCore, creds: dict[str, Envelope], who: Identity, request: Envelope,
              *, now: int) -> None:
    data = seal_bytes(who, Complaint(epoch=0, requester_id=who.node_id,
                                     host_id=HOST.node_id, request=request))
    _, c = open_envelope(data, Complaint, trusted=core.keys)
    change = core.check_complaint(c, data, now=now,
                                  credential_digest=credential_digest(creds[who.node_id]))
    assert change is not None
    core.apply(change)


def test_a_host_cannot_answer_a_complaint_with_a_refusal_of_its_own_request() -> None:
    """A false committer drops a roamer's (or a shopper's) request, then signs a request
    of its own to itself carrying the dropped request's nonce and files a refusal of it
    for a reason the audit deems legitimate (a channel request of 1 micro-unit is
    out_of_range). The coordinator knew answers by (host, nonce), so the complaint read
    as answered and the host escaped every complaint, hence every shopper, alone. A
    host's statement about a request of its own is nothing the audit judges: not held."""
    core, creds = _channels_core()
    at = T0 + EPOCH_SECONDS + 1
    dropped = make_access_request(ROAMER, creds[ROAMER.node_id], host_id=HOST.node_id,
                                  amount=1_000_000, now=at).request
    nonce = open_envelope(dropped.to_bytes(), AccessRequest,
                          trusted={ROAMER.public_key})[1].nonce
    _complain(core, creds, ROAMER, dropped, now=at + 1)

    own = make_access_request(HOST, creds[HOST.node_id], host_id=HOST.node_id, amount=1,
                              now=at, rng=lambda n: bytes.fromhex(nonce)[:n]).request
    excuse = seal(HOST, Refusal(epoch=0, host_id=HOST.node_id, requester_id=HOST.node_id,
                                nonce=nonce, reason="out_of_range", time=at + 2,
                                request=own, amount=1))
    audited = core.check_audit(HOST.node_id, audit_report(HOST, [excuse]), now=at + 2)
    assert audited.new_items == ()  # nothing a host says about itself is evidence
    core.apply(audited)
    audit = core.audit
    assert audit is not None
    assert not audit.answered((HOST.node_id, nonce))
    core.apply(Relayed(epoch=0, key=(HOST.node_id, nonce)))
    standing = audit.standing_complaints(at + 1000, core.settings.rebuttal_seconds)
    assert [c.nonce for c in standing] == [nonce]

