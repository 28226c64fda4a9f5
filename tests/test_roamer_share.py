"""A roamer's share of a host (issue 11, drain): one included roamer cannot take a
host's whole capacity and leave honest roamers without service.

The gate grants one requester at most ``roamer_share(owed)`` (a quarter of what the host
owes, at least one granule) per epoch; refusing beyond that is a ``capacity_exhausted``
refusal the audit justifies from the host's own ledger, so the share never costs an
honest host its standing, and a host cannot hide behind it either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from helpers.coordinator import COORDINATOR, T0, close_epoch_zero, new_core, receipt, refusal
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.enforcement import UNJUSTIFIED_REFUSAL, find_free_riders
from node.files import FileStore
from node.host import Host
from protocol import (
    Allocation,
    Envelope,
    GrantReceipt,
    Identity,
    Refusal,
    make_access_request,
    open_embedded,
)
from protocol.messages import ROAMER_SHARE_DIVISOR, roamer_share

HOST, R1, R2, R3 = (Identity.from_seed(bytes([i]) * 32) for i in (91, 92, 93, 94))
ROAMERS = (R1, R2, R3)
OWED = 4_000_000
WINDOW = (T0 - 100, T0 + 10_000)


def credentials() -> tuple[Allocation, dict[str, Envelope]]:
    closed, creds = close_epoch_zero(new_core(), [HOST, *ROAMERS])
    return closed.allocation, creds


ALLOC, CREDS = credentials()


def host(kind: str = "wlan_coverage", *, owed: int = OWED, files: FileStore | None = None,
         partial: bool = True) -> Host:
    h = Host(HOST, kind=kind, location=0, coordinator_key=COORDINATOR.public_key,
             files=files, partial_grants=partial)
    h.open_epoch(epoch=0, included=ALLOC.included, opened=owed, now=T0, owed=owed)
    return h


def ask(h: Host, who: Identity, amount: int, at: int = T0 + 1, resource: str | None = None
        ) -> tuple[Envelope | None, Envelope | None]:
    body = make_access_request(who, CREDS[who.node_id], host_id=HOST.node_id, amount=amount,
                               now=at, resource=resource)
    out = h.access(body.to_bytes(), now=at, resource=resource)
    return out.receipt, out.refusal


def judged(evidence: Sequence[Envelope], *, owed: int = OWED, kind: str = "wlan_coverage",
           committed: int | None = None) -> bool:
    alloc = Allocation(epoch=0, mechanism="posted_fee", q=(1,),
                       included=tuple(sorted(p.node_id for p in (HOST, *ROAMERS))),
                       contributions=tuple(owed if n == HOST.node_id else 0 for n in sorted(
                           p.node_id for p in (HOST, *ROAMERS))), expected_welfare=0)
    items: list[GrantReceipt | Refusal] = [
        open_embedded(e, GrantReceipt, trusted=None)[1] if e.type == "grant_receipt"
        else open_embedded(e, Refusal, trusted=None)[1] for e in evidence]
    windows = {n: WINDOW for n in alloc.included}
    found = find_free_riders(allocation=alloc, evidence=items, credential_windows=windows,
                             commitments={HOST.node_id: owed if committed is None
                                          else committed},
                             host_kinds={HOST.node_id: kind})
    return (HOST.node_id, UNJUSTIFIED_REFUSAL) in {(x.node_id, x.reason) for x in found}


def test_the_share_is_a_quarter_of_what_is_owed_in_whole_granules() -> None:
    assert roamer_share(OWED) == OWED // ROAMER_SHARE_DIVISOR
    assert roamer_share(3_000_000, 1_000_000) == 1_000_000  # 0.75 channel: one channel
    assert roamer_share(1_000_000, 1_000_000) == 1_000_000  # a one-channel host grants it
    assert roamer_share(10_000_000, 1_000_000) == 2_000_000
    assert roamer_share(3) == 1


def test_a_drainer_gets_its_share_and_honest_roamers_are_still_served() -> None:
    h = host()
    drained, _ = ask(h, R1, 100 * OWED)  # asks for everything
    assert drained is not None
    assert open_embedded(drained, GrantReceipt, trusted=None)[1].amount == OWED // 4
    again, refused = ask(h, R1, 1, at=T0 + 2)  # its share is used up
    assert again is None and refused is not None
    for who in (R2, R3):
        got, _ = ask(h, who, OWED // 8, at=T0 + 3)
        assert got is not None  # honest roamers get what they ask


def test_the_share_refusal_is_justified_by_the_hosts_ledger_and_only_by_it() -> None:
    h = host()
    drained, _ = ask(h, R1, 100 * OWED)
    _, refused = ask(h, R1, 1, at=T0 + 2)
    assert drained is not None and refused is not None
    assert judged([refused])  # the roamer's selective report alone ...
    assert not judged([refused, *h.unfiled(0)])  # ... is rebutted by the host's ledger


def test_a_host_cannot_hide_behind_a_share_the_roamer_has_not_used() -> None:
    # Half of R1's share granted, then R1 refused for 1 unit: neither the host's capacity
    # nor R1's share is used up, so the refusal is unjustified.
    half = receipt(HOST, R1, amount=OWED // 8, time=T0 + 5, n=1)
    lie = refusal(HOST, R1, reason="capacity_exhausted", time=T0 + 10, n=2, amount=1)
    assert judged([half, lie])
    # grants to another roamer do not use R1's share
    other = receipt(HOST, R2, amount=OWED // 4, time=T0 + 5, n=3)
    assert judged([half, other, lie])
    full = receipt(HOST, R1, amount=OWED // 8, time=T0 + 6, n=4)
    assert not judged([half, full, lie])


def test_a_files_first_grant_is_not_held_to_the_share(tmp_path: Path) -> None:
    big = b"x" * (OWED // 2)  # larger than a share (OWED / 4 bytes)
    small = b"y" * 10
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "small").write_bytes(small)
    files = FileStore(tmp_path)
    files.scan()
    sha_big, sha_small = hashlib.sha256(big).hexdigest(), hashlib.sha256(small).hexdigest()
    h = host("files", files=files)
    first, _ = ask(h, R1, len(big), resource="file:" + sha_big)
    assert first is not None  # an item larger than a share is still served, once
    _, refused = ask(h, R1, len(small), at=T0 + 2, resource="file:" + sha_small)
    assert refused is not None
    assert not judged([refused, *h.unfiled(0)], kind="files")
    got, _ = ask(h, R2, len(small), at=T0 + 3, resource="file:" + sha_small)
    assert got is not None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(3)), st.integers(1, 2 * OWED)),
                min_size=1, max_size=25),
       st.sampled_from(["wlan_coverage", "wlan_channels"]))
def test_the_gate_and_the_audit_agree_on_every_share_refusal(
        asks: list[tuple[int, int]], kind: str) -> None:
    # Whatever the roamers ask, in any order: no roamer gets more than its share, and
    # every refusal the host signs is justified by its own ledger. (The gate grants a
    # divisible request what is left, so it refuses only when no granule is; a host that
    # refuses while some is left is unjustified: tests/test_shoppers.py.)
    unit = 1_000_000 if kind == "wlan_channels" else 1
    h = host(kind)
    refusals: list[Envelope] = []
    got = dict.fromkeys((r.node_id for r in ROAMERS), 0)
    for i, (who, amount) in enumerate(asks):
        roamer = ROAMERS[who]
        amount = max(unit, amount - amount % unit)
        granted, refused = ask(h, roamer, amount, at=T0 + 1 + i)
        if granted is not None:
            got[roamer.node_id] += open_embedded(granted, GrantReceipt, trusted=None)[1].amount
        if refused is not None:
            refusals.append(refused)
    share = roamer_share(OWED, unit)
    assert all(v <= share for v in got.values())
    assert not judged([*refusals, *h.unfiled(0)], kind=kind)
