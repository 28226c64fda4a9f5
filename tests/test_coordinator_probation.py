"""Probation of new keys (README "Probation"; hole H2, whitewashing).

A key is included (and owes its contribution) from its first declaration, but gets a
credential only once the audit of an epoch in which it owed a positive amount found no
offence by it, except in the founding epoch, when nobody can have delivered yet. The
core is driven with time passed in; the shell (credential endpoint, directory, status)
and a restart through the store are checked too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers.coordinator import (
    COORDINATOR,
    EPOCH_SECONDS,
    T0,
    Harness,
    access_request,
    commitment,
    config,
    declaration,
    node,
    open_now,
    raw,
    refusal,
    registration,
    runner,
    settings,
)
from helpers.coordinator import audit_report as report_of
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from coordinator.config import CoordinatorConfig
from coordinator.decision import Decision, Participant
from coordinator.enforcement import NO_COMMITMENT, UNJUSTIFIED_REFUSAL
from coordinator.epoch import FOUNDING_EPOCH, Closed, EpochCore
from coordinator.store import Store
from protocol import Complaint, Identity, InkindError

HIGH, LOW = 950_000, 10_000  # a declared θ the posted fee includes, and one it does not


def core_with(*, store: Store | None = None, **changes: Any) -> EpochCore:
    core = EpochCore(identity=COORDINATOR,
                     settings=dataclasses.replace(settings(runner()), **changes))
    return core if store is None else persisting(core, store)


def persisting(core: EpochCore, store: Store) -> EpochCore:
    """``core`` with every applied change persisted first (as the shell does)."""
    apply = core.apply

    def persisted(change: Any) -> None:
        store.persist(change)
        apply(change)

    core.apply = persisted  # type: ignore[method-assign]
    return core


def register(core: EpochCore, people: Sequence[Identity]) -> None:
    for p in people:
        reg = registration(p)
        change = core.check_registration(reg, raw(p, reg), now=T0)
        if change is not None:
            core.apply(change)


Run = Callable[[Sequence[Participant]], Decision]


def play(core: EpochCore, e: int, thetas: dict[Identity, int], *,
         delivers: Callable[[Identity], bool] = lambda _: True,
         run: Run | None = None) -> Closed:
    """Open epoch ``e``, declare ``thetas``, close it; then every included node that
    ``delivers`` commits what it owes (the others commit nothing)."""
    now = T0 + 2 * e * EPOCH_SECONDS
    open_now(core, now)
    for p, theta in thetas.items():
        d = declaration(p, epoch=e, theta=theta)
        core.apply(core.check_declaration(d, raw(p, d), now + 1))
    closed = core.close(now + EPOCH_SECONDS, run or runner().run)
    for p in thetas:
        owed = closed.allocation.owed_of(p.node_id)
        if owed is not None and delivers(p):
            c = commitment(p, epoch=e, amount=owed)
            core.apply(core.check_commitment(c, raw(p, c)))
    return closed


def credentialled(closed: Closed) -> set[str]:
    return {c.credential.node_id for c in closed.credentials}


def on_probation(closed: Closed) -> set[str]:
    return {n for n, _ in closed.probation}


PEOPLE = [node(i) for i in range(4)]
NEW = node(10)  # a key that joins after the founding epoch


def test_founding_epoch_credentials_every_included_key_and_establishes_none() -> None:
    core = core_with()
    register(core, PEOPLE)
    c0 = play(core, FOUNDING_EPOCH, dict.fromkeys(PEOPLE, HIGH))
    assert credentialled(c0) == set(c0.allocation.included) == {p.node_id for p in PEOPLE}
    assert c0.probation == () and c0.delivered == ()
    assert not any(core.established(p.node_id) for p in PEOPLE)  # nothing audited yet


def test_a_new_key_owes_but_roams_only_after_an_audit_found_it_delivering() -> None:
    core = core_with()
    register(core, PEOPLE)
    play(core, 0, dict.fromkeys(PEOPLE, HIGH))
    register(core, [NEW])
    c1 = play(core, 1, dict.fromkeys([*PEOPLE, NEW], HIGH))
    # included, owing its contribution, listed as a host, but no credential
    assert NEW.node_id in c1.allocation.included
    assert (c1.allocation.owed_of(NEW.node_id) or 0) > 0
    assert NEW.node_id not in credentialled(c1) and on_probation(c1) == {NEW.node_id}
    # the founders delivered in epoch 0: established at this cut-off, credentialled
    assert credentialled(c1) == {p.node_id for p in PEOPLE}
    assert core.audit is not None and NEW.node_id in core.audit.members
    assert NEW.node_id not in core.audit.windows
    # no host owed it service, so it has nothing to complain about
    t = T0 + 3 * EPOCH_SECONDS
    c = Complaint(epoch=1, requester_id=NEW.node_id, host_id=PEOPLE[1].node_id,
                  request=access_request(PEOPLE[1], NEW, epoch=1, issued=t, amount=1))
    with pytest.raises(InkindError) as info:
        core.check_complaint(c, raw(NEW, c), now=t, credential_digest=None)
    assert info.value.code == "probation"
    c2 = play(core, 2, dict.fromkeys([*PEOPLE, NEW], HIGH))
    assert NEW.node_id in credentialled(c2) and c2.probation == ()
    assert core.deliveries[NEW.node_id].last_epoch == 1
    assert core.established(NEW.node_id) and core.n_established == len(PEOPLE) + 1


def test_a_stockpiled_key_that_declared_low_in_the_founding_epoch_is_not_established() -> None:
    core = core_with()
    register(core, [*PEOPLE, NEW])  # registered at start-up, like everyone
    c0 = play(core, 0, {**dict.fromkeys(PEOPLE, HIGH), NEW: LOW})
    assert NEW.node_id not in c0.allocation.included  # owed nothing, proved nothing
    c1 = play(core, 1, dict.fromkeys([*PEOPLE, NEW], HIGH), delivers=lambda p: p != NEW)
    assert NEW.node_id in c1.allocation.included and on_probation(c1) == {NEW.node_id}
    # it withheld in its probation epoch: caught, excluded, still not established
    c2 = play(core, 2, dict.fromkeys([*PEOPLE, NEW], HIGH))
    assert [(x.node_id, x.reason) for x in c2.exclusions] == [(NEW.node_id, NO_COMMITMENT)]
    assert not core.established(NEW.node_id) and NEW.node_id not in c2.allocation.included


def zero_for(who: Identity) -> Run:
    """The posted fee's decision with ``who``'s contribution set to 0 (as a mechanism
    that includes a low type for free would)."""

    def run(participants: Sequence[Participant]) -> Decision:
        d = runner().run(participants)
        return dataclasses.replace(d, contributions=tuple(
            0 if n == who.node_id else c for n, c in zip(d.included, d.contributions,
                                                          strict=True)))

    return run


def test_a_key_included_for_free_proves_nothing() -> None:
    core = core_with()
    register(core, [*PEOPLE, NEW])
    c0 = play(core, 0, dict.fromkeys([*PEOPLE, NEW], HIGH), run=zero_for(NEW))
    assert NEW.node_id in credentialled(c0)  # founding epoch: everyone included roams
    assert c0.allocation.owed_of(NEW.node_id) == 0
    c1 = play(core, 1, dict.fromkeys([*PEOPLE, NEW], HIGH), run=zero_for(NEW))
    assert on_probation(c1) == {NEW.node_id}  # owing nothing in 0 established nothing
    c2 = play(core, 2, dict.fromkeys([*PEOPLE, NEW], HIGH), run=zero_for(NEW))
    assert on_probation(c2) == {NEW.node_id}  # nor in 1


def test_an_established_key_caught_free_riding_stays_established() -> None:
    # The documented rule: establishment is about a key's newness; an offence is priced
    # by graded exclusion and restitution, so the readmitted key roams (owing its debt).
    core = core_with()
    rider = PEOPLE[0]
    register(core, PEOPLE)
    play(core, 0, dict.fromkeys(PEOPLE, HIGH))
    play(core, 1, dict.fromkeys(PEOPLE, HIGH), delivers=lambda p: p != rider)
    assert core.established(rider.node_id)  # delivered in epoch 0
    c2 = play(core, 2, dict.fromkeys(PEOPLE, HIGH))
    assert [(x.node_id, x.reason) for x in c2.exclusions] == [(rider.node_id, NO_COMMITMENT)]
    assert core.deliveries[rider.node_id].delivered == 1  # epoch 1 did not count
    e = 3
    while rider.node_id not in (c := play(core, e, dict.fromkeys(PEOPLE, HIGH))
                                ).allocation.included:
        e += 1
    assert rider.node_id in credentialled(c) and (c.allocation.debt_of(rider.node_id) or 0) > 0


def test_a_host_on_probation_is_judged_like_any_included_host() -> None:
    core = core_with()
    register(core, [*PEOPLE, NEW])
    play(core, 0, dict.fromkeys(PEOPLE, HIGH))
    c1 = play(core, 1, dict.fromkeys([*PEOPLE, NEW], HIGH))
    assert on_probation(c1) == {NEW.node_id}
    # the new host refuses a credentialled roamer for no good reason: the refusal is
    # stored although the host has no credential window of its own, and judged
    roamer = PEOPLE[1]
    t = T0 + 3 * EPOCH_SECONDS
    bad = refusal(NEW, roamer, epoch=1, reason="not_included", time=t)
    change = core.check_audit(roamer.node_id, report_of(roamer, [bad], epoch=1), now=t)
    assert len(change.new_items) == 1
    core.apply(change)
    c2 = play(core, 2, dict.fromkeys([*PEOPLE, NEW], HIGH))
    assert (NEW.node_id, UNJUSTIFIED_REFUSAL) in {(x.node_id, x.reason) for x in c2.exclusions}
    assert not core.established(NEW.node_id)


def test_probation_can_ask_for_more_epochs_or_be_switched_off() -> None:
    off = core_with(probation_epochs=0)
    register(off, PEOPLE)
    play(off, 0, dict.fromkeys(PEOPLE, HIGH))
    register(off, [NEW])
    c1 = play(off, 1, dict.fromkeys([*PEOPLE, NEW], HIGH))
    assert NEW.node_id in credentialled(c1) and c1.probation == ()

    two = core_with(probation_epochs=2)
    register(two, PEOPLE)
    play(two, 0, dict.fromkeys(PEOPLE, HIGH))
    c1 = play(two, 1, dict.fromkeys(PEOPLE, HIGH))
    assert on_probation(c1) == {p.node_id for p in PEOPLE}  # one delivering epoch so far
    c2 = play(two, 2, dict.fromkeys(PEOPLE, HIGH))
    assert credentialled(c2) == {p.node_id for p in PEOPLE}


def test_the_established_set_survives_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    core = core_with(store=store)
    register(core, [*PEOPLE, NEW])
    play(core, 0, dict.fromkeys(PEOPLE, HIGH))
    c1 = play(core, 1, dict.fromkeys([*PEOPLE, NEW], HIGH))
    assert on_probation(c1) == {NEW.node_id}
    assert store.on_probation(1, NEW.node_id) and not store.on_probation(1, PEOPLE[0].node_id)
    assert {r["node_id"] for r in store.directory(1)} == {p.node_id for p in [*PEOPLE, NEW]}
    back = persisting(EpochCore.restore(store.snapshot(COORDINATOR.public_key),
                                        identity=COORDINATOR, settings=core.settings), store)
    assert back.deliveries == core.deliveries and len(back.deliveries) == len(PEOPLE)
    assert back.audit is not None and NEW.node_id in back.audit.members
    # the restarted core carries on: NEW delivered in 1, so it roams in 2
    c2 = play(back, 2, dict.fromkeys([*PEOPLE, NEW], HIGH))
    assert NEW.node_id in credentialled(c2)
    assert store.count("deliveries") == len(PEOPLE) + 1  # one row per node, NEW's now too
    again = EpochCore.restore(store.snapshot(COORDINATOR.public_key), identity=COORDINATOR,
                              settings=core.settings)
    assert again.deliveries == back.deliveries
    store.close()


@settings_(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=4),
       st.integers(0, 2))
def test_after_the_founding_epoch_a_key_roams_iff_it_delivered_before(
        pattern: list[tuple[bool, bool]], joins: int) -> None:
    # A key that joins in epoch `joins` and then each epoch declares high or low and
    # delivers or withholds: in every epoch after the founding one in which it is
    # included, it holds a credential exactly when some earlier epoch charged it a
    # positive amount and it delivered it (that epoch's audit has run by then).
    core = core_with()
    register(core, PEOPLE)
    delivered: list[int] = []  # epochs in which it owed > 0 and delivered
    for e in range(joins + len(pattern)):
        thetas = dict.fromkeys(PEOPLE, HIGH)
        mine = e - joins
        if mine >= 0:
            register(core, [NEW])
            thetas[NEW] = HIGH if pattern[mine][0] else LOW
        gives = mine >= 0 and pattern[mine][1]
        closed = play(core, e, thetas, delivers=lambda p, g=gives: p != NEW or g)
        if NEW.node_id in closed.allocation.included and e != FOUNDING_EPOCH:
            assert (NEW.node_id in credentialled(closed)) == bool(delivered), (e, delivered)
            assert (NEW.node_id in on_probation(closed)) == (not delivered)
        if (closed.allocation.owed_of(NEW.node_id) or 0) > 0 and gives:
            delivered.append(e)


def test_config_and_cli_take_probation_epochs() -> None:
    from coordinator.cli import build_parser
    assert CoordinatorConfig(market=config().market).probation_epochs == 1
    with pytest.raises(ValueError, match="probation_epochs"):
        config(probation_epochs=-1)
    args = build_parser().parse_args(["--spec", "x.toml", "--probation-epochs", "0"])
    assert args.probation_epochs == 0


@pytest.mark.asyncio
async def test_the_service_says_probation_lists_the_host_and_counts_it(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer
    from helpers.clock import FakeClock

    from coordinator.service import make_app

    store = Store(tmp_path / "coord.db")
    clock = FakeClock()
    app = make_app(config(), store=store, identity=COORDINATOR, clock=clock, runner=runner())
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        h = Harness(client=client, store=store, clock=clock)
        for i, p in enumerate([*PEOPLE, NEW]):
            await h.ok("/v1/register", raw(p, registration(p, endpoint=f"127.0.0.1:{9000 + i}")))
        for e, who in ((0, PEOPLE), (1, [*PEOPLE, NEW])):
            clock.now = T0 + 2 * e * EPOCH_SECONDS
            await h.ok("/v1/admin/open", admin=True)
            for p in who:
                await h.ok("/v1/declarations", raw(p, declaration(p, epoch=e, theta=HIGH)))
            clock.now += EPOCH_SECONDS
            await h.ok("/v1/admin/close", admin=True)
            for p in who:
                status, body = await h.get(f"/v1/credential/{e}/{p.node_id}")
                if status == 200:
                    owed = int(store._db.execute(
                        "SELECT contribution FROM credentials WHERE epoch = ? AND node_id = ?",
                        (e, p.node_id)).fetchone()[0])
                    await h.ok("/v1/commitments", raw(p, commitment(p, epoch=e, amount=owed)))
        status, body = await h.get(f"/v1/credential/1/{NEW.node_id}")
        assert status == 403 and b'"probation"' in body and b"delivering" in body
        status, body = await h.get(f"/v1/credential/1/{node(20).node_id}")
        assert status == 403 and b'"not_included"' in body
        status, body = await h.get("/v1/directory/1")
        assert NEW.node_id.encode() in body
        _, st_body = await h.get("/v1/status")
        import json
        counts = json.loads(st_body)["counts"]
        assert counts["probation"] == 1 and counts["established"] == len(PEOPLE)
    store.close()


def test_the_audit_period_must_leave_room_for_the_rebuttal_window(
        capsys: pytest.CaptureFixture[str]) -> None:
    # With the schedule, the cut-off of epoch e comes epoch + pause seconds after e's
    # close: no longer than the rebuttal window, and no refusal of e is ever judged.
    with pytest.raises(ValueError, match="rebuttal window"):
        config(auto_schedule=True, epoch_seconds=30, pause_seconds=5, rebuttal_seconds=60)
    with pytest.raises(ValueError, match="rebuttal window"):
        config(auto_schedule=True, epoch_seconds=55, pause_seconds=5, rebuttal_seconds=60)
    assert config(auto_schedule=True, epoch_seconds=56, pause_seconds=5,
                  rebuttal_seconds=60).rebuttal_seconds == 60
    # epochs driven by hand (admin open/close) have no configured length to check
    assert not config(auto_schedule=False, epoch_seconds=1, rebuttal_seconds=60).auto_schedule
    from coordinator.cli import main
    spec = Path(__file__).resolve().parent.parent / "scripts" / "specs" / "three-towns.toml"
    assert main(["--spec", str(spec), "--epoch-seconds", "30", "--port", "0"]) == 2
    assert "rebuttal" in capsys.readouterr().err
