"""Every accused host gets a rebuttal window after the last evidence against it
(issue 11, late evidence).

A roamer that drains a host and files the host's later ``capacity_exhausted`` refusal at
the last moment before the audit cut-off must not beat the host's ledger, filed at the
host's next step: a refusal is judged only if it was filed ``rebuttal_seconds`` (the
coordinator's clock) before the cut-off, and receipts (what rebuts) count whenever they
arrive before it. The window is stored with the evidence, so a restart keeps it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helpers.coordinator import (
    COORDINATOR,
    T0,
    audit_report,
    close_epoch_zero,
    runner,
    settings,
)

from coordinator.enforcement import REBUTTAL_SECONDS, UNJUSTIFIED_REFUSAL
from coordinator.epoch import EpochCore
from coordinator.store import Store
from node.host import Host
from protocol import Envelope, Identity, make_access_request

HOST, ROAMER, OTHER = (Identity.from_seed(bytes([i]) * 32) for i in (71, 72, 73))
W = REBUTTAL_SECONDS


def epoch_zero_closed(core: EpochCore) -> tuple[Host, dict[str, Envelope], int]:
    """Epoch 0 closed with HOST owing something and committing it; its roamers'
    credentials; the time the host's service starts."""
    closed, creds = close_epoch_zero(core, [HOST, ROAMER, OTHER])
    alloc = closed.allocation
    assert set(alloc.included) == {HOST.node_id, ROAMER.node_id, OTHER.node_id}
    owed = alloc.contribution_of(HOST.node_id) or 0
    assert owed > 0
    start = T0 + 61
    host = Host(HOST, kind="wlan_coverage", location=0, coordinator_key=COORDINATOR.public_key)
    host.open_epoch(epoch=0, included=alloc.included, opened=owed, now=start, owed=owed)
    return host, creds, start


def drained(core: EpochCore) -> tuple[Host, Envelope, int]:
    """ROAMER takes all the host has, then is refused for capacity: the refusal it keeps."""
    host, creds, at = epoch_zero_closed(core)
    big = make_access_request(ROAMER, creds[ROAMER.node_id], host_id=HOST.node_id,
                              amount=10**12, now=at)
    assert host.access(big.to_bytes(), now=at).granted
    again = make_access_request(ROAMER, creds[ROAMER.node_id], host_id=HOST.node_id,
                                amount=1, now=at + 1)
    refusal = host.access(again.to_bytes(), now=at + 1).refusal
    assert refusal is not None
    return host, refusal, at


def cut_off(core: EpochCore, now: int) -> set[str]:
    """Open epoch 1 (if not yet) and begin its close at ``now``: who the audit of epoch 0
    finds unjustified."""
    if core.epoch == 0:
        fees, q = runner().announcement_terms()
        core.apply(core.plan_open(now - 2 * W - 10, fees=fees, q=q))
    plan = core.begin_close(now)
    return {x.node_id for x in plan.exclusions if x.reason == UNJUSTIFIED_REFUSAL}


def file(core: EpochCore, who: Identity, items: list[Envelope], now: int) -> None:
    core.apply(core.check_audit(who.node_id, audit_report(who, items), now=now))


def new_core(rebuttal: int = W) -> EpochCore:
    return EpochCore(identity=COORDINATOR,
                     settings=dataclasses.replace(settings(runner()), rebuttal_seconds=rebuttal))


def test_a_refusal_filed_at_the_last_moment_does_not_beat_the_hosts_ledger() -> None:
    core = new_core()
    _, refusal, at = drained(core)
    cutoff = at + 1000
    file(core, ROAMER, [refusal], now=cutoff - 1)  # the host has had no time to answer
    assert HOST.node_id not in cut_off(core, cutoff)


def test_without_a_window_the_same_late_refusal_would_frame_the_host() -> None:
    # What the window prevents: judged with no rebuttal window, the host is excluded.
    core = new_core(rebuttal=0)
    _, refusal, at = drained(core)
    cutoff = at + 1000
    file(core, ROAMER, [refusal], now=cutoff - 1)
    assert HOST.node_id in cut_off(core, cutoff)


def test_a_refusal_filed_in_time_is_judged_and_the_ledger_filed_in_the_window_rebuts_it(
) -> None:
    core = new_core()
    host, refusal, at = drained(core)
    cutoff = at + 1000
    file(core, ROAMER, [refusal], now=cutoff - W)  # in time: it is judged ...
    file(core, HOST, host.unfiled(0), now=cutoff - 1)  # ... and the late ledger answers it
    assert HOST.node_id not in cut_off(core, cutoff)


def test_a_host_that_lets_its_window_pass_stands_accused() -> None:
    core = new_core()
    _, refusal, at = drained(core)
    cutoff = at + 1000
    file(core, ROAMER, [refusal], now=cutoff - W)  # the host never files its ledger
    assert HOST.node_id in cut_off(core, cutoff)


def test_the_first_filing_dates_an_accusation_and_a_refiling_cannot_move_it() -> None:
    core = new_core()
    _, refusal, at = drained(core)
    cutoff = at + 1000
    file(core, ROAMER, [refusal], now=cutoff - 1)
    file(core, OTHER, [refusal], now=cutoff - 1)  # the same refusal again: one item
    assert core.audit is not None and len(core.audit.evidence) == 1
    assert HOST.node_id not in cut_off(core, cutoff)


def test_the_filing_time_survives_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    core = new_core()
    apply = core.apply

    def persisted(change: object) -> None:
        store.persist(change)  # type: ignore[arg-type]
        apply(change)  # type: ignore[arg-type]

    core.apply = persisted  # type: ignore[method-assign]
    _, refusal, at = drained(core)
    cutoff = at + 1000
    fees, q = runner().announcement_terms()
    core.apply(core.plan_open(cutoff - 2 * W - 10, fees=fees, q=q))
    file(core, ROAMER, [refusal], now=cutoff - 1)
    back = EpochCore.restore(store.snapshot(COORDINATOR.public_key), identity=COORDINATOR,
                             settings=core.settings)
    store.close()
    assert back.audit is not None and list(back.audit.received.values()) == [cutoff - 1]
    assert HOST.node_id not in cut_off(back, cutoff)
    again = Store(tmp_path / "c.db")
    later = EpochCore.restore(again.snapshot(COORDINATOR.public_key), identity=COORDINATOR,
                              settings=core.settings)
    again.close()
    assert HOST.node_id in cut_off(later, cutoff + W)  # judged once the window has passed
