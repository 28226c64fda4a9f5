"""The node's HTTP service on 127.0.0.1 ephemeral ports, through the node's own clients.

Each test binds a real aiohttp site (port 0) around a :class:`node.host.Host` with an
injected clock, and talks to it with :class:`node.client.PeerClient` (or raw requests for
malformed input). Every refusal keeps the host's capacity unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from helpers.node import NOW, World

from coordinator.enforcement import refusal_is_legitimate
from node.client import PeerClient, make_access_request
from node.files import FileStore
from node.host import Host
from node.resources import hash_job, job_iterations
from node.service import make_app, start_site
from protocol import MICRO, AccessBody, Identity, InkindError, Refusal, check_refusal
from protocol.errors import NotFoundError
from protocol.session import new_session_key, public_hex


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


@asynccontextmanager
async def serving(host: Host, clock: Clock) -> AsyncIterator[tuple[str, PeerClient]]:
    runner, endpoint = await start_site(make_app(host, clock=clock), port=0)
    try:
        async with aiohttp.ClientSession() as session:
            yield f"http://{endpoint}", PeerClient(session)
    finally:
        await runner.cleanup()


def make_host(w: World, kind: str, opened: int, **kwargs: object) -> Host:
    host = Host(w.host, kind=kind, location=0, coordinator_key=w.coord.public_key, **kwargs)  # type: ignore[arg-type]
    shares = {w.alice.node_id: 2 * MICRO} if kind == "compute" else None
    host.open_epoch(epoch=w.epoch, included=w.included, opened=opened, now=NOW, shares=shares)
    host.revoke([w.carol.node_id])
    return host


async def ask(
    peers: PeerClient,
    url: str,
    w: World,
    who: Identity,
    *,
    amount: int = MICRO,
    resource: str | None = None,
) -> tuple[AccessBody, str]:
    """A fresh body (one round trip: nothing is fetched first) and its nonce."""
    body = make_access_request(
        who,
        w.credential(who),
        host_id=w.host.node_id,
        now=NOW,
        amount=amount,
        resource=resource,
        rng=w.rng,
    )
    return body, str(json.loads(body.request.payload)["nonce"])


@pytest.mark.asyncio
async def test_access_grants_with_a_receipt_then_refuses_a_replay() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "wlan_coverage", 2 * MICRO)
    async with serving(host, clock) as (url, peers):
        request, challenge = await ask(peers, url, w, w.alice)
        answer = await peers.access(url, request, host_key=w.host.public_key)
        assert answer.granted and answer.receipt is not None
        assert answer.receipt.nonce == challenge and answer.receipt.time == NOW
        assert answer.receipt.requester_id == w.alice.node_id
        replay = await peers.access(url, request, host_key=w.host.public_key)
        assert replay.reason == "replay" and replay.refusal is None  # a plain 409, unsigned
        status = await peers.status(url)
        assert status["remaining"] == MICRO and status["grants"] == 1
        assert status["refusals"] == {"replay": 1}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("who", "opened", "reason"),
    [
        ("bob", 2 * MICRO, "not_included"),
        ("carol", 2 * MICRO, "revoked"),
        ("alice", 0, "capacity_exhausted"),  # nothing opened: a free rider's gate
    ],
)
async def test_policy_refusals_are_signed_and_keep_capacity(
    who: str, opened: int, reason: str
) -> None:
    w, clock = World(), Clock()
    host = make_host(w, "wlan_coverage", opened)
    async with serving(host, clock) as (url, peers):
        request, challenge = await ask(peers, url, w, getattr(w, who))
        answer = await peers.access(url, request, host_key=w.host.public_key)
        assert not answer.granted
        assert answer.refusal is not None and answer.refusal.reason == reason
        assert answer.refusal.nonce == challenge
        assert answer.error is not None and answer.error.code == reason
        assert answer.evidence is answer.refusal_envelope
        assert host.resource.remaining(NOW) == opened


@pytest.mark.asyncio
async def test_a_receipt_from_another_key_is_not_accepted() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "wlan_coverage", 2 * MICRO)
    async with serving(host, clock) as (url, peers):
        request, _ = await ask(peers, url, w, w.alice)
        answer = await peers.access(url, request, host_key=w.mallory.public_key)
        assert not answer.granted and answer.reason == "unknown_key"


@pytest.mark.asyncio
async def test_expired_credential_gets_a_plain_error_with_its_status() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "wlan_coverage", 2 * MICRO)
    async with serving(host, clock) as (url, peers):
        request = make_access_request(
            w.alice,
            w.credential(w.alice, not_before=NOW - 7200, expires=NOW - 3600),
            host_id=w.host.node_id,
            now=NOW,
            amount=MICRO,
        )
        answer = await peers.access(url, request)
        assert answer.reason == "expired" and answer.refusal is None
        assert host.resource.remaining(NOW) == 2 * MICRO


@pytest.mark.asyncio
async def test_bad_bodies_and_unknown_paths_get_json_errors() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "wlan_coverage", MICRO)
    async with serving(host, clock) as (url, _), aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/access", data=b"x" * 200_000) as r:
            assert r.status == 413 and (await r.json())["code"] == "too_large"
        async with s.post(url + "/v1/access", data=b"{") as r:
            assert r.status == 400 and (await r.json())["code"] == "malformed"
        async with s.get(url + "/v1/nothing") as r:
            assert r.status == 404 and (await r.json())["code"] == "not_found"
        async with s.get(url + "/v1/access") as r:
            assert r.status == 405 and (await r.json())["code"] == "method_not_allowed"
        async with s.post(url + "/v1/compute", data=b"{}") as r:  # not a compute node
            assert r.status == 404 and (await r.json())["code"] == "not_found"
    assert host.resource.remaining(NOW) == MICRO


@pytest.mark.asyncio
async def test_channels_are_released_after_the_session() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "wlan_channels", MICRO, session_seconds=30)
    async with serving(host, clock) as (url, peers):
        first, _ = await ask(peers, url, w, w.alice)
        assert (await peers.access(url, first)).granted
        busy, _ = await ask(peers, url, w, w.alice)
        assert (await peers.access(url, busy)).reason == "capacity_exhausted"
        clock.now = NOW + 30
        again, _ = await ask(peers, url, w, w.alice)
        assert (await peers.access(url, again)).granted


@pytest.mark.asyncio
async def test_files_are_downloaded_by_hash_within_the_byte_budget(tmp_path: Path) -> None:
    (tmp_path / "song.ogg").write_bytes(b"la" * 500)
    store = FileStore(tmp_path)
    store.scan()
    sha = hashlib.sha256(b"la" * 500).hexdigest()
    w, clock = World(), Clock()
    host = make_host(w, "files", 1500, files=store)
    async with serving(host, clock) as (url, peers):
        assert await peers.files(url) == [{"sha256": sha, "size": 1000}]
        request, _ = await ask(peers, url, w, w.alice, amount=1000, resource="file:" + sha)
        answer, data = await peers.download(url, sha, request, host_key=w.host.public_key)
        assert answer.granted and data == b"la" * 500
        assert answer.receipt is not None and answer.receipt.amount == 1000
        # Asking for less than the file's size is refused (signed), the budget kept.
        cheap, _ = await ask(peers, url, w, w.alice, amount=10, resource="file:" + sha)
        answer, data = await peers.download(url, sha, cheap)
        assert answer.reason == "out_of_range" and answer.refusal is not None and data is None
        # 500 bytes left: a second download does not fit.
        again, _ = await ask(peers, url, w, w.alice, amount=1000, resource="file:" + sha)
        answer, data = await peers.download(url, sha, again)
        assert answer.reason == "capacity_exhausted" and data is None
        assert host.resource.remaining(NOW) == 500
        # The signed refusal says what was asked, so the audit can see that 500 bytes
        # left could not serve a 1000-byte file (receipts 1000 of 1500 committed).
        assert answer.refusal is not None and answer.refusal.amount == 1000
        assert refusal_is_legitimate(answer.refusal, received=1000, committed=1500)
        assert not refusal_is_legitimate(answer.refusal, received=500, committed=1500)
        # An unknown file is not found before any check (the nonce is not recorded).
        other = "0" * 64
        stray, _ = await ask(peers, url, w, w.alice, amount=1000, resource="file:" + other)
        answer, _ = await peers.download(url, other, stray)
        assert isinstance(answer.error, NotFoundError) and answer.error.code == "not_found"


@pytest.mark.asyncio
async def test_compute_runs_a_job_limited_to_the_share_bought() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "compute", 10 * MICRO)
    async with serving(host, clock) as (url, peers):
        request, challenge = await ask(peers, url, w, w.alice, amount=MICRO, resource="compute")
        answer, result = await peers.compute(url, request, host_key=w.host.public_key)
        assert answer.granted and result is not None
        assert result["digest"] == hash_job(MICRO, seed=bytes.fromhex(challenge))
        # The share left is 1 unit: asking 2 is refused (the requester's limit).
        too_much, _ = await ask(peers, url, w, w.alice, amount=2 * MICRO, resource="compute")
        answer, result = await peers.compute(url, too_much)
        assert answer.reason == "out_of_range" and answer.refusal is not None and result is None
        assert host.resource.remaining(NOW) == 9 * MICRO


@pytest.mark.asyncio
async def test_a_job_larger_than_the_capacity_left_runs_on_what_is_left() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "compute", MICRO // 2)
    async with serving(host, clock) as (url, peers):
        request, challenge = await ask(peers, url, w, w.alice, amount=MICRO, resource="compute")
        answer, result = await peers.compute(url, request, host_key=w.host.public_key)
        assert answer.granted and answer.receipt is not None and result is not None
        assert answer.receipt.amount == MICRO // 2
        assert result["iterations"] == job_iterations(MICRO // 2)
        assert result["digest"] == hash_job(MICRO // 2, seed=bytes.fromhex(challenge))
        assert host.resource.remaining(NOW) == 0


@pytest.mark.asyncio
async def test_many_nodes_share_one_event_loop() -> None:
    clock = Clock()
    runners = []
    try:
        urls = []
        for i in range(20):
            w = World(host=Identity.from_seed(bytes([100 + i]) * 32))
            host = make_host(w, "wlan_coverage", MICRO)
            runner, endpoint = await start_site(make_app(host, clock=clock), port=0)
            runners.append(runner)
            urls.append(f"http://{endpoint}")
        assert len(set(urls)) == 20
        async with aiohttp.ClientSession() as session:
            peers = PeerClient(session)
            for url in urls:
                status = await peers.status(url)
                assert status["remaining"] == MICRO
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.mark.asyncio
async def test_a_refusal_must_echo_the_request() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "wlan_coverage", 0)
    async with serving(host, clock) as (url, peers):
        request, _ = await ask(peers, url, w, w.alice, amount=3 * MICRO)
        answer = await peers.access(url, request, host_key=w.host.public_key)
    assert answer.refusal is not None and answer.refusal.amount == 3 * MICRO
    good = answer.refusal
    check_refusal(good, request)
    other, _ = await ask(peers, url, w, w.alice, amount=3 * MICRO)
    with pytest.raises(InkindError) as info:
        check_refusal(good, other)  # a refusal of another request of hers
    assert info.value.code == "bad_proof"
    fields = {"epoch": good.epoch, "host_id": good.host_id, "requester_id": good.requester_id,
              "nonce": good.nonce, "reason": good.reason, "time": good.time,
              "request": good.request}
    for change in ({"amount": MICRO}, {"requester_id": w.bob.node_id},
                   {"nonce": "ab" * 16}):
        with pytest.raises(InkindError) as info:  # a refusal not echoing its request
            Refusal(**{**fields, "amount": good.amount, **change})  # type: ignore[arg-type]
        assert info.value.code == "out_of_range"
    check_refusal(Refusal(**fields), request)  # type: ignore[arg-type]  # amount is optional


@pytest.mark.asyncio
async def test_a_large_file_arrives_whole(tmp_path: Path) -> None:
    # The body arrives in many chunks; the client reads to the end (not one read()).
    blob = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "big.bin").write_bytes(blob)
    store = FileStore(tmp_path)
    store.scan()
    sha = hashlib.sha256(blob).hexdigest()
    w, clock = World(), Clock()
    host = make_host(w, "files", 2 * len(blob), files=store)
    async with serving(host, clock) as (url, peers):
        request, _ = await ask(peers, url, w, w.alice, amount=len(blob), resource="file:" + sha)
        answer, data = await peers.download(url, sha, request, host_key=w.host.public_key)
    assert answer.granted and data == blob


@pytest.mark.asyncio
async def test_a_session_opened_by_one_signed_request_serves_later_macd_requests() -> None:
    w, clock = World(), Clock()
    host = make_host(w, "wlan_coverage", 5 * MICRO)
    own = new_session_key()
    body = make_access_request(w.alice, w.credential(w.alice), host_id=w.host.node_id,
                               now=NOW, amount=2 * MICRO, rng=w.rng,
                               session_key=public_hex(own))
    async with serving(host, clock) as (url, peers):
        answer = await peers.access(url, body, host_key=w.host.public_key)
        session = peers.open_session(own, body, answer)
        assert session is not None and answer.granted
        first = await peers.session_access(url, session, amount=MICRO)
        assert first.granted and first.amount == MICRO
        # A replay of that very request, and one over the balance, are plain errors.
        async with peers.session.post(url + "/v1/access", data=first.request.to_bytes()) as r:
            assert r.status == 409 and (await r.json())["code"] == "replay"
        over = await peers.session_access(url, session, amount=2 * MICRO)
        assert not over.granted and over.error is not None
        assert over.error.code == "out_of_range"
        second = await peers.session_access(url, session, amount=MICRO)
        assert second.granted
        spent = await peers.session_access(url, session, amount=MICRO)
        assert spent.error is not None and spent.error.code == "unknown_session"
    assert host.resource.remaining(NOW) == 3 * MICRO  # consumed once, by the signed grant
