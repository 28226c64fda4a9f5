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
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.enforcement import find_free_riders
from coordinator.epoch import EpochCore, Relayed
from node.host import Host
from protocol import (
    MAX_CLOCK_SKEW,
    AccessRequest,
    Allocation,
    Complaint,
    Envelope,
    GrantReceipt,
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
    assert not audit.answered((HOST.node_id, ROAMER.node_id, nonce))
    core.apply(Relayed(epoch=0, key=(HOST.node_id, ROAMER.node_id, nonce)))
    standing = audit.standing_complaints(at + 1000, core.settings.rebuttal_seconds)
    assert [c.nonce for c in standing] == [nonce]



# --- the one-granule rule never excludes an honest host -----------------------------------

KINDS_UNITS = {"wlan_coverage": 1, "wlan_channels": 1_000_000}
#: One step of the property test below: (who, amount asked, the host's clock advance,
#: the roamer's clock offset, relayed: asked only when the coordinator relays it that
#: many seconds later -- a request never sent, then complained about).
Step = tuple[int, int, int, int, int | None]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(3)), st.integers(1, 3_000_000),
                          st.integers(0, 3), st.integers(-MAX_CLOCK_SKEW, MAX_CLOCK_SKEW),
                          st.one_of(st.none(), st.integers(0, 80))),
                min_size=1, max_size=25),
       st.sampled_from(sorted(KINDS_UNITS)), st.integers(1, 5_000_000))
def test_an_honest_host_is_never_an_unjustified_refuser(steps: list[Step], kind: str,
                                                        owed: int) -> None:
    """Whatever the roamers ask, however much, in any order, with clocks apart by up to
    the skew, and with requests that reach the host only as relays of complaints long
    after they were signed: every refusal the honest host signs is justified by its own
    ledger, judged as the coordinator judges (its windows, its skew, complained requests
    at their own time). ``owed`` need not be a whole number of granules: the host opens
    it rounded up (node.epoch.provision) and commits what it opened."""
    unit = KINDS_UNITS[kind]
    core = new_core()
    _, creds = close_epoch_zero(core, PEOPLE, kind=kind)
    audit = core.audit
    assert audit is not None
    opened = -(-owed // unit) * unit
    h = Host(HOST, kind=kind, location=0, coordinator_key=core.identity.public_key)
    start = max(a for a, _ in audit.windows.values())
    h.open_epoch(epoch=0, included=audit.allocation.included, opened=opened, now=start,
                 owed=owed)
    roamers = (ROAMER, OTHER, FOURTH)
    now, filed, complained = start, [], set()
    for who, amount, advance, offset, relayed in steps:
        now += advance
        roamer = roamers[who]
        amount = max(unit, amount - amount % unit)
        body = make_access_request(roamer, creds[roamer.node_id], host_id=HOST.node_id,
                                   amount=amount, now=now + offset)
        if relayed is None:
            out = h.access(body.to_bytes(), now=now)
        else:
            nonce = open_envelope(body.request.to_bytes(), AccessRequest,
                                  trusted={roamer.public_key})[1].nonce
            complained.add((HOST.node_id, roamer.node_id, nonce))
            now += relayed  # the host's clock only moves on
            out = h.resolve(body.to_bytes(), now=now)
        if out.refusal is not None:
            filed.append(out.refusal)
    items = [*filed, *h.unfiled(0)]
    opened_items: list[GrantReceipt | Refusal] = [
        open_envelope(e.to_bytes(), GrantReceipt, trusted=None)[1]
        if e.type == "grant_receipt" else open_envelope(e.to_bytes(), Refusal, trusted=None)[1]
        for e in items]
    alloc = Allocation(epoch=0, mechanism="posted_fee", q=(1,),
                       included=audit.allocation.included,
                       contributions=tuple(owed if n == HOST.node_id else 0
                                           for n in audit.allocation.included),
                       expected_welfare=0)
    found = find_free_riders(allocation=alloc, commitments={HOST.node_id: opened},
                             evidence=opened_items,
                             credential_windows=audit.skewed_windows(),
                             host_kinds={HOST.node_id: kind}, complained=complained)
    assert [x for x in found if x.node_id == HOST.node_id] == []
