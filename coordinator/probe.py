"""Coordinator probes: is an included host there at all, and is it who it claims to be?

Signed evidence (receipts, refusals) catches a host that answers badly; a host that does
not answer at all (stopped, crashed, unplugged, or never reachable: no endpoint, or
another node's) leaves roamers with nothing but timeouts. So after each close the
coordinator itself probes every host that owes something in the closed epoch e
(included, positive contribution): ``GET /v1/probe/{e}/{nonce}`` on ``http://ENDPOINT``
with a fresh random nonce and a bounded timeout. A probe is *answered* only by a
``probe_answer`` envelope signed by the host's registered key over (e, host id, that
nonce) (:func:`protocol.check_probe_answer`): only that host can make it, so another
node's endpoint, a replayed answer, an unsigned or wrongly signed one, a refused
connection, a timeout or any other reply is unanswered. A host with no endpoint is
probed too, without the network: unanswered.

Every probe is recorded durably (host, epoch, time, answered) and, at the audit cut-off
of e (the close of e + 1), a host with at least one probe in e and none answered is a
free rider with reason ``unreachable`` (:func:`coordinator.enforcement.find_free_riders`),
excluded from e + 1 like the others. Transient failures do not exclude an honest host:
there are ``probe_attempts`` rounds spread over the epoch and one answer suffices.

When the probes run: with the automatic schedule, ``probe_attempts`` rounds are spread
evenly over the time between the close of e and the expected cut-off
(:func:`round_times`), one attempt per host per round (a host that already answered in
e is not asked again); ``POST /v1/admin/probe`` runs a round now, up to
``probe_attempts`` attempts per host back to back (stopping at the first answer), which
is how the testbed probes deterministically before the cut-off.

Complaints (README section 7, step 7) travel the same way: each round also relays
every complaint its host has not answered yet (:func:`relay_complaint`), and so does the
filing of a complaint; one signed answer suffices.

The decision (:func:`targets`, :func:`unanswered`, :func:`round_times`) is pure; the
HTTP part (:func:`probe_host`, :func:`probe_round`, :func:`relay_complaint`) is thin and
imports aiohttp only when called, so the pure core (:mod:`coordinator.epoch`) stays free of it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import (
    AccessBody,
    Allocation,
    Complaint,
    Envelope,
    GrantReceipt,
    InkindError,
    Refusal,
    Registration,
    check_probe_answer,
    open_embedded,
)
from protocol.envelope import envelope_size_limit
from protocol.fields import NONCE_BYTES
from protocol.messages import ProbeAnswer

#: Largest probe answer read, bytes.
MAX_ANSWER_BYTES = envelope_size_limit(ProbeAnswer.MAX_PAYLOAD_BYTES)
#: Probes in flight at once (below aiohttp's default pool of 100 connections, so a
#: started probe never waits for a connection).
PROBE_CONCURRENCY = 64

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class ProbeResult:
    """One probe of ``node_id`` for epoch ``epoch`` at ``time`` (Unix seconds)."""

    epoch: int
    node_id: str
    time: int
    answered: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A host to probe: where it said it listens (None: nowhere) and its key."""

    endpoint: str | None
    public_key: str


def targets(allocation: Allocation, nodes: Mapping[str, Registration]) -> dict[str, Target]:
    """node id -> :class:`Target` of every included host that owes something
    (contribution + debt; ``nodes``: the registrations). A host without an endpoint is a
    target too: it owes something and nobody can reach it."""
    out: dict[str, Target] = {}
    for node, amount in allocation.owed().items():
        reg = nodes.get(node)
        if amount > 0 and reg is not None:
            out[node] = Target(endpoint=reg.endpoint or None, public_key=reg.public_key)
    return out


def unanswered(epoch: int, probes: Iterable[ProbeResult]) -> dict[str, int]:
    """node id -> number of probes of every node probed in ``epoch`` that answered none."""
    asked: dict[str, int] = {}
    answered: set[str] = set()
    for p in probes:
        if p.epoch != epoch:
            continue
        asked[p.node_id] = asked.get(p.node_id, 0) + 1
        if p.answered:
            answered.add(p.node_id)
    return {n: k for n, k in sorted(asked.items()) if n not in answered}


def round_times(closed_at: int, span: int, attempts: int) -> list[int]:
    """When the automatic rounds of an epoch closed at ``closed_at`` run: ``attempts``
    times evenly inside ``(closed_at, closed_at + span)`` (``span``: the pause plus the
    declaration window, i.e. until the expected cut-off)."""
    return [closed_at + span * (k + 1) // (attempts + 1) for k in range(attempts)]


def url_of(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"http://{endpoint}"


async def probe_host(
    session: aiohttp.ClientSession,
    target: Target,
    *,
    epoch: int,
    timeout: float,
    rng: Callable[[int], bytes] = os.urandom,
) -> bool:
    """One probe: True iff the host answered in time with its signature over ``epoch``
    and a fresh nonce (never raises for the host's faults)."""
    import aiohttp

    if target.endpoint is None:
        return False
    nonce = rng(NONCE_BYTES).hex()
    try:
        # A redirect is not the host's answer (protocol/HTTP.md: a 200 signed by it), and
        # following one would let a host point the coordinator at any other address.
        async with session.get(f"{url_of(target.endpoint)}/v1/probe/{epoch}/{nonce}",
                               timeout=aiohttp.ClientTimeout(total=timeout),
                               allow_redirects=False) as resp:
            if resp.status != 200:
                return False
            raw = bytearray()  # read(n) returns what has arrived: read to the end
            while chunk := await resp.content.read(MAX_ANSWER_BYTES + 1 - len(raw)):
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    return False
        check_probe_answer(bytes(raw), host_key=target.public_key, epoch=epoch, nonce=nonce)
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError, InkindError):
        return False
    return True


#: Largest answer to a relayed complaint read, bytes (a receipt or a refusal in JSON).
MAX_RELAY_ANSWER_BYTES = 2 * envelope_size_limit(GrantReceipt.MAX_PAYLOAD_BYTES)


async def relay_complaint(
    session: aiohttp.ClientSession,
    target: Target,
    complaint: Complaint,
    credential: Envelope,
    *,
    timeout: float,
) -> Envelope | None:
    """Relay the request of ``complaint`` to its host (``POST /v1/resolve`` with the
    access body of that very request and the ``credential`` the coordinator issued): the
    host's signed receipt or refusal of it (README section 7, step 7), or None for any
    other outcome (no endpoint, a network failure, a plain error, an answer not signed by
    the host's registered key or about another request). Never raises for the host's
    faults."""
    import aiohttp

    if target.endpoint is None:
        return None
    body = AccessBody(request=complaint.request, credential=credential).to_bytes()
    try:
        async with session.post(f"{url_of(target.endpoint)}/v1/resolve", data=body,
                                headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=timeout),
                                allow_redirects=False) as resp:  # as in probe_host
            raw = bytearray()
            while chunk := await resp.content.read(MAX_RELAY_ANSWER_BYTES + 1 - len(raw)):
                raw += chunk
                if len(raw) > MAX_RELAY_ANSWER_BYTES:
                    return None
            status = resp.status
        answer: GrantReceipt | Refusal
        trusted = frozenset({target.public_key})
        if status == 200:
            envelope = Envelope.from_bytes(bytes(raw), max_size=MAX_RELAY_ANSWER_BYTES)
            _, answer = open_embedded(envelope, GrantReceipt, trusted=trusted)
        else:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or not isinstance(obj.get("refusal"), dict):
                return None
            envelope = Envelope.from_obj(obj["refusal"])
            _, answer = open_embedded(envelope, Refusal, trusted=trusted)
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError, InkindError):
        return None
    if (answer.host_id != complaint.host_id or answer.epoch != complaint.epoch
            or answer.nonce != complaint.nonce
            or answer.requester_id != complaint.requester_id):
        return None
    return envelope


async def probe_round(
    epoch: int,
    hosts: Mapping[str, Target],
    *,
    clock: Callable[[], int],
    timeout: float,
    attempts: int,
    session: aiohttp.ClientSession | None = None,
) -> list[ProbeResult]:
    """Probe every host of ``hosts`` (node id -> target) in parallel, up to
    ``attempts`` times each back to back, stopping at the first answer; one result per
    attempt, sorted."""
    import aiohttp

    # The timeout is the host's: a probe waits for its turn before its clock starts, or
    # with thousands of hosts the wait for a pooled connection would count against them.
    turns = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def one(s: aiohttp.ClientSession, node: str, target: Target) -> list[ProbeResult]:
        out = []
        for _ in range(max(1, attempts)):
            async with turns:
                ok = await probe_host(s, target, epoch=epoch, timeout=timeout)
            out.append(ProbeResult(epoch=epoch, node_id=node, time=clock(), answered=ok))
            if ok:
                break
        return out

    async def run(s: aiohttp.ClientSession) -> list[ProbeResult]:
        groups = await asyncio.gather(*(one(s, n, e) for n, e in sorted(hosts.items())))
        return sorted(r for g in groups for r in g)

    if not hosts:
        return []
    if session is not None:
        return await run(session)
    async with aiohttp.ClientSession() as own:
        return await run(own)
