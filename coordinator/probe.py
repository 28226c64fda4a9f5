"""Coordinator probes: is an included host there at all?

Signed evidence (receipts, refusals) catches a host that answers badly; a host that does
not answer at all (stopped, crashed, unplugged) leaves roamers with nothing but
timeouts. So after each close the coordinator itself asks every host that owes something
in the closed epoch e (included, positive contribution, a registered endpoint) for a
challenge, ``GET /v1/challenge`` on ``http://ENDPOINT``, with a bounded timeout. A probe
is *answered* when the host replies ``200`` with a JSON object holding a ``challenge``
string, or ``409 capacity_exhausted`` (its challenge book is full: alive, perhaps
flooded); a refused connection, a timeout or any other reply is not answered. Every probe
is recorded durably (host, epoch, time, answered) and, at the audit cut-off of e (the
close of e + 1), a host with at least one probe in e and none answered is a free rider
with reason ``unreachable`` (:func:`coordinator.enforcement.find_free_riders`), excluded
from e + 1 like the others. A host that was never probed (probes disabled, no endpoint)
is never flagged by this rule.

When the probes run: with the automatic schedule, ``probe_attempts`` rounds are spread
evenly over the time between the close of e and the expected cut-off
(:func:`round_times`), one attempt per host per round (a host that already answered in
e is not asked again); ``POST /v1/admin/probe`` runs a round now, up to
``probe_attempts`` attempts per host back to back (stopping at the first answer), which
is how the testbed probes deterministically before the cut-off.

The decision (:func:`targets`, :func:`unanswered`, :func:`round_times`) is pure; the
HTTP part (:func:`probe_host`, :func:`probe_round`) is thin and imports aiohttp only when
called, so the pure core (:mod:`coordinator.epoch`) stays free of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import Allocation

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class ProbeResult:
    """One probe of ``node_id`` for epoch ``epoch`` at ``time`` (Unix seconds)."""

    epoch: int
    node_id: str
    time: int
    answered: bool


def targets(allocation: Allocation, endpoints: Mapping[str, str | None]) -> dict[str, str]:
    """node id -> endpoint of every included host that owes something (contribution +
    debt) and has a
    registered endpoint (``endpoints``: the nodes' registered endpoints)."""
    out: dict[str, str] = {}
    for node, amount in allocation.owed().items():
        endpoint = endpoints.get(node)
        if amount > 0 and endpoint:
            out[node] = endpoint
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


async def probe_host(session: aiohttp.ClientSession, endpoint: str, *, timeout: float) -> bool:
    """One ``GET /v1/challenge``: True iff the host answered with a challenge in time."""
    import aiohttp

    try:
        async with session.get(f"{url_of(endpoint)}/v1/challenge",
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status == 409:
                # A host whose challenge book is full (possibly flooded by someone else)
                # is alive and answering: that is not the silence this probe looks for.
                body = await resp.json(content_type=None)
                return isinstance(body, dict) and body.get("code") == "capacity_exhausted"
            if resp.status != 200:
                return False
            body = await resp.json(content_type=None)
            return isinstance(body, dict) and isinstance(body.get("challenge"), str)
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return False


async def probe_round(
    epoch: int,
    hosts: Mapping[str, str],
    *,
    clock: Callable[[], int],
    timeout: float,
    attempts: int,
    session: aiohttp.ClientSession | None = None,
) -> list[ProbeResult]:
    """Probe every host of ``hosts`` (node id -> endpoint) in parallel, up to
    ``attempts`` times each back to back, stopping at the first answer; one result per
    attempt, sorted."""
    import aiohttp

    async def one(s: aiohttp.ClientSession, node: str, endpoint: str) -> list[ProbeResult]:
        out = []
        for _ in range(max(1, attempts)):
            ok = await probe_host(s, endpoint, timeout=timeout)
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
