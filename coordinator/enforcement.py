"""Who free-rode in an epoch: pure rules over the allocation, commitments and evidence.

A host is a free rider detected in epoch e (the epoch of the allocation it was part of)
and is excluded from epoch e + 1 (π = 0, no credential) when, at the audit cut-off:

(a) it was included with a positive contribution and sent no commitment
    (``no_commitment``), or committed less than it owes (``short_commitment``); or
(b) audit evidence holds its signed refusal of a requester that was included in
    epoch e and whose credential was valid at the refusal's time, for a reason that is
    not legitimate (``unjustified_refusal``); or
(c) it was included with a positive contribution, the coordinator probed it during
    epoch e (:mod:`coordinator.probe`) and it answered none of those probes
    (``unreachable``): a host that is silent, stopped or down did not open what it owed.
    A host that was never probed is not judged by this rule; or
(d) a roamer included in epoch e complained that it left a request unanswered, the
    coordinator relayed that request to it and it never answered with a signed receipt
    or refusal (``unanswered_complaint``; README section 7, step 7).

Legitimate reasons (:data:`LEGITIMATE_REASONS`) are the requester's own faults in what
it asked (``out_of_range``: a wrong resource, amount or share), which the coordinator
cannot re-check from a refusal alone. A fault of the exchange itself (a malformed
request, a bad proof, a replayed or stale request) is never signed by a host's gate (it
answers those with a plain error, README §7 step 3) and the coordinator re-verifies the
refused request, so a signed refusal claiming one is unjustified. ``capacity_exhausted`` is
legitimate only if what the host's receipts of epoch e up to the refusal's time leave of
the capacity it committed (no commitment counts as zero) is less than the amount the
request asked (the refusal's ``amount``; absent, 1): ``committed - received < amount``.
With ``amount`` = 1 that is "the receipts reach the commitment"; a larger indivisible
request (a file bigger than the bytes left) may be refused earlier, and the host proves
it with its receipts (protocol README section 7, step 5). It is legitimate too when what
the host's receipts of epoch e to that requester leave of the requester's share of the
host (:func:`protocol.messages.roamer_share` of what the host owes, at its kind's
granularity) is less than the amount asked -- except for a file's first grant, which the
gate never holds to the share -- so a roamer that drained its share cannot make the
next refusal look unjustified either. The receipts that count are
those it could not have made up (:func:`ledger_grants`): each embeds the granted
request signed by its requester, so a host files its own ledger and a roamer that drains
it and hides its receipt cannot frame it. Any other reason
(``not_included``, ``revoked``, ``not_yet_valid``, ``stale_epoch`` ...) refuses someone the
coordinator admitted, so it is not. A host that was not included owes nothing, so its
refusals are never held against it.

What a node owes is its contribution plus any debt the allocation charges it
(``Allocation.owed_of``, restitution: README "Graded exclusion"); every rule above
judges that sum, and :func:`shortfall` is what a free rider caught in epoch e owes as
debt from then on.

Nothing here reads a clock, the database or the network; the audit cut-off is whenever
the caller evaluates (the epoch state machine does so when it closes epoch e + 1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from coordinator.probe import ProbeResult, unanswered
from protocol import MAX_CLOCK_SKEW, Allocation, Complaint, GrantReceipt, Refusal, request_of
from protocol.kinds import KINDS, ResourceKind
from protocol.messages import roamer_share

#: Signed refusal reasons that are the requester's fault (README §7, step 3): the form
#: of what it asked (a wrong resource, amount or share). A host signs a refusal only for
#: a request whose credential and proof of possession verified, and the coordinator
#: verifies that request's signature again, so a signed refusal claiming a fault of
#: that verification (``malformed``, ``bad_signature``, ``bad_proof``, ``replay``,
#: ``expired`` ...) is a host's false excuse, never the requester's fault.
LEGITIMATE_REASONS = frozenset({"out_of_range"})
#: Legitimate only when the host's receipts already reach its committed capacity.
CAPACITY_REASON = "capacity_exhausted"

#: The host's rebuttal window, seconds of the coordinator's clock: a refusal is judged at
#: an audit cut-off only if it was filed at least this long before it, so the host it
#: accuses always has this long to file the ledger that may rebut it (a reference host
#: files at every step of its agent, about once a second; the rest is room for retries).
REBUTTAL_SECONDS = 60

NO_COMMITMENT = "no_commitment"
SHORT_COMMITMENT = "short_commitment"
UNJUSTIFIED_REFUSAL = "unjustified_refusal"
UNREACHABLE = "unreachable"
UNANSWERED_COMPLAINT = "unanswered_complaint"
#: Every reason an exclusion may record.
EXCLUSION_REASONS = frozenset({NO_COMMITMENT, SHORT_COMMITMENT, UNJUSTIFIED_REFUSAL,
                               UNREACHABLE, UNANSWERED_COMPLAINT})
#: Offences that are only about how much was committed: what was committed counts as
#: delivered. Any other offence (a refusal of someone it owed, no answer to probes) means
#: the coordinator cannot tell what was delivered, so nothing counts.
COMMITMENT_REASONS = frozenset({NO_COMMITMENT, SHORT_COMMITMENT})


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Exclusion:
    """``node_id`` was found free-riding in ``detected_epoch``; out of ``excluded_epoch``."""

    node_id: str
    excluded_epoch: int
    detected_epoch: int
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in EXCLUSION_REASONS:
            raise ValueError(f"unknown exclusion reason {self.reason!r}")
        if self.excluded_epoch != self.detected_epoch + 1:
            raise ValueError("a free rider is excluded from the epoch after detection")


def refusal_is_legitimate(refusal: Refusal, *, received: int, committed: int,
                          share: int | None = None, received_by: int = 0,
                          indivisible: bool = False, kind: ResourceKind | None = None
                          ) -> bool:
    """Whether ``refusal`` (of a validly credentialed, included requester) is justified.

    ``received`` is what the host had granted in the epoch up to the refusal's time
    (micro-units), ``committed`` what it committed to open; ``share`` the most one
    requester may be granted by the host in the epoch
    (:func:`protocol.messages.roamer_share` of what it owes; None: no share),
    ``received_by`` what this requester had been granted by it up to the refusal's time,
    ``indivisible`` whether the request is for an item (a file), whose first grant is not
    held to the share. A ``capacity_exhausted`` refusal is justified when what is left of
    the commitment, or of the requester's share, is less than the amount asked -- for a
    divisible request of a known kind, less than one granule (the gate grants what is
    left, so it refuses only when nothing whole is).
    ``kind``: the host's resource kind, if known. For a kind whose requests have no item
    and no bought share (coverage, channels) the only thing a request can get wrong is
    an amount that is not a whole number of granules, so an ``out_of_range`` refusal of
    a whole amount is a false excuse there; for files and compute (a file's size, a
    bought share) it stays the host's word.
    """
    if refusal.reason == "out_of_range" and kind is not None and not (
            kind.itemised or kind.shares):
        return request_of(refusal).amount % kind.granularity != 0
    if refusal.reason in LEGITIMATE_REASONS:
        return True
    if refusal.reason == CAPACITY_REASON:
        asked = refusal.amount if refusal.amount is not None else 1
        # A divisible request is granted what is left in whole granules (node.gate,
        # partial grants): refusing it is justified only when not one granule is left,
        # else a false committer could refuse every request above what it has "left".
        need = asked if indivisible or kind is None else min(asked, kind.granularity)
        if committed - received < need:
            return True
        held = share is not None and (received_by > 0 or not indivisible)
        return held and share is not None and share - received_by < need
    return False


def shortfall(owed: int, committed: int, reasons: Iterable[str]) -> int:
    """The debt of a node caught for ``reasons`` in an epoch in which it owed ``owed``
    (contribution + debt charged, micro-units) and committed ``committed``:
    ``owed − committed`` (at least 0) when every reason is in
    :data:`COMMITMENT_REASONS`, else all of ``owed``."""
    if set(reasons) <= COMMITMENT_REASONS:
        return max(0, owed - committed)
    return owed


@dataclass(frozen=True, slots=True)
class LedgerGrant:
    """A grant that counts toward its host's capacity used: ``amount`` granted at the
    host's ``time`` for a request its requester ``issued`` (requester's clock)."""

    time: int
    issued: int
    amount: int
    requester: str = ""

    def counts_before(self, cutoff: int) -> bool:
        """Whether it was granted by ``cutoff`` (host time), by both parties' word."""
        return self.time <= cutoff and self.issued <= cutoff + MAX_CLOCK_SKEW


def ledger_grants(
    receipts: Iterable[GrantReceipt],
    refused: Container[tuple[str, bytes]],
    owed: Mapping[str, int],
    credential_windows: Mapping[str, tuple[int, int]],
) -> dict[str, list[LedgerGrant]]:
    """Per host, the receipts that count toward its capacity used (README section 7,
    step 5): only those it could not have made up, whoever reported them.

    A receipt counts iff its embedded request (signed by the requester: verified when the
    evidence entered) is from another node than the host, included in the epoch
    (``owed``), issued inside that node's credential window (as given: the coordinator
    passes the windows its hosts' gates accept) widened by the clock skew (a request is
    issued by the roamer's clock, within the skew of the host's),
    granted no earlier than the skew before its issue (a request relayed from a complaint
    is granted long after it; a grant counts only from its own time,
    :meth:`LedgerGrant.counts_before`, so dating it late gains a host nothing), and the
    host did not also sign a refusal of the very same request (``refused``: (host,
    request signature) pairs; an equivocating host's grant counts for nothing -- the same
    request, not just the same nonce, so a roamer reusing a nonce cannot void a grant).
    So a host cannot excuse itself with receipts to itself, to non-members, for requests
    never made, or outside the window; and a roamer cannot frame a host by hiding the
    receipts the host files itself.
    """
    out: dict[str, list[LedgerGrant]] = defaultdict(list)
    for r in receipts:
        window = credential_windows.get(r.requester_id)
        if (r.requester_id == r.host_id or r.requester_id not in owed or window is None
                or (r.host_id, r.request.signature) in refused):
            continue
        issued = request_of(r).issued
        # Never granted before it was asked (beyond the skew); granted later is how a
        # request relayed from a complaint is answered (node.host.Host.resolve decides it
        # whatever its age), and such a grant counts from when it was made.
        if not (window[0] - MAX_CLOCK_SKEW <= issued < window[1] + MAX_CLOCK_SKEW
                and r.time >= issued - MAX_CLOCK_SKEW):
            continue
        out[r.host_id].append(LedgerGrant(time=r.time, issued=issued, amount=r.amount,
                                          requester=r.requester_id))
    return out


def find_free_riders(
    *,
    allocation: Allocation,
    commitments: Mapping[str, int],
    evidence: Iterable[GrantReceipt | Refusal],
    credential_windows: Mapping[str, tuple[int, int]],
    probes: Iterable[ProbeResult] = (),
    complaints: Iterable[Complaint] = (),
    host_kinds: Mapping[str, str] | None = None,
    complained: Container[tuple[str, str, str]] = frozenset(),
) -> list[Exclusion]:
    """The exclusions for ``allocation.epoch + 1``, sorted, one per (node, reason).

    ``commitments`` maps node id to the contribution it committed for the epoch;
    ``evidence`` holds the verified receipts and refusals of that epoch, from roamers and
    from the hosts' own ledgers (duplicates of one (host, requester, nonce) are counted
    once: a request is its requester's nonce, so two requesters' requests with one nonce
    are two requests);
    ``credential_windows`` maps each included node to its credential's ``(not_before,
    expires)``; ``probes`` the coordinator's probe results (other epochs' are ignored);
    ``complaints`` the roamers' complaints that stand at the cut-off (relayed to the
    host, filed inside the rebuttal window's bound and never answered with a signed
    receipt or refusal: :meth:`coordinator.epoch.AuditState.standing_complaints`);
    ``host_kinds`` each host's resource kind (its registration's), for the requester's
    share of it (:func:`protocol.messages.roamer_share` of what it owes, at the kind's
    granularity; a host of unknown kind at granularity 1, never stricter than its gate);
    ``complained``: (host, requester, nonce) of every complaint held for the epoch, answered
    or not. A refusal is placed at its own time, but no later than the skew after its
    request was issued (the gate decides only fresh requests), so a refusal dated late
    cannot borrow later grants; a refusal of a complained request may answer its relay,
    decided whatever the request's age (:meth:`node.host.Host.resolve`), so it is placed
    at its own time (the coordinator holds none dated past its clock by more than the skew:
    :meth:`coordinator.epoch.EpochCore.check_audit`), and judged if its request was issued
    inside the credential window, however late the relay that it answers.
    """
    epoch = allocation.epoch
    found: dict[tuple[str, str], Exclusion] = {}

    def flag(node: str, reason: str, detail: str) -> None:
        found.setdefault((node, reason), Exclusion(
            node_id=node, excluded_epoch=epoch + 1, detected_epoch=epoch, reason=reason,
            detail=detail))

    owed = allocation.owed()
    for node, amount in owed.items():
        if amount <= 0:
            continue
        if node not in commitments:
            flag(node, NO_COMMITMENT, f"owed {amount} micro-units, committed nothing")
        elif commitments[node] < amount:
            flag(node, SHORT_COMMITMENT,
                 f"owed {amount} micro-units, committed {commitments[node]}")

    silent = unanswered(epoch, probes)
    for node, n_probes in silent.items():
        if owed.get(node, 0) > 0:
            flag(node, UNREACHABLE, f"answered none of {n_probes} coordinator probes")

    for c in complaints:
        # A host that answered no probe is out as unreachable: the relays it missed are
        # the same fault, not a second one.
        if (c.epoch == epoch and owed.get(c.host_id, 0) > 0 and c.requester_id in owed
                and c.host_id not in silent):
            flag(c.host_id, UNANSWERED_COMPLAINT,
                 f"left a request of {c.requester_id[:16]}... unanswered, also when the "
                 "coordinator relayed it")

    receipts: dict[tuple[str, str, str], GrantReceipt] = {}
    refusals: dict[tuple[str, str, str], Refusal] = {}
    for item in evidence:
        if item.epoch != epoch:
            continue
        key = (item.host_id, item.requester_id, item.nonce)
        if isinstance(item, GrantReceipt):
            receipts.setdefault(key, item)
        else:
            refusals.setdefault(key, item)
    refused = {(r.host_id, r.request.signature) for r in refusals.values()}
    ledgers = ledger_grants(receipts.values(), refused, owed, credential_windows)

    for (host, _, _), refusal in sorted(refusals.items()):
        if host not in owed or refusal.requester_id not in owed:
            continue  # a host that was not included owes nothing; nor to a non-included
        window = credential_windows.get(refusal.requester_id)
        relayed = (host, refusal.requester_id, refusal.nonce) in complained
        # A complained request may be decided on its relay whenever that reaches the host,
        # after the credential expired too (its window is judged at the request's
        # ``issued``: protocol.access ``check(relayed=True)``), so its refusal is in the
        # window if the request was -- else a host that drops requests and answers only
        # the relays that come late would escape with refusals "outside" the window.
        at = request_of(refusal).issued if relayed else refusal.time
        if window is None or not window[0] <= at < window[1]:
            continue  # the credential was not valid then: any refusal is fair
        # The refused request's issued time (the requester's word) bounds when the host
        # may say it refused, so a refusal dated late cannot borrow later grants.
        cutoff = refusal.time
        if not relayed:
            cutoff = min(cutoff, request_of(refusal).issued + MAX_CLOCK_SKEW)
        counted = [g for g in ledgers.get(host, ()) if g.counts_before(cutoff)]
        received = sum(g.amount for g in counted)
        committed = commitments.get(host, 0)
        # A host of unknown kind is judged at granularity 1 with no items: a share at
        # least as large as its gate's, up to a granule, so never a stricter rule.
        kind = KINDS.get((host_kinds or {}).get(host, ""))
        share = roamer_share(owed[host], 1 if kind is None else kind.granularity)
        received_by = sum(g.amount for g in counted if g.requester == refusal.requester_id)
        indivisible = kind is not None and kind.itemised
        if not refusal_is_legitimate(refusal, received=received, committed=committed,
                                     share=share if owed[host] > 0 else None,
                                     received_by=received_by, indivisible=indivisible,
                                     kind=kind):
            flag(host, UNJUSTIFIED_REFUSAL,
                 f"refused {refusal.requester_id[:16]}... with {refusal.reason} at "
                 f"{refusal.time} (granted {received} of {committed} committed, "
                 f"{refusal.amount if refusal.amount is not None else 'no amount'} asked)")
    return sorted(found.values())
