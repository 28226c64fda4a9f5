"""The node's epoch pump, several nodes in one event loop: against a scripted coordinator
(exact allocations) and against the coordinator's own app.

The scripted coordinator (``helpers.node.ScriptedCoordinator``) signs its announcement,
allocation and credentials with a test identity and the tests open and close its epochs;
the coordinator's own app (``helpers.coordinator.coordinator_on``) is opened and closed
through its admin endpoints. Each agent is driven with ``run_epoch_step`` on a fake clock,
over an in-memory network: nothing waits on time and no socket is opened (but in the test
of ``start_node``'s TCP binding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.coordinator import ADMIN, COORDINATOR, coordinator_on
from helpers.memnet import MemoryNet
from helpers.node import NOW, BedNode, FakeClock, ScriptedCoordinator, ident, node_bed, step_all

from node.agent import DEFAULT_ROAM_AMOUNT, NodeSpec
from node.client import PeerClient
from node.epoch import Action
from node.launch import start_node
from node.service import start_site
from protocol import (
    MICRO,
    AccessBody,
    AccessRequest,
    GrantReceipt,
    Refusal,
    credential_digest,
    open_embedded,
    seal,
)
from protocol.messages import roamer_share


@pytest.mark.asyncio
async def test_one_epoch_end_to_end_with_a_free_rider_and_a_misreporter(clock: FakeClock) -> None:
    specs = [
        BedNode(seed=11, location=0, kind="wlan_coverage", theta=600_000, script=(1, 2)),
        BedNode(
            seed=12,
            location=1,
            kind="wlan_coverage",
            theta=500_000,
            strategy="free-ride",
            script=(0,),
        ),
        BedNode(
            seed=13,
            location=2,
            kind="wlan_channels",
            theta=800_000,
            strategy="misreport:0.5",
            script=(0, 1),
        ),
    ]
    async with node_bed(specs, clock) as (fake, agents):
        a, b, c = agents
        assert await step_all(agents) == ["registered"] * 3
        assert fake.registrations[a.node_id].endpoint == a.endpoint
        assert await step_all(agents) == ["waiting"] * 3  # no epoch yet

        fake.open(1, deadline=NOW + 60, locations=3)
        assert await step_all(agents) == ["declared"] * 3
        thetas = {n: d.theta for n, d in fake.declarations[1].items()}
        assert thetas == {a.node_id: 600_000, b.node_id: 500_000, c.node_id: 400_000}
        assert await step_all(agents) == ["waiting"] * 3  # not closed yet

        clock.now = NOW + 60
        fake.close(1, owed={a.node_id: 2 * MICRO, c.node_id: MICRO})
        assert await step_all(agents) == ["provided"] * 3
        assert set(fake.commitments[1]) == {a.node_id, c.node_id}  # the free rider sends none
        assert fake.commitments[1][a.node_id].contribution == 2 * MICRO
        assert (a.host.resource.opened, b.host.resource.opened, c.host.resource.opened) == (
            2 * MICRO,
            0,
            MICRO,
        )

        assert await step_all(agents) == ["roamed"] * 3
        reasons = {
            agent.node_id: [answer.reason for answer in agent.history[1].answers]
            for agent in agents
        }
        assert reasons == {
            a.node_id: ["capacity_exhausted", "granted"],  # the free rider refuses, C grants
            b.node_id: ["granted"],
            c.node_id: ["granted", "capacity_exhausted"],
        }
        assert a.host.resource.remaining(clock.now) == 2 * MICRO - 2 * DEFAULT_ROAM_AMOUNT

        assert await step_all(agents) == ["reported"] * 3
        assert len(fake.audits) == 3
        for report in fake.audits:
            for env in report.evidence:
                item: GrantReceipt | Refusal
                if env.type == "grant_receipt":
                    _, item = open_embedded(env, GrantReceipt, trusted=env.signer)
                else:
                    _, item = open_embedded(env, Refusal, trusted=env.signer)
                # A node reports what it got as a roamer and, as a host, its own ledger.
                own_ledger = env.type == "grant_receipt" and item.host_id == report.reporter_id
                assert item.epoch == 1 and (item.requester_id == report.reporter_id or own_ledger)
        refusals = [
            env for report in fake.audits for env in report.evidence if env.type == "refusal"
        ]
        b_key = fake.registrations[b.node_id].public_key
        assert len(refusals) == 2 and all(env.signer == b_key for env in refusals)

        assert await step_all(agents) == ["waiting"] * 3
        fake.open(2, deadline=NOW + 200, locations=3)
        assert await step_all(agents) == ["declared"] * 3


@pytest.mark.asyncio
async def test_files_and_compute_hosts_serve_roamers(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "paper.pdf").write_bytes(b"%PDF" + bytes(range(256)) * 4)
    specs = [
        BedNode(seed=21, location=0, kind="files", theta=700_000, files_dir=tmp_path, script=(1,)),
        BedNode(seed=22, location=1, kind="compute", theta=700_000, script=(0,)),
    ]
    async with node_bed(specs, clock, trust_on_first_use=True) as (fake, agents):
        files_node, compute_node = agents
        await step_all(agents)
        fake.open(1, deadline=NOW + 60)
        assert await step_all(agents) == ["declared"] * 2
        # Trusted on first use: the hosts now enforce credentials of that coordinator.
        assert files_node.host.coordinator_key == fake.identity.public_key
        clock.now = NOW + 60
        fake.close(1, owed={files_node.node_id: 2000, compute_node.node_id: 3 * MICRO})
        assert await step_all(agents) == ["provided"] * 2
        assert compute_node.host.shares == {
            files_node.node_id: 2000,
            compute_node.node_id: 3 * MICRO,
        }
        assert await step_all(agents) == ["roamed"] * 2
        (download,) = compute_node.history[1].answers
        assert download.granted and download.receipt is not None
        assert download.receipt.amount == 4 + 1024
        (job,) = files_node.history[1].answers
        # The files node contributed 2000 micro-units, so its compute share is 2000.
        assert job.granted and job.receipt is not None and job.receipt.amount == 2000
        assert await step_all(agents) == ["reported"] * 2


@pytest.mark.asyncio
async def test_an_excluded_node_gets_no_credential_opens_nothing_and_is_refused(
    clock: FakeClock,
) -> None:
    specs = [
        BedNode(seed=31, location=0, kind="wlan_coverage", theta=600_000),
        BedNode(seed=32, location=1, kind="wlan_coverage", theta=0, script=(0,)),
    ]
    async with node_bed(specs, clock) as (fake, agents):
        host, outsider = agents
        await step_all(agents)
        fake.open(1, deadline=NOW + 60)
        await step_all(agents)
        fake.close(1)  # θ = 0 is not included
        assert await step_all(agents) == ["provided"] * 2
        assert outsider.history[1].owed is None and outsider.history[1].credential is None
        assert outsider.host.resource.opened == 0
        assert outsider.node_id not in fake.commitments.get(1, {})
        assert await step_all(agents) == ["roamed"] * 2
        assert outsider.history[1].answers == []  # nothing to present
        # With someone else's credential it is refused: the proof of possession fails.
        entry = fake.registrations[host.node_id]
        assert entry.endpoint is not None
        cred = fake.credentials[(1, host.node_id)]
        assert host.history[1].directory is None  # it did not roam: never fetched
        directory = await host.directory()
        # The reference builder will not even sign with another's credential ...
        assert await outsider.ask(directory.by_id()[host.node_id], cred) is None
        # ... and a request signed anyway, presented beside it, fails at the host.
        forged = seal(outsider.identity, AccessRequest(
            credential_digest=credential_digest(cred), host_id=host.node_id, epoch=1,
            issued=clock.now, nonce="cd" * 16, amount=MICRO))
        answer = await outsider.peers.access(f"http://{entry.endpoint}",
                                             AccessBody(request=forged, credential=cred))
        assert answer.reason == "bad_proof"
        assert host.host.resource.remaining(clock.now) == MICRO


@pytest.mark.asyncio
async def test_a_committing_free_rider_claims_what_it_owes_but_opens_nothing(
    clock: FakeClock,
) -> None:
    specs = [
        BedNode(
            seed=41, location=0, kind="wlan_coverage", theta=500_000, strategy="free-ride:commit"
        )
    ]
    async with node_bed(specs, clock) as (fake, agents):
        (agent,) = agents
        await step_all(agents)
        fake.open(1, deadline=NOW + 60)
        await step_all(agents)
        fake.close(1, owed={agent.node_id: 3 * MICRO // 2})
        assert await step_all(agents) == ["provided"]
        assert fake.commitments[1][agent.node_id].contribution == 3 * MICRO // 2
        assert agent.host.resource.opened == 0


@pytest.mark.asyncio
async def test_an_unreachable_coordinator_is_an_error_step_not_a_crash(
    net: MemoryNet, clock: FakeClock
) -> None:
    spec = NodeSpec(
        coordinator="http://127.0.0.1:9",  # nothing listens there
        location=0,
        kind="wlan_coverage",
        capacity=1,
        theta=1,
        coordinator_key=ident(90).public_key,
    )
    async with net.session() as session:
        node = await start_node(spec, ident(51), session, clock=clock, serve=net.start_site)
        assert await node.agent.run_epoch_step() == "error"
        assert not node.agent.registered
        assert node.agent.machine.next_action(clock()) is Action.REGISTER  # tried again next


@pytest.mark.asyncio
async def test_a_declaration_refused_as_late_is_not_retried() -> None:
    node_clock, coord_clock = FakeClock(), FakeClock()
    coord_clock.now = NOW + 100  # the coordinator's clock is ahead of the node's
    lone = [BedNode(seed=61, location=0, kind="wlan_coverage", theta=1)]
    async with node_bed(lone, node_clock) as (fake, agents):
        fake.clock = coord_clock
        (agent,) = agents
        await agent.run_epoch_step()
        fake.open(1, deadline=NOW + 60)
        assert await agent.run_epoch_step() == "declared"
        assert agent.history[1].declaration_refused == "epoch_closed"
        assert fake.declarations[1] == {}
        assert await agent.run_epoch_step() == "waiting"  # no second declaration
        fake.close(1)
        assert await agent.run_epoch_step() == "provided"
        assert agent.history[1].owed is None


@pytest.mark.asyncio
async def test_a_node_joining_late_registers_at_the_current_epoch_and_skips_it(
    clock: FakeClock,
) -> None:
    async with node_bed([BedNode(seed=62, location=0, kind="wlan_coverage", theta=1)], clock) as (
        fake,
        agents,
    ):
        (agent,) = agents
        fake.open(4, deadline=NOW + 60)
        assert await agent.run_epoch_step() == "registered"
        assert fake.registrations[agent.node_id].epoch == 4
        clock.now = NOW + 60  # too late to declare in epoch 4
        assert await agent.run_epoch_step() == "waiting"
        fake.open(5, deadline=NOW + 120)
        assert await agent.run_epoch_step() == "announced"
        assert await agent.run_epoch_step() == "declared"
        assert agent.node_id in fake.declarations[5]


@pytest.mark.asyncio
async def test_start_node_wires_a_node_that_can_be_stepped(
    tmp_path: Path, clock: FakeClock
) -> None:
    (tmp_path / "a.txt").write_bytes(b"shared")
    fake = ScriptedCoordinator(ident(90), clock=clock)
    runner, coord_endpoint = await start_site(fake.app(), port=0)
    try:
        async with aiohttp.ClientSession() as session:
            spec = NodeSpec(
                coordinator=f"http://{coord_endpoint}",
                location=2,
                kind="files",
                capacity=MICRO,
                theta=300_000,
                files_dir=str(tmp_path),
            )
            node = await start_node(spec, ident(71), session, clock=clock)
            try:
                info = node.info()
                assert info["node_id"] == ident(71).node_id and info["kind"] == "files"
                assert await node.agent.run_epoch_step() == "registered"
                assert fake.registrations[node.identity.node_id].endpoint == node.endpoint
                assert len(await PeerClient(session).files(node.url)) == 1
                fake.open(1, deadline=NOW + 60)
                assert await node.agent.run_epoch_step() == "declared"
                # No key configured: the first announcement's signer is trusted from now on.
                assert node.host.coordinator_key == fake.identity.public_key
            finally:
                await node.stop()
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_agents_play_an_epoch_with_the_real_coordinator_in_memory(
    net: MemoryNet, clock: FakeClock, tmp_path: Path
) -> None:
    """The coordinator's own app and four nodes on the in-memory network: register,
    declare, close, provide, roam, report; the coordinator holds every commitment and
    every receipt the roamers reported. Roaming alone: no mystery shoppers (their
    requests are tests/test_shoppers.py's)."""
    async with coordinator_on(net, tmp_path / "coord.db", clock, shoppers_per_host=0
                              ) as url, net.session() as session:
        nodes = []
        for i in range(4):
            spec = NodeSpec(coordinator=url, location=i % 2, kind="wlan_coverage",
                            capacity=2 * MICRO, theta=950_000 - 10_000 * i,
                            coordinator_key=COORDINATOR.public_key, seed=i)
            nodes.append(await start_node(spec, ident(100 + i), session, clock=clock,
                                          serve=net.start_site))
        agents = [n.agent for n in nodes]

        async def admin(action: str) -> dict[str, object]:
            async with session.post(f"{url}/v1/admin/{action}", headers=ADMIN) as resp:
                assert resp.status == 200, await resp.text()
                body: dict[str, object] = await resp.json()
                return body

        async def status() -> dict[str, Any]:
            async with session.get(f"{url}/v1/status") as resp:
                body: dict[str, Any] = await resp.json()
                return body

        assert await step_all(agents) == ["registered"] * 4
        assert await step_all(agents) == ["waiting"] * 4
        assert (await admin("open"))["epoch"] == 0
        assert await step_all(agents) == ["declared"] * 4
        assert await step_all(agents) == ["waiting"] * 4  # not closed yet
        clock.advance(1)
        await admin("close")
        assert await step_all(agents) == ["provided"] * 4
        included = {a.node_id for a in agents if a.history[0].owed is not None}
        assert included == {a.node_id for a in agents}  # high types under the posted fee
        assert all(a.host.epoch == 0 and a.host.resource.opened == 2 * MICRO for a in agents)
        assert await step_all(agents) == ["roamed"] * 4
        answers = [x for a in agents for x in a.history[0].answers]
        assert len(answers) == 4 and all(x.granted for x in answers)
        assert await step_all(agents) == ["reported"] * 4
        counts = (await status())["counts"]
        assert (counts["included"], counts["commitments"], counts["evidence"]) == (4, 4, 4)
        granted = sum(a.host.resource.granted_total for a in agents)
        # Each roamer asked DEFAULT_ROAM_AMOUNT of one host and was granted it, up to its
        # share of what that host owes (protocol.messages.roamer_share).
        by_host = {a.node_id: a for a in agents}
        expected = 0
        for x in answers:
            assert x.receipt is not None
            owed = by_host[x.receipt.host_id].history[0].owed or 0
            expected += min(DEFAULT_ROAM_AMOUNT, roamer_share(owed))
            assert x.receipt.amount == min(DEFAULT_ROAM_AMOUNT, roamer_share(owed))
        assert granted == expected
