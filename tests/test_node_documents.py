"""Epoch documents shared by the nodes of one process (``node.client.SharedDocuments``).

Every node needs the same signed allocation and directory of an epoch; the nodes of one
process fetch, verify and parse each once. What must hold: the nodes behave exactly as
with a document each; concurrent askers wait for one load; a failed load (the epoch not
closed yet, a bad signature) is never kept; a client trusting another key never reads a
value checked against this one; at most ``max_entries`` documents are kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers.memnet import MemoryNet
from helpers.node import NOW, BedNode, FakeClock, ScriptedCoordinator, ident, node_bed, step_all

from node.client import CoordinatorClient, SharedDocuments
from protocol.errors import InkindError, UnknownEpochError

SPECS = [
    BedNode(seed=31, location=0, kind="wlan_coverage", theta=600_000, script=(1,)),
    BedNode(seed=32, location=1, kind="wlan_coverage", theta=500_000, script=(0,)),
    BedNode(seed=33, location=1, kind="wlan_channels", theta=800_000, script=(0,)),
]


async def play_one_epoch(clock: FakeClock, documents: SharedDocuments | None) -> tuple[
        ScriptedCoordinator, dict[int, list[str]], list[frozenset[str]]]:
    """One epoch of :data:`SPECS`: what each node's roaming got, and its host's set."""
    async with node_bed(SPECS, clock, documents=documents) as (fake, agents):
        await step_all(agents)
        fake.open(1, deadline=NOW + 60)
        assert await step_all(agents) == ["declared"] * 3
        assert await step_all(agents) == ["waiting"] * 3  # not closed: nothing is kept
        clock.now = NOW + 60
        fake.close(1)
        assert await step_all(agents) == ["provided"] * 3
        assert await step_all(agents) == ["roamed"] * 3
        reasons = {i: [a.reason for a in agent.history[1].answers]
                   for i, agent in enumerate(agents)}
        return fake, reasons, [agent.host.included for agent in agents]


@pytest.mark.asyncio
async def test_nodes_of_one_process_fetch_each_epoch_document_once(clock: FakeClock) -> None:
    fake, shared, sets = await play_one_epoch(clock, SharedDocuments())
    # Asked before the close by all three (unknown_epoch, not kept), then once.
    assert fake.gets["/v1/allocation/1"] == 3 + 1
    assert fake.gets["/v1/directory/1"] == 1
    assert sets[0] is sets[1] is sets[2]  # one included set, not a copy per host
    clock.now = NOW
    fake_alone, alone, _ = await play_one_epoch(clock, None)
    assert fake_alone.gets["/v1/allocation/1"] == 3 + 3
    assert fake_alone.gets["/v1/directory/1"] == 3
    assert shared == alone and any("granted" in r for r in shared.values())


@pytest.mark.asyncio
async def test_concurrent_asks_wait_for_one_load_and_a_failure_is_not_kept() -> None:
    docs = SharedDocuments()
    gate = asyncio.Event()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise UnknownEpochError("not closed")

    waiters = [asyncio.ensure_future(docs.get("k", failing)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert calls == 1 and all(isinstance(r, UnknownEpochError) for r in results)

    async def loaded() -> int:
        nonlocal calls
        calls += 1
        return 7

    assert await docs.get("k", loaded) == 7  # loaded again: the failure was not kept
    assert await docs.get("k", loaded) == 7
    assert calls == 2 and docs.loads == 2


@pytest.mark.asyncio
async def test_a_cancelled_asker_does_not_cancel_the_load_others_wait_for() -> None:
    docs = SharedDocuments()
    gate = asyncio.Event()

    async def load() -> str:
        await gate.wait()
        return "doc"

    first = asyncio.ensure_future(docs.get("k", load))
    second = asyncio.ensure_future(docs.get("k", load))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == "doc"
    assert first.cancelled() and docs.loads == 1


@pytest.mark.asyncio
async def test_only_the_last_max_entries_documents_are_kept() -> None:
    docs = SharedDocuments(max_entries=2)

    def value(v: int) -> Callable[[], Awaitable[int]]:
        async def load() -> int:
            return v
        return load

    for key in range(3):
        assert await docs.get(key, value(key)) == key
    assert await docs.get(2, value(-1)) == 2  # kept
    assert await docs.get(0, value(-1)) == -1  # dropped, loaded again
    assert docs.loads == 4
    with pytest.raises(ValueError):
        SharedDocuments(max_entries=0)


@pytest.mark.asyncio
async def test_a_client_trusting_another_key_never_reads_a_shared_document(
    net: MemoryNet, clock: FakeClock
) -> None:
    fake = ScriptedCoordinator(ident(90), clock=clock)
    url = f"http://{await net.serve(fake.app())}"
    fake.open(1, deadline=NOW + 60)
    fake.close(1)
    docs = SharedDocuments()
    async with net.session() as session:
        right = CoordinatorClient(session, url, coordinator_key=ident(90).public_key,
                                  documents=docs)
        wrong = CoordinatorClient(session, url, coordinator_key=ident(91).public_key,
                                  documents=docs)
        assert (await right.allocation(1)).epoch == 1
        with pytest.raises(InkindError):
            await wrong.allocation(1)
        with pytest.raises(InkindError):  # and the refusal is not kept either
            await wrong.allocation(1)
        assert fake.gets["/v1/allocation/1"] == 3
        assert (await right.outcome(1)).included == frozenset()


@pytest.mark.asyncio
async def test_the_same_announcement_bytes_are_verified_once_per_process(
    net: MemoryNet, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.client as client_module

    opened = 0
    real = client_module.open_embedded

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(client_module, "open_embedded", counting)
    fake = ScriptedCoordinator(ident(90), clock=clock)
    url = f"http://{await net.serve(fake.app())}"
    fake.open(1, deadline=NOW + 60)
    docs = SharedDocuments()
    async with net.session() as session:
        clients = [CoordinatorClient(session, url, coordinator_key=ident(90).public_key,
                                     documents=docs) for _ in range(3)]
        for c in clients:
            assert (await c.announcement())[1].epoch == 1
        assert opened == 1
        fake.open(2, deadline=NOW + 120)  # new bytes: verified again
        assert [(await c.announcement())[1].epoch for c in clients] == [2, 2, 2]
        assert opened == 2
        stranger = CoordinatorClient(session, url, coordinator_key=ident(91).public_key,
                                     documents=docs)
        with pytest.raises(InkindError):  # same bytes, another trusted key: refused
            await stranger.announcement()
        with pytest.raises(InkindError):  # and the refusal was not remembered as a value
            await stranger.announcement()
        assert opened == 4
