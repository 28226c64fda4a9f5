"""Free riders: the pure rules, and exclusion from the next epoch by the state machine."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
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

from coordinator.enforcement import (
    NO_COMMITMENT,
    SHORT_COMMITMENT,
    UNJUSTIFIED_REFUSAL,
    Exclusion,
    find_free_riders,
)
from coordinator.epoch import EpochCore
from protocol import (
    Allocation,
    Envelope,
    GrantReceipt,
    Identity,
    InkindError,
    Refusal,
    open_embedded,
)

HOST, GUEST, OTHER, OUTSIDER = node(0), node(1), node(2), node(3)
OWED = 2_000_000
WINDOW = (T0, T0 + 1000)


def allocation(*members: tuple[str, int]) -> Allocation:
    members = tuple(sorted(members))
    return Allocation(epoch=0, mechanism="posted_fee", q=(1,),
                      included=tuple(m for m, _ in members),
                      contributions=tuple(c for _, c in members), expected_welfare=0)


ALLOC = allocation((HOST.node_id, OWED), (GUEST.node_id, OWED), (OTHER.node_id, 0))
FULL = {HOST.node_id: OWED, GUEST.node_id: OWED}
WINDOWS = {HOST.node_id: WINDOW, GUEST.node_id: WINDOW, OTHER.node_id: WINDOW}


def item(envelope: Envelope) -> GrantReceipt | Refusal:
    if envelope.type == "grant_receipt":
        return open_embedded(envelope, GrantReceipt, trusted=None)[1]
    return open_embedded(envelope, Refusal, trusted=None)[1]


def riders(commitments: dict[str, int] = FULL, evidence: Sequence[Envelope] = (),
           kind: str | None = None) -> list[tuple[str, str]]:
    found = find_free_riders(allocation=ALLOC, commitments=commitments,
                             evidence=[item(e) for e in evidence], credential_windows=WINDOWS,
                             host_kinds=None if kind is None else {HOST.node_id: kind})
    assert all(x.detected_epoch == 0 and x.excluded_epoch == 1 for x in found)
    return [(x.node_id, x.reason) for x in found]


def test_full_commitments_and_no_evidence_find_nobody() -> None:
    assert riders() == []


def test_missing_and_short_commitments_are_free_riding() -> None:
    found = riders({GUEST.node_id: OWED - 1})
    assert found == sorted([(HOST.node_id, NO_COMMITMENT), (GUEST.node_id, SHORT_COMMITMENT)])


def test_a_node_that_owes_nothing_need_not_commit() -> None:
    assert (OTHER.node_id, NO_COMMITMENT) not in riders({})


@pytest.mark.parametrize("reason", ["not_included", "revoked", "unknown_key", "stale_epoch",
                                    "not_yet_valid", "future_epoch"])
def test_refusing_a_credentialed_member_for_a_bad_reason_is_free_riding(reason: str) -> None:
    ev = [refusal(HOST, GUEST, reason=reason, time=T0 + 10)]
    assert riders(evidence=ev) == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]


@pytest.mark.parametrize("reason", ["bad_proof", "replay", "expired", "malformed",
                                    "bad_signature", "wrong_signer", "too_large",
                                    "unknown_field", "missing_field", "wrong_type",
                                    "unexpected_message"])
def test_a_signed_refusal_blaming_the_verified_exchange_is_a_false_excuse(reason: str) -> None:
    # A gate signs a refusal only of a request whose credential and proof of possession
    # verified (it answers the rest with a plain error), and the coordinator verified the
    # embedded request's signature again: claiming the exchange failed is the host's lie,
    # the excuse a false committer would give every roamer and every relayed complaint.
    ev = [refusal(HOST, GUEST, reason=reason, time=T0 + 10)]
    assert riders(evidence=ev) == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]


def test_a_refusal_for_what_was_asked_is_the_requesters_fault() -> None:
    assert riders(evidence=[refusal(HOST, GUEST, reason="out_of_range", time=T0 + 10)]) == []
    # A compute or files host's out_of_range (a bought share, a file's size) is its word.
    for kind in ("compute", "files"):
        assert riders(evidence=[refusal(HOST, GUEST, reason="out_of_range", time=T0 + 10)],
                      kind=kind) == []


def test_out_of_range_is_a_false_excuse_where_a_request_cannot_be_out_of_range() -> None:
    # Coverage and channels requests have no item and no bought share: only an amount that
    # is not a whole number of granules can be out of range, which the audit can see.
    whole = refusal(HOST, GUEST, reason="out_of_range", time=T0 + 10, amount=2_000_000)
    assert riders(evidence=[whole], kind="wlan_coverage") == [(HOST.node_id,
                                                                UNJUSTIFIED_REFUSAL)]
    assert riders(evidence=[whole], kind="wlan_channels") == [(HOST.node_id,
                                                                UNJUSTIFIED_REFUSAL)]
    part = refusal(HOST, GUEST, reason="out_of_range", time=T0 + 10, amount=1_500_000)
    assert riders(evidence=[part], kind="wlan_channels") == []


def test_capacity_exhausted_is_legitimate_only_once_receipts_reach_the_commitment() -> None:
    refused = refusal(HOST, GUEST, reason="capacity_exhausted", time=T0 + 10, n=9)
    half = receipt(HOST, OTHER, amount=OWED // 2, time=T0 + 5, n=1)
    rest = receipt(HOST, OTHER, amount=OWED // 2, time=T0 + 6, n=2)
    late = receipt(HOST, OTHER, amount=OWED // 2, time=T0 + 11, n=3)
    assert riders(evidence=[half, refused]) == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]
    assert riders(evidence=[half, late, refused]) == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]
    assert riders(evidence=[half, rest, refused]) == []
    # the same receipt reported twice counts once
    assert riders(evidence=[half, half, refused]) == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]


def test_capacity_exhausted_is_legitimate_when_what_is_left_is_less_than_asked() -> None:
    # A file of 1.5 units when 1.0 unit of the 2.0 committed is left: fair to refuse
    # although the receipts do not reach the commitment; a 0.5-unit file is not.
    half = receipt(HOST, OTHER, amount=OWED // 2, time=T0 + 5, n=1)
    big = refusal(HOST, GUEST, reason="capacity_exhausted", time=T0 + 10, n=9,
                  amount=OWED * 3 // 4)
    small = refusal(HOST, GUEST, reason="capacity_exhausted", time=T0 + 10, n=8,
                    amount=OWED // 4)
    exact = refusal(HOST, GUEST, reason="capacity_exhausted", time=T0 + 10, n=7,
                    amount=OWED // 2)  # exactly what is left fits: not fair
    # (a files host: GUEST's first file is not held to its share of the host)
    assert riders(evidence=[half, big], kind="files") == []
    assert riders(evidence=[half, small], kind="files") == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]
    assert riders(evidence=[half, exact], kind="files") == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]
    # Asking more than the whole commitment is fair to refuse even with no receipts...
    huge = refusal(HOST, GUEST, reason="capacity_exhausted", time=T0 + 10, n=6,
                   amount=OWED + 1)
    assert riders(evidence=[huge]) == []
    # ...but not for a host that committed nothing it owed (caught by the commitment).
    assert riders({GUEST.node_id: OWED}, evidence=[huge]) == [(HOST.node_id, NO_COMMITMENT)]
    # The amount does not excuse a refusal for another reason.
    rude = refusal(HOST, GUEST, reason="not_included", time=T0 + 10, n=5, amount=OWED * 9)
    assert riders(evidence=[rude]) == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]


def test_refusals_outside_the_credential_window_or_by_outsiders_are_fair() -> None:
    before = refusal(HOST, GUEST, reason="not_included", time=WINDOW[0] - 1)
    after = refusal(HOST, GUEST, reason="not_included", time=WINDOW[1])
    outsider_host = refusal(OUTSIDER, GUEST, reason="not_included", time=T0 + 10)
    outsider_guest = refusal(HOST, OUTSIDER, reason="not_included", time=T0 + 10)
    assert riders(evidence=[before, after, outsider_host, outsider_guest]) == []


def test_an_exclusion_is_always_for_the_next_epoch() -> None:
    with pytest.raises(ValueError):
        Exclusion(node_id=HOST.node_id, excluded_epoch=3, detected_epoch=1,
                  reason=NO_COMMITMENT)
    with pytest.raises(ValueError):
        Exclusion(node_id=HOST.node_id, excluded_epoch=2, detected_epoch=1, reason="lazy")


# --- through the state machine -----------------------------------------------------------


def run_epoch(core: EpochCore, people: Sequence[Identity], now: int) -> None:
    fees, q = runner().announcement_terms()
    core.apply(core.plan_open(now, fees=fees, q=q))
    for p in people:
        d = declaration(p, epoch=core.epoch or 0, theta=950_000)
        core.apply(core.check_declaration(d, raw(p, d), now + 1))


def test_free_riders_of_epoch_e_are_excluded_from_epoch_e_plus_1_on() -> None:
    core = new_core()
    people = [node(i) for i in range(4)]
    for p in people:
        r = registration(p)
        core.apply(core.check_registration(r, raw(p, r), now=T0))  # type: ignore[arg-type]
    honest, lazy, rude, guest = people
    run_epoch(core, people, T0)
    closed0 = core.close(T0 + EPOCH_SECONDS, runner().run)
    assert set(closed0.allocation.included) == {p.node_id for p in people}
    owed = dict(zip(closed0.allocation.included, closed0.allocation.contributions, strict=True))
    for p in (honest, rude, guest):
        c = commitment(p, amount=owed[p.node_id])
        core.apply(core.check_commitment(c, raw(p, c)))
    t = T0 + EPOCH_SECONDS + 10
    report = audit_report(guest, [refusal(rude, guest, reason="not_included", time=t),
                                  receipt(honest, guest, amount=1, time=t, n=2)])
    audited = core.check_audit(guest.node_id, report)
    assert audited.n_items == 2 and len(audited.new_items) == 2
    core.apply(audited)
    run_epoch(core, people, T0 + 2 * EPOCH_SECONDS)
    closed1 = core.close(T0 + 3 * EPOCH_SECONDS, runner().run)
    assert {(x.node_id, x.reason) for x in closed1.exclusions} == {
        (lazy.node_id, NO_COMMITMENT), (rude.node_id, UNJUSTIFIED_REFUSAL)}
    assert set(closed1.allocation.included) == {honest.node_id, guest.node_id}
    assert {c.credential.node_id for c in closed1.credentials} == {honest.node_id, guest.node_id}
    # late evidence about epoch 0 is refused after the cut-off
    with pytest.raises(InkindError) as info:
        core.check_audit(guest.node_id, report)
    assert info.value.code == "stale_epoch"
    # epoch 2: lazy and rude are still out (a first offence excludes for
    # PenaltyPolicy.base_epochs = 2 epochs, coordinator/penalty.py); nobody new offended
    owed1 = dict(zip(closed1.allocation.included, closed1.allocation.contributions,
                     strict=True))
    for p in (honest, guest):
        c = commitment(p, epoch=1, amount=owed1[p.node_id])
        core.apply(core.check_commitment(c, raw(p, c)))
    run_epoch(core, people, T0 + 4 * EPOCH_SECONDS)
    closed2 = core.close(T0 + 5 * EPOCH_SECONDS, runner().run)
    assert closed2.exclusions == ()
    assert set(closed2.allocation.included) == {honest.node_id, guest.node_id}


def test_commitments_are_refused_for_outsiders_and_wrong_epochs_without_change() -> None:
    core = new_core()
    a, b = node(0), node(1)
    for p in (a, b):
        r = registration(p)
        core.apply(core.check_registration(r, raw(p, r), now=T0))  # type: ignore[arg-type]
    c = commitment(a, amount=1)
    with pytest.raises(InkindError) as info:
        core.check_commitment(c, raw(a, c))
    assert info.value.code == "future_epoch"
    run_epoch(core, [a], T0)
    core.close(T0 + EPOCH_SECONDS, runner().run)
    cases = [(b, commitment(b, amount=1), "not_included"),
             (a, commitment(a, epoch=1, amount=1), "future_epoch")]
    for who, msg, code in cases:
        with pytest.raises(InkindError) as info:
            core.check_commitment(msg, raw(who, msg))
        assert info.value.code == code
    assert core.audit is not None and core.audit.commitments == {}
    big = commitment(a, amount=9_000_000)
    core.apply(core.check_commitment(big, raw(a, big)))
    small = commitment(a, amount=1)  # a replayed lower commitment cannot lower it
    core.apply(core.check_commitment(small, raw(a, small)))
    assert core.audit.commitments == {a.node_id: 9_000_000}


def test_receipts_a_host_could_fabricate_do_not_excuse_its_refusals() -> None:
    # A receipt is signed by the host alone: receipts to itself, to a node that was not
    # included, or outside the requester's credential window must not count as capacity
    # used, or a host could refuse everyone with capacity_exhausted and stay in.
    refused = refusal(HOST, GUEST, reason="capacity_exhausted", time=T0 + 10, n=9)
    to_self = receipt(HOST, HOST, amount=OWED, time=T0 + 5, n=1)
    to_outsider = receipt(HOST, OUTSIDER, amount=OWED, time=T0 + 5, n=2)
    # (the window is widened by the clock skew for receipts: one clock policy)
    before_window = receipt(HOST, OTHER, amount=OWED, time=T0 - 65, n=3)
    for fake in (to_self, to_outsider, before_window):
        assert riders(evidence=[fake, refused]) == [(HOST.node_id, UNJUSTIFIED_REFUSAL)]
    honest = receipt(HOST, OTHER, amount=OWED, time=T0 + 5, n=4)
    assert riders(evidence=[honest, refused]) == []
