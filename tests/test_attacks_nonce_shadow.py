"""Nonce shadowing (issue 11, hole B): a request is its requester's nonce, not the host's.

Evidence and complaints were known by (host, nonce). A host with one included accomplice
shadowed a roamer's complaint: the accomplice signed a request to the host reusing the
dropped request's nonce, the host filed an answer to it, and the roamer's complaint read
as answered. Keying the coordinator alone by requester would have let two colluders
sharing a nonce frame an honest host, whose ledger refused the second requester's nonce
with a plain (unsigned) replay error. Both sides now key a request by (host, requester,
nonce); the same requester's nonce stays single use. On the sans-I/O cores and the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.coordinator import (
    COORDINATOR,
    EPOCH_SECONDS,
    T0,
    audit_report,
    close_epoch_zero,
    new_core,
    open_now,
    runner,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.enforcement import UNANSWERED_COMPLAINT, find_free_riders
from coordinator.epoch import CLOCK_SKEW, Change, EpochCore
from coordinator.store import Store
from node.host import Host
from protocol import (
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
from protocol.access import AccessBody, credential_digest

HOST, ROAMER, ACCOMPLICE, FOURTH = (Identity.from_seed(bytes([i]) * 32)
                                    for i in (131, 132, 133, 134))
PEOPLE = (HOST, ROAMER, ACCOMPLICE, FOURTH)
NONCE = "5a" * 16


def _fixed(nonce: str) -> Callable[[int], bytes]:
    return lambda n: bytes.fromhex(nonce)[:n]


def _body(who: Identity, creds: dict[str, Envelope], *, now: int, amount: int = 1,
          nonce: str = NONCE) -> AccessBody:
    return make_access_request(who, creds[who.node_id], host_id=HOST.node_id, amount=amount,
                               now=now, rng=_fixed(nonce))


def _complaint(core: EpochCore, creds: dict[str, Envelope], who: Identity,
               request: Envelope, *, now: int) -> Change | None:
    data = seal_bytes(who, Complaint(epoch=0, requester_id=who.node_id,
                                     host_id=HOST.node_id, request=request))
    _, c = open_envelope(data, Complaint, trusted=core.keys)
    return core.check_complaint(c, data, now=now,
                                credential_digest=credential_digest(creds[who.node_id]))


def _item(envelope: Envelope) -> GrantReceipt | Refusal:
    if envelope.type == GrantReceipt.TYPE:
        return open_envelope(envelope.to_bytes(), GrantReceipt, trusted=None)[1]
    return open_envelope(envelope.to_bytes(), Refusal, trusted=None)[1]


def _honest_host(*, extra: bool = False
                 ) -> tuple[EpochCore, dict[str, Envelope], Host, int]:
    """Epoch 0 closed on a core (the audit running), its credentials, and an honest
    coverage host that opened what it owes (``extra``: twice that, and more) at the
    windows' start, the time it returns."""
    core = new_core()
    _, creds = close_epoch_zero(core, PEOPLE, kind="wlan_coverage")
    audit = core.audit
    assert audit is not None
    owed = audit.allocation.owed()[HOST.node_id]
    h = Host(HOST, kind="wlan_coverage", location=0,
             coordinator_key=core.identity.public_key)
    start = max(a for a, _ in audit.windows.values())
    h.open_epoch(epoch=0, included=audit.allocation.included,
                 opened=2 * owed + 2 if extra else owed, now=start, owed=owed)
    return core, creds, h, start


# --- (1) a host and one accomplice cannot shadow a roamer's complaint --------------------


@pytest.mark.parametrize("answer", ["late_refusal", "receipt"])
def test_an_accomplices_request_reusing_a_dropped_nonce_does_not_answer_the_complaint(
        answer: str) -> None:
    """The host drops the roamer's request (nonce N). Its accomplice (included,
    credentialled) signs a request to the host with nonce N; the host files a refusal of
    it dated just past the accomplice's window (held, never judged) or a receipt of it.
    Known by (host, nonce), that answered the roamer's complaint and the dropper walked
    free; known by (host, requester, nonce) the complaint stands and the cut-off
    excludes the host."""
    core = new_core()
    _, creds = close_epoch_zero(core, PEOPLE, kind="wlan_coverage")
    audit = core.audit
    assert audit is not None
    at = T0 + EPOCH_SECONDS + 1
    dropped = _body(ROAMER, creds, now=at).request
    filed = _complaint(core, creds, ROAMER, dropped, now=at + 1)
    assert filed is not None
    core.apply(filed)

    shadow = _body(ACCOMPLICE, creds, now=at).request
    if answer == "receipt":
        signed = seal(HOST, GrantReceipt(epoch=0, host_id=HOST.node_id,
                                         requester_id=ACCOMPLICE.node_id, nonce=NONCE,
                                         amount=1, time=at + 2, request=shadow))
        when = at + 2
    else:
        # Inside [window end + skew, window end + 2 skew): held, but outside the window
        # the judgement reads, so it costs the host nothing.
        when = audit.windows[ACCOMPLICE.node_id][1] + CLOCK_SKEW + 1
        signed = seal(HOST, Refusal(epoch=0, host_id=HOST.node_id,
                                    requester_id=ACCOMPLICE.node_id, nonce=NONCE,
                                    reason="capacity_exhausted", time=when, request=shadow,
                                    amount=1))
    audited = core.check_audit(HOST.node_id, audit_report(HOST, [signed]), now=when)
    assert len(audited.new_items) == 1  # the accomplice's answer is evidence of its own
    core.apply(audited)

    key = (HOST.node_id, ROAMER.node_id, NONCE)
    assert not audit.answered(key)
    assert [c.complaint.requester_id for c in audit.pending()] == [ROAMER.node_id]
    core.apply(core.check_relay(0, audit.pending()[0].key))  # the host ignores the relay

    cutoff = max(T0 + 3 * EPOCH_SECONDS, at + 1 + core.settings.rebuttal_seconds)
    open_now(core, T0 + 2 * EPOCH_SECONDS)
    closed = core.close(cutoff, runner().run)
    assert (HOST.node_id, UNANSWERED_COMPLAINT) in {
        (x.node_id, x.reason) for x in closed.exclusions}


def test_the_store_answers_a_complaint_only_with_the_answer_to_that_requester(
        tmp_path: Path) -> None:
    """``POST /v1/complaints`` answers with the stored answer to the complained request:
    the accomplice's answer under the same nonce is not the roamer's."""
    core = new_core()
    _, creds = close_epoch_zero(core, PEOPLE)
    at = T0 + EPOCH_SECONDS + 1
    store = Store(tmp_path / "c.db")
    try:
        filed = _complaint(core, creds, ROAMER, _body(ROAMER, creds, now=at).request,
                           now=at + 1)
        assert filed is not None
        core.apply(filed)
        store.persist(filed)
        shadow = _body(ACCOMPLICE, creds, now=at).request
        signed = seal(HOST, GrantReceipt(epoch=0, host_id=HOST.node_id,
                                         requester_id=ACCOMPLICE.node_id, nonce=NONCE,
                                         amount=1, time=at + 2, request=shadow))
        audited = core.check_audit(HOST.node_id, audit_report(HOST, [signed]), now=at + 2)
        store.persist(audited)
        assert store.answer(0, HOST.node_id, ROAMER.node_id, NONCE) is None
        assert store.answer(0, HOST.node_id, ACCOMPLICE.node_id, NONCE) == signed.to_bytes()
    finally:
        store.close()


# --- (2) two colluders sharing a nonce never get an honest host excluded -----------------

#: One step: (colluder 0 or 1, how: "direct" a request sent to the host, "again" the same
#: bytes sent again, "relay" the coordinator relays that colluder's complaint, host clock
#: advance in seconds: all inside the credentials' window, as the coordinator relays a
#: complaint when it is filed).
Step = tuple[int, str, int]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from(["direct", "again", "relay"]),
                          st.integers(0, 6)), max_size=12),
       st.lists(st.integers(-CLOCK_SKEW, CLOCK_SKEW), min_size=2, max_size=2),
       st.lists(st.integers(1, 3), min_size=2, max_size=2), st.booleans())
def test_two_colluders_reusing_one_nonce_never_get_an_honest_host_excluded(
        steps: list[Step], offsets: list[int], units: list[int], file_refusals: bool) -> None:
    """Two included roamers sign requests to an honest host with the same nonce, send
    them (or not, or again) in any order, complain about both and have them relayed at
    any moment. Every request gets a signed answer from the host (directly or to the
    relay), every complaint is answered, and the audit finds nothing against the host."""
    core, creds, h, start = _honest_host()
    audit = core.audit
    assert audit is not None
    owed = audit.allocation.owed()[HOST.node_id]
    colluders = (ROAMER, ACCOMPLICE)
    now = start
    bodies = [_body(c, creds, now=now + offsets[i], amount=units[i] * max(1, owed // 2))
              for i, c in enumerate(colluders)]
    for i, c in enumerate(colluders):
        filed = _complaint(core, creds, c, bodies[i].request, now=now)
        assert filed is not None
        core.apply(filed)
    signed: list[Envelope | None] = [None, None]
    refusals: list[Envelope] = []

    def relay(i: int) -> None:
        key = (HOST.node_id, colluders[i].node_id, NONCE)
        core.apply(core.check_relay(0, key))
        out = h.resolve(bodies[i].to_bytes(), now=now)
        answer = out.receipt if out.receipt is not None else out.refusal
        assert answer is not None, out.decision  # a relay always gets a signed answer
        kept = core.check_audit(HOST.node_id, audit_report(HOST, [answer]), now=now,
                                at=now)
        core.apply(kept)
        assert audit.answered(key)

    for i, how, advance in steps:
        now += advance
        if how == "relay":
            relay(i)
            continue
        out = h.access(bodies[i].to_bytes(), now=now)
        answer = out.receipt if out.receipt is not None else out.refusal
        if how == "direct" and signed[i] is None and answer is None:
            # Only a replay of this colluder's own nonce is left unsigned.
            assert out.decision.reason in ("replay", "expired", "not_yet_valid")
        if answer is not None:
            signed[i] = signed[i] or answer
            if out.refusal is not None:
                refusals.append(out.refusal)
    for i in range(2):
        if not audit.answered((HOST.node_id, colluders[i].node_id, NONCE)):
            relay(i)  # the coordinator relays every pending complaint
    # The host files its ledger; the colluders file the refusals if they like.
    filed_items = [*h.unfiled(0), *(refusals if file_refusals else [])]
    core.apply(core.check_audit(HOST.node_id, audit_report(HOST, filed_items), now=now,
                                at=now))
    assert audit.pending() == []
    cutoff = now + core.settings.rebuttal_seconds + EPOCH_SECONDS
    found = find_free_riders(
        allocation=audit.allocation, commitments=audit.commitments,
        evidence=audit.judged(cutoff, core.settings.rebuttal_seconds),
        credential_windows=audit.skewed_windows(),
        complaints=audit.standing_complaints(cutoff, core.settings.rebuttal_seconds),
        host_kinds={HOST.node_id: "wlan_coverage"}, complained=audit.complained())
    assert [x for x in found if x.node_id == HOST.node_id] == []


def test_another_requesters_request_with_a_granted_nonce_gets_a_signed_answer() -> None:
    """The host's ledger knew granted nonces, not requests: the second colluder's request
    reusing the first's granted nonce got a plain replay error -- nothing signed for the
    complaint -- also when relayed."""
    _, creds, h, start = _honest_host()
    first = h.access(_body(ACCOMPLICE, creds, now=start).to_bytes(), now=start)
    assert first.receipt is not None
    second = _body(ROAMER, creds, now=start)
    out = h.access(second.to_bytes(), now=start + 1)
    assert out.receipt is not None or out.refusal is not None, out.decision
    assert _item(out.receipt or out.refusal).requester_id == ROAMER.node_id  # type: ignore[arg-type]
    assert h.resolve(second.to_bytes(), now=start + 2 * CLOCK_SKEW + 1).receipt == out.receipt


# --- (4) one requester's nonce is still single use ----------------------------------------


def test_the_same_requesters_nonce_is_still_refused_as_a_replay() -> None:
    """The wider key never lets one requester use a nonce twice: the same bytes again, a
    new request (new time, new signature) with the same nonce, and a relay of that new
    request get no second signed answer; the relay gets the first receipt, byte for byte,
    and the capacity is consumed once."""
    _, creds, h, start = _honest_host()
    body = _body(ROAMER, creds, now=start)
    first = h.access(body.to_bytes(), now=start)
    assert first.receipt is not None
    again = h.access(body.to_bytes(), now=start + 1)
    assert (again.decision.reason, again.receipt, again.refusal) == ("replay", None, None)
    fresh = _body(ROAMER, creds, now=start + 2)
    assert fresh.request.signature != body.request.signature
    reused = h.access(fresh.to_bytes(), now=start + 2)
    assert (reused.decision.reason, reused.receipt, reused.refusal) == ("replay", None, None)
    relayed = h.resolve(fresh.to_bytes(), now=start + 2 * CLOCK_SKEW + 1)
    assert relayed.receipt == first.receipt
    assert len(h.unfiled(0)) == 1
    assert h.granted_to[ROAMER.node_id] == _item(first.receipt).amount  # type: ignore[union-attr]


def test_a_requester_reusing_its_nonce_past_the_kept_answers_gets_no_second_grant(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound on kept answers a relay is decided again; the ledger still refuses
    a second grant of the same (requester, nonce) with a plain replay error."""
    monkeypatch.setattr("node.host.MAX_ANSWERS", 0)
    _, creds, h, start = _honest_host(extra=True)
    assert h.access(_body(ROAMER, creds, now=start).to_bytes(), now=start).receipt is not None
    later = start + 2 * CLOCK_SKEW + 1  # the second request is stale: only a relay
    relayed = h.resolve(_body(ROAMER, creds, now=start + 2).to_bytes(), now=later)
    assert (relayed.decision.reason, relayed.receipt, relayed.refusal) == ("replay", None, None)
    other = h.resolve(_body(ACCOMPLICE, creds, now=start + 2).to_bytes(), now=later)
    assert other.receipt is not None  # another requester's request is another request


# --- (3) the migration of a database keyed by (host, nonce) -------------------------------

OLD_EVIDENCE = """CREATE TABLE evidence (
    epoch INTEGER NOT NULL, host_id TEXT NOT NULL, challenge TEXT NOT NULL,
    kind TEXT NOT NULL, requester_id TEXT NOT NULL, reporter_id TEXT NOT NULL,
    envelope BLOB NOT NULL, received_at INTEGER,
    PRIMARY KEY (epoch, host_id, challenge, kind))"""
OLD_COMPLAINTS = """CREATE TABLE complaints (
    epoch INTEGER NOT NULL, host_id TEXT NOT NULL, nonce TEXT NOT NULL,
    requester_id TEXT NOT NULL, filed_at INTEGER NOT NULL,
    relays INTEGER NOT NULL DEFAULT 0, envelope BLOB NOT NULL,
    PRIMARY KEY (epoch, host_id, nonce))"""


def _primary_key(path: Path, table: str) -> list[str]:
    db = sqlite3.connect(path)
    try:
        rows = sorted((r[5], r[1]) for r in db.execute(f"PRAGMA table_info({table})")
                      if r[5] > 0)
    finally:
        db.close()
    return [name for _, name in rows]


def test_a_database_keyed_by_host_and_nonce_keeps_its_evidence_and_complaints(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    core = new_core()
    store = Store(path)
    apply = core.apply

    def persisted(change: Change) -> None:
        store.persist(change)
        apply(change)

    core.apply = persisted  # type: ignore[method-assign]
    _, creds = close_epoch_zero(core, PEOPLE)
    at = T0 + EPOCH_SECONDS + 1
    filed = _complaint(core, creds, ROAMER, _body(ROAMER, creds, now=at).request, now=at)
    assert filed is not None
    core.apply(filed)
    core.apply(core.check_relay(0, (HOST.node_id, ROAMER.node_id, NONCE)))
    other = _body(ACCOMPLICE, creds, now=at, nonce="6b" * 16).request
    items = [
        seal(HOST, GrantReceipt(epoch=0, host_id=HOST.node_id, requester_id=ACCOMPLICE.node_id,
                                nonce="6b" * 16, amount=1, time=at, request=other)),
        seal(HOST, Refusal(epoch=0, host_id=HOST.node_id, requester_id=ACCOMPLICE.node_id,
                           nonce="6b" * 16, reason="capacity_exhausted", time=at + 1,
                           request=other, amount=1)),
    ]
    core.apply(core.check_audit(FOURTH.node_id, audit_report(FOURTH, items), now=at + 1))
    store.close()
    # Rewrite both tables in the shape they had before the requester joined the keys.
    db = sqlite3.connect(path)
    with db:
        for table, old in (("evidence", OLD_EVIDENCE), ("complaints", OLD_COMPLAINTS)):
            db.execute(f"ALTER TABLE {table} RENAME TO {table}_new")
            db.execute(old)
            db.execute(f"INSERT INTO {table} SELECT * FROM {table}_new")
            db.execute(f"DROP TABLE {table}_new")
    db.close()
    assert "requester_id" not in _primary_key(path, "evidence")

    for _ in range(2):  # migrating twice changes nothing
        store = Store(path)
        try:
            snap = store.snapshot(COORDINATOR.public_key)
            assert store.answer(0, HOST.node_id, ACCOMPLICE.node_id, "6b" * 16) == (
                items[0].to_bytes())
        finally:
            store.close()
        assert _primary_key(path, "evidence") == [
            "epoch", "host_id", "requester_id", "challenge", "kind"]
        assert _primary_key(path, "complaints") == ["epoch", "host_id", "requester_id", "nonce"]
        restored = EpochCore.restore(snap, identity=core.identity, settings=core.settings)
        assert restored.audit is not None and core.audit is not None
        assert restored.audit.evidence == core.audit.evidence
        assert restored.audit.received == core.audit.received
        assert restored.audit.complaints == core.audit.complaints
        [(_, kept)] = restored.audit.complaints.items()
        assert kept.relays == 1


def test_a_request_answered_on_its_relay_is_not_answered_again_when_sent() -> None:
    """A roamer complains about a request it never sent; the relay is granted (its share
    used). Sent directly afterwards -- the replay window never saw a relayed request --
    it was decided again and refused for capacity: two signed answers to one request,
    and the audit voids a grant whose request the host also refused, so the honest host
    was framed. Now the second arrival is a plain replay."""
    core, creds, h, start = _honest_host()
    audit = core.audit
    assert audit is not None
    owed = audit.allocation.owed()[HOST.node_id]
    body = _body(ROAMER, creds, now=start, amount=owed)
    relayed = h.resolve(body.to_bytes(), now=start)
    assert relayed.receipt is not None
    sent = h.access(body.to_bytes(), now=start + 1)
    assert (sent.decision.reason, sent.receipt, sent.refusal) == ("replay", None, None)
