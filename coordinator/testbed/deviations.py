"""The deviation experiment (issue 11): does any deviation by one node pay?

``python scripts/deviations.py`` is the command; this module holds its logic.

For each seed the scenario's population (its market, nodes, true types θ and roaming
script; the scenario's ``[[strategies]]`` are ignored: everybody else is truthful, since
incentive compatibility is about one node deviating from truthful play) is played over
the wire once truthfully, then once more per deviation, with one node -- the *deviator*
-- deviating and every other node truthful. The same seed gives the same keys, types and
roaming script in every run, so each deviation is compared with truthful play on paired
runs (the differences have small variance).

The deviator: the included node of median θ (the lower median) among the included nodes
of the location with the most included nodes in the truthful run's first epoch -- a
typical participant, with service to lose and a contribution to save.

Realised utility (spec units per epoch; README "Deviation experiment"). In epoch e,
with Q_l the allocation's size of location l (engine units), s_l the fraction of the
included roamers' covered attempts at l that were granted (1 when none were made; a
refusal, a timeout or an unreachable host counts as not served), π_i = 1 if i is
included with a credential (else -- not included, or included on probation -- the
fraction of its own covered attempts that were granted, normally 0),
W the market's weights and u_l its utilities,

    V_i = θ_i · π_i · Σ_l W[home_i, l] · u_l(Q_l · s_l)        (value of service received)
    U_i = V_i − p_i                                           (realised utility)

where p_i is what i owes (the allocation's contribution, in units of its location's
resource, or money) -- charged only if i delivers it: a host that withholds its
contribution (opens nothing, or cannot be reached) is charged 0, the accounting most
favourable to the deviator. A sybil's two identities are one person: its π is the larger
of the two, its p the sum of both.

* ``gain`` = mean over seeds of the per-epoch mean of U_d(deviation) − U_d(truthful)
  for the deviator d, with a Student-t 95% interval over seeds. Misreports are judged as
  the mechanism is designed, in expectation over the other nodes' types (Bayesian IC),
  exactly as the IC auditor (:func:`coordinator.mechanism.audit.interim_outcomes`) does:
  per seed and epoch, ``profiles`` profiles of the others' types are redrawn from the
  priors and the deviator's report and its truth are allocated against the same
  profiles; their wire runs give ``gain_ex_post`` (this population's types) and the harm.
* ``honest_excluded``: distinct honest nodes the coordinator excluded in the deviation's
  runs (all seeds); ``honest_excluded_truthful`` the same in the truthful runs.
* ``service_lost``: mean over seeds of the per-epoch Σ over honest nodes of
  V_j(truthful) − V_j(deviation), spec units (negative: they gained).

Attacks the node agent cannot express are played here, as the deviator's owner would,
with its key, on the wire: *hide* re-registers it without an endpoint or with another
node's; *free-ride-commit* re-registers it behind a front that passes the coordinator's
probes (GETs) to its node and drops every roamer's request (POSTs) unanswered;
*drain* asks one host, as an included roamer, for everything it has; *frame* does so,
keeps the receipt to itself, asks again and reports only the signed
``capacity_exhausted`` refusal; *flood* sends unauthenticated requests (garbage, replayed
requests of strangers with self-signed credentials, probes) to one host during roaming
and holds stalled connections open. *sybil* adds a second identity at the deviator's
home (half its capacity each, the same θ, no trips of its own).

Nodes the scenario's ``[[faults]]`` crash or silence are played as the scenario says
(in every run alike); they are never the deviator and their exclusions are reported
apart (``faulty_excluded``), not as honest nodes'.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from coordinator.mechanism import Market, Mechanism, solve
from coordinator.mechanism.audit import interim_outcomes
from protocol import (
    MICRO,
    Complaint,
    Credential,
    Envelope,
    Identity,
    InkindError,
    Registration,
    from_micro,
    make_access_request,
    seal,
)
from protocol.kinds import KINDS
from protocol.messages import MECHANISMS

from .driver import EpochRecord, Options, Player, RunRecord
from .progress import Progress
from .scenario import (
    Attempt,
    NodePlan,
    Scenario,
    _rng,
    key_seed,
    load_scenario,
    parse_strategy,
    population,
    resolve_faults,
    roaming_script,
)
from .wire import ask

#: Unauthenticated requests the flooder sends to its target in each epoch, how many at
#: once, and how many connections it holds open without finishing a request.
FLOOD_REQUESTS = 1500
FLOOD_CONCURRENCY = 64
FLOOD_STALLED = 30
#: Requests the false complainer sends its target (and as many it signs and keeps).
BAIT = 2
#: Strangers (fresh keys, self-signed credentials) whose requests the flood replays.
FLOOD_STRANGERS = 16
#: Profiles of the others' types per seed and epoch for the misreports' expectation.
PROFILES = 40
#: Attempt outcomes that say nothing about a host's service.
NOT_ASKED = ("no_coverage", "not_running")


@dataclass(frozen=True, slots=True, kw_only=True)
class Deviation:
    """One way to deviate. ``strategy``: the deviator's node strategy (node/strategy.py
    spelling); ``withholds``: its host delivers nothing it owes (charged 0);
    ``endpoint``: ``"none"``/``"borrowed"`` re-registration; ``attack``: ``"drain"`` |
    ``"flood"``; ``misreport``: the factor on θ judged in expectation."""

    name: str
    description: str
    strategy: str = "truthful"
    withholds: bool = False
    endpoint: str | None = None
    attack: str | None = None
    sybil: bool = False
    whitewash: bool = False
    misreport: float | None = None


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(name="control", description="truthful again (a control: gain 0 expected)"),
    Deviation(name="misreport-up", description="declares 1.5 θ (clamped)",
              strategy="misreport:1.5", misreport=1.5),
    Deviation(name="misreport-down", description="declares θ / 2", strategy="misreport:0.5",
              misreport=0.5),
    Deviation(name="free-ride", description="included, sends no commitment, opens nothing",
              strategy="free-ride", withholds=True),
    Deviation(name="free-ride-commit",
              description="sends the signed commitment and opens nothing; a front it "
                          "registers as its endpoint answers the coordinator's probes with "
                          "the node's key and drops every roamer's request unanswered",
              strategy="free-ride:commit", withholds=True, endpoint="front"),
    Deviation(name="free-ride-commit-refuse",
              description="sends the signed commitment, opens nothing, answers every "
                          "roamer with a signed capacity_exhausted refusal",
              strategy="free-ride:commit", withholds=True),
    Deviation(name="hide-no-endpoint",
              description="re-registers without an endpoint: nobody can reach its host",
              withholds=True, endpoint="none"),
    Deviation(name="hide-borrowed-endpoint",
              description="re-registers with another node's endpoint", withholds=True,
              endpoint="borrowed"),
    Deviation(name="drain",
              description="as a roamer asks one host for all it has, then roams as usual; "
                          "reports everything", attack="drain"),
    Deviation(name="frame",
              description="drains a host, hides the receipt, reports only the next "
                          "request's signed capacity_exhausted refusal", attack="frame"),
    Deviation(name="frame-complaint",
              description=f"as an included roamer asks one host {BAIT} times (its receipts "
                          f"hidden) and signs {BAIT} requests it never sends, then complains "
                          "that the host answered none of them while flooding it as the "
                          "coordinator relays the complaints", attack="complain"),
    Deviation(name="flood",
              description=f"{FLOOD_REQUESTS} unauthenticated requests per epoch at one "
                          "host (garbage bodies, replayed requests of strangers, probes), "
                          f"{FLOOD_STALLED} stalled connections", attack="flood"),
    Deviation(name="sybil", description="a second identity at home, capacity split",
              sybil=True),
    Deviation(name="whitewash",
              description="free rides (no commitment, opens nothing) under a fresh identity "
                          "every epoch: a new key registered at its home, the last one "
                          "dropped, so no exclusion ever meets it",
              strategy="free-ride", withholds=True, whitewash=True),
)
BY_NAME = {d.name: d for d in DEVIATIONS}


class DeviationError(RuntimeError):
    pass


# --- accounting (pure) ---------------------------------------------------------------------


def service_ratio(rec: EpochRecord, n_locations: int) -> list[float]:
    """s_l: granted / covered attempts of included roamers at l (1.0 if none)."""
    asked = [0] * n_locations
    granted = [0] * n_locations
    for a in rec.attempts:
        if a.included and a.reason not in NOT_ASKED:
            asked[a.location] += 1
            granted[a.location] += a.reason == "granted"
    return [g / n if n else 1.0 for g, n in zip(granted, asked, strict=True)]


def own_ratio(rec: EpochRecord, names: Sequence[str]) -> float:
    """π of a node not included: the fraction of its own covered attempts granted."""
    mine = [a for a in rec.attempts if a.roamer in names and a.reason not in NOT_ASKED]
    return sum(a.reason == "granted" for a in mine) / len(mine) if mine else 0.0


def benefit(market: Market, home: int, q_micro: Sequence[int], s: Sequence[float]) -> float:
    """Σ_l W[home, l] u_l(Q_l s_l) (engine units)."""
    total = 0.0
    for l, loc in enumerate(market.locations):
        q = from_micro(q_micro[l]) * s[l] if l < len(q_micro) else 0.0
        total += float(market.weights[home, l]) * float(loc.utility(q))
    return total


@dataclass(slots=True, kw_only=True)
class EpochValues:
    """One played epoch, valued: the deviator's utility and each honest node's V."""

    deviator_utility: float
    deviator_value: float
    deviator_paid: float
    deviator_included: bool
    honest_value: dict[str, float]
    # held a credential of the epoch (included and not on probation: could be served)
    deviator_credentialled: bool = False


def value_epoch(rec: EpochRecord, market: Market, plans: dict[str, NodePlan],
                deviator: Sequence[str], withholds: bool) -> EpochValues:
    """Value one epoch (module docstring); ``deviator``: its identities (one, or two)."""
    s = service_ratio(rec, market.L)
    # π = 1 for a node that could roam as included: one on probation (coordinator README
    # "Probation") owes its contribution but holds no credential, so it is not served.
    allocated = set(rec.included)
    included = allocated - set(rec.probation)

    def pi(names: Sequence[str]) -> float:
        return 1.0 if any(n in included for n in names) else own_ratio(rec, names)

    d0 = plans[deviator[0]]
    theta = from_micro(d0.theta_at(rec.epoch))
    v = theta * pi(deviator) * benefit(market, d0.location, rec.q, s)
    owed = sum(from_micro(rec.owed.get(n, 0)) for n in deviator)
    paid = 0.0 if withholds else owed
    honest = {
        name: from_micro(p.theta_at(rec.epoch)) * pi([name])
        * benefit(market, p.location, rec.q, s)
        for name, p in plans.items() if name not in deviator}
    return EpochValues(deviator_utility=v - paid, deviator_value=v, deviator_paid=paid,
                       deviator_included=any(n in allocated for n in deviator),
                       honest_value=honest,
                       deviator_credentialled=any(n in included for n in deviator))


def ci95(xs: Sequence[float]) -> tuple[float, float] | None:
    """Student-t 95% interval of the mean of ``xs`` (None for fewer than 2 values)."""
    from scipy import stats

    n = len(xs)
    if n < 2:
        return None
    a = np.asarray(xs, dtype=float)
    m = float(a.mean())
    half = float(stats.t.ppf(0.975, n - 1)) * float(a.std(ddof=1)) / math.sqrt(n)
    return (m - half, m + half)


def faulty_nodes(scenario: Scenario, seed: int) -> frozenset[str]:
    """The nodes the scenario's faults crash or silence (``seed`` draws them): a host
    that is down when it owes service is rightly excluded, so these are neither honest
    nodes for the harm count nor candidates to deviate."""
    return frozenset(n for f in resolve_faults(scenario, seed)
                     if f.kind in ("node_crash", "host_silent") for n in f.nodes)


def choose_deviator(rec: EpochRecord, plans: dict[str, NodePlan],
                    faulty: frozenset[str] = frozenset()) -> str:
    """The included node of median θ (lower median) at the location with the most
    included nodes (ties: the lower location index); never one of the ``faulty``."""
    by_loc: dict[int, list[NodePlan]] = defaultdict(list)
    for name in rec.included:
        if name not in faulty:
            by_loc[plans[name].location].append(plans[name])
    if not by_loc:
        raise DeviationError("nobody (but faulty nodes) is included in the truthful run's "
                             "first epoch: no deviator to choose")
    loc = min(by_loc, key=lambda l: (-len(by_loc[l]), l))
    group = sorted(by_loc[loc], key=lambda p: (p.theta, p.index))
    return group[(len(group) - 1) // 2].name


# --- the deviant player ---------------------------------------------------------------------


class DeviantPlayer(Player):
    """A testbed run in which ``deviator`` plays ``deviation`` (every other node truthful).

    Roamers reach hosts at the endpoints the coordinator's directory publishes (a hidden
    host is then unreachable, or reached at someone else's address); everything else is
    the testbed's own run (:class:`coordinator.testbed.driver.Player`).
    """

    def __init__(self, scenario: Scenario, mechanism: str, options: Options, run_dir: Path,
                 session: aiohttp.ClientSession, *, plans: list[NodePlan],
                 script: list[list[Attempt]], deviation: Deviation,
                 deviator: str | None) -> None:
        super().__init__(scenario, mechanism, options, 0, run_dir, session, plans=plans,
                         script=script)
        self.deviation = deviation
        self.deviator = deviator
        self.script = list(self.script)  # its epochs' lists are shared by the runs
        self.target: str | None = None  # the host drained or flooded
        self.mechanics: dict[str, Any] = defaultdict(list)
        self.stalled: list[asyncio.StreamWriter] = []
        self.front: web.AppRunner | None = None
        self.front_endpoint = ""
        self.bait: list[Envelope] = []  # signed requests a false complaint will carry
        self.pressure: asyncio.Task[None] | None = None  # flood while complaints relay
        self.target_entry: Any = None
        #: A whitewasher's identities, one per epoch (the deviator's own first).
        self.chain = ([deviator] + [p.name for p in plans if p.name not in
                                    {q.name for q in population(scenario, options.seed)}]
                      if deviation.whitewash and deviator is not None else [])
        #: Nodes the scenario's faults stop or crash: not honest hosts that fail.
        self.faulty = faulty_nodes(scenario, options.seed)

    def host_url(self, host: str, entry: Any) -> str | None:
        endpoint = getattr(entry, "endpoint", None)
        if not endpoint:
            return None
        return endpoint if "://" in endpoint else f"http://{endpoint}"

    async def start(self) -> None:
        await super().start()
        for spare in self.chain[1:]:  # registered; kept down until its epoch comes
            await self.fleet.crash(spare)
            self.crashed.add(spare)
        if self.deviation.endpoint == "front":
            await self.start_front()
        if self.deviation.endpoint is not None and self.deviator is not None:
            await self.hide()

    async def stop(self) -> None:
        self.close_stalled()
        if self.front is not None:
            with contextlib.suppress(Exception):
                await self.front.cleanup()
            self.front = None
        await super().stop()

    async def start_front(self) -> None:
        """The false committer's front (what its owner would put before its node): a
        server on 127.0.0.1 that drops every roamer's request -- a POST on an access
        path (access, a download, a job) -- by closing the connection without a word (no
        receipt, no signed refusal, nothing a roamer can show), and passes everything
        else -- the coordinator's probes and relayed requests, the file listing -- to
        the node, answering with the node's own (signed) reply."""
        assert self.deviator is not None
        node_url = self.fleet.nodes[self.deviator].url
        counts: dict[str, int] = defaultdict(int)
        self.mechanics["front"] = counts
        timeout = aiohttp.ClientTimeout(total=10.0)

        def roamers(request: web.Request) -> bool:
            return request.method == "POST" and (
                request.path in ("/v1/access", "/v1/compute")
                or request.path.startswith("/v1/files/"))

        async def handle(request: web.Request) -> web.StreamResponse:
            if roamers(request):
                counts["dropped"] += 1
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=204)  # never written: the connection is gone
            counts["passed"] += 1
            body = await request.read()
            async with self.session.request(
                    request.method, node_url + request.path_qs, data=body or None,
                    headers={"Content-Type": request.content_type}, timeout=timeout) as r:
                answer = await r.read()
                return web.Response(status=r.status, body=answer,
                                    content_type=r.content_type)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.front = runner
        self.front_endpoint = f"127.0.0.1:{runner.addresses[0][1]}"

    async def hide(self) -> None:
        """Re-register the deviator (its key) without an endpoint, with the endpoint of
        the first other node of its location, or with its front's."""
        assert self.deviator is not None and self.client is not None
        plan = self.by_name[self.deviator]
        endpoint: str | None = None
        if self.deviation.endpoint == "borrowed":
            other = next(p.name for p in self.plans
                         if p.location == plan.location and p.name != self.deviator)
            endpoint = self.fleet.nodes[other].url.split("://", 1)[-1]
            self.mechanics["borrowed_from"] = other
        elif self.deviation.endpoint == "front":
            endpoint = self.front_endpoint
        ident = self.identities[self.deviator]
        for _ in range(3):  # a registration must be strictly newer than the agent's own
            reg = Registration(public_key=ident.public_key, epoch=0,
                               home_location=plan.location, capacity=plan.capacity,
                               kind=self.scenario.kind, endpoint=endpoint,
                               issued=int(time.time()))
            try:
                await self.client.register(seal(ident, reg))
                break
            except InkindError as exc:
                if exc.code != "stale_epoch":
                    raise
                await asyncio.sleep(1.0)
        else:
            raise DeviationError("the deviator's re-registration was refused as stale")
        self.mechanics["endpoint_registered"] = endpoint

    async def faults(self, index: int, when: str, rec: EpochRecord) -> None:
        """The scenario's faults; and before epoch ``index`` opens, a whitewasher drops
        the identity of the last epoch and starts the next (it registers its new key)."""
        await super().faults(index, when, rec)
        if when == "before_open" and 0 < index < len(self.chain):
            old, new = self.chain[index - 1], self.chain[index]
            await self.fleet.crash(old)
            self.crashed.add(old)
            self.crashed.discard(new)
            await self.fleet.start_node(self.fleet.nodes[new])
            self.mechanics["identity_of_epoch"].append(new)

    def pick_target(self, rec: EpochRecord) -> str | None:
        """The honest included host away from the deviator's home that owes the most."""
        assert self.deviator is not None
        home = self.by_name[self.deviator].location
        hosts = [n for n in rec.included if n != self.deviator
                 and self.by_name[n].location != home and rec.owed.get(n, 0) > 0
                 and n not in self.faulty]
        return min(hosts, key=lambda n: (-rec.owed[n], n)) if hosts else None

    async def roam(self, index: int, rec: EpochRecord, entries: dict[str, Any],
                   shopping: list[tuple[str, str]] | None = None) -> list[Any]:
        if self.chain and index < len(self.script):
            # the whitewasher's device roams under the identity of the epoch
            me = self.chain[min(index, len(self.chain) - 1)]
            self.script[index] = [dataclasses.replace(a, roamer=me)
                                  if a.roamer == self.deviator else a
                                  for a in self.script[index]]
        attack = self.deviation.attack
        if attack is None or self.deviator is None:
            return await super().roam(index, rec, entries, shopping)
        self.close_stalled()
        self.target = self.pick_target(rec)
        self.target_entry = entries.get(self.target) if self.target else None
        if self.target is None:
            self.mechanics["no_target"].append(rec.epoch)
            return await super().roam(index, rec, entries, shopping)
        if attack in ("drain", "frame"):
            if self.deviator in rec.included:
                await self.drain(rec, entries[self.target], frame=attack == "frame")
            return await super().roam(index, rec, entries, shopping)
        if attack == "complain":
            if self.deviator in rec.included:
                await self.lay_bait(rec, entries[self.target])
            return await super().roam(index, rec, entries, shopping)
        flood = asyncio.create_task(self.flood(rec, entries[self.target]))
        try:
            return await super().roam(index, rec, entries, shopping)
        finally:
            await flood

    async def drain(self, rec: EpochRecord, entry: Any, *, frame: bool) -> None:
        """One request for all the target's capacity, then one of the usual size. A
        drain reports both answers in the deviator's audit report; a frame keeps the
        receipt to itself and reports only the second request's signed refusal."""
        assert self.deviator is not None and self.target is not None
        url = self.host_url(self.target, entry)
        cred = self.credentials.get(self.deviator)
        if url is None or cred is None:
            return
        kind = self.scenario.kind
        if kind not in ("wlan_coverage", "wlan_channels"):
            # Files are indivisible and compute is capped by the roamer's own share: no
            # single request takes a host's whole capacity.
            self.mechanics["drain_not_applicable"] = kind
            return
        ident = self.identities[self.deviator]
        small = MICRO if kind == "wlan_channels" else self.scenario.access.amount
        asks = (self.by_name[self.target].capacity, small)
        outcome: dict[str, Any] = {"epoch": rec.epoch, "target": self.target}
        for k, amount in enumerate(asks):
            try:
                answer = await ask(self.session, url, kind=KINDS[self.scenario.kind],
                                   identity=ident, credential=cred, host_id=entry.node_id,
                                   host_key=entry.public_key, amount=amount,
                                   timeout=self.roam_timeout)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome[f"ask{k}"] = type(exc).__name__
                continue
            outcome[f"ask{k}"] = (f"granted {answer.amount}" if answer.reason == "granted"
                                  else answer.reason)
            if answer.evidence is None:
                continue
            if not frame:
                self.evidence[self.deviator].append(answer.evidence)
            elif answer.reason != "granted" and k == 1:  # the receipt stays hidden
                self.evidence[self.deviator].append(answer.evidence)
                outcome["framed"] = True
        self.mechanics["drains"].append(outcome)

    def request_for(self, entry: Any) -> tuple[int, str]:
        """(amount, item) of one ordinary request of the deviator at the target."""
        assert self.target is not None
        kind = KINDS[self.scenario.kind]
        if kind.itemised:
            item, size = self.files[self.target][0]
            return max(1, size), item
        return (kind.granularity if kind.granularity > 1 else self.scenario.access.amount), ""

    async def lay_bait(self, rec: EpochRecord, entry: Any) -> None:
        """``BAIT`` ordinary requests at the target (answers kept from the audit) and
        ``BAIT`` more signed and never sent: what the false complaints will carry."""
        assert self.deviator is not None and self.target is not None
        url = self.host_url(self.target, entry)
        cred = self.credentials.get(self.deviator)
        if url is None or cred is None:
            return
        kind = KINDS[self.scenario.kind]
        ident = self.identities[self.deviator]
        amount, item = self.request_for(entry)
        answers = []
        for _ in range(BAIT):
            sent: list[Envelope] = []
            try:
                answer = await ask(self.session, url, kind=kind, identity=ident,
                                   credential=cred, host_id=entry.node_id,
                                   host_key=entry.public_key, amount=amount, item=item,
                                   timeout=self.roam_timeout, sent=sent)
                answers.append(answer.reason)
            except (aiohttp.ClientError, TimeoutError) as exc:
                answers.append(type(exc).__name__)
            self.bait += sent
        for _ in range(BAIT):
            body = make_access_request(ident, cred, host_id=entry.node_id, amount=amount,
                                       now=int(time.time()), resource=kind.resource_of(item))
            self.bait.append(body.request)
        self.mechanics["bait"].append({"epoch": rec.epoch, "target": self.target,
                                       "answers": answers, "unsent": BAIT})

    async def audit(self, rec: EpochRecord) -> int:
        """The roamers' reports (and honest complaints); then the false complaints about
        the target, each relayed by the coordinator while the target is flooded (the
        flood lasts until the probe round that follows has finished)."""
        if not self.bait or self.deviator is None or self.target is None:
            return await super().audit(rec)
        assert self.client is not None
        entry = self.target_entry
        self.pressure = asyncio.create_task(self.flood(rec, entry, forever=True))
        sent = await super().audit(rec)
        ident = self.identities[self.deviator]
        outcome: dict[str, Any] = {"epoch": rec.epoch, "target": self.target,
                                   "filed": 0, "refused": []}
        host_id = entry.node_id
        bait, self.bait = self.bait, []
        for request in bait:
            complaint = Complaint(epoch=rec.epoch, requester_id=ident.node_id,
                                  host_id=host_id, request=request)
            try:
                await self.client.complain(seal(ident, complaint))
                outcome["filed"] += 1
            except (InkindError, aiohttp.ClientError, TimeoutError) as exc:
                outcome["refused"].append(getattr(exc, "code", type(exc).__name__))
        self.mechanics["complaints"].append(outcome)
        return sent

    async def admin(self, action: str) -> dict[str, Any]:
        try:
            return await super().admin(action)
        finally:
            if action == "probe" and self.pressure is not None:
                self.pressure.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.pressure
                self.pressure = None

    def flood_requests(self, rec: EpochRecord, entry: Any) -> list[tuple[str, bytes]]:
        """(path, body) of well-formed access requests by strangers: fresh keys with
        credentials they signed themselves, each replayed many times by the flood."""
        assert self.target is not None
        kind = KINDS[self.scenario.kind]
        out = []
        for k in range(FLOOD_STRANGERS):
            ident = Identity.from_seed(key_seed(rec.epoch, f"stranger/{k}"))
            now = int(time.time())
            cred = seal(ident, Credential(
                node_id=ident.node_id, public_key=ident.public_key, epoch=rec.epoch,
                not_before=now - 1, expires=now + 600,
                location=self.by_name[self.target].location))
            item = ""
            if kind.itemised:
                item = self.files[self.target][k % len(self.files[self.target])][0]
            req = make_access_request(ident, cred, host_id=entry.node_id,
                                      amount=max(1, kind.granularity), now=now,
                                      resource=kind.resource_of(item))
            out.append((kind.path(item), req.to_bytes()))
        return out

    async def flood(self, rec: EpochRecord, entry: Any, *, forever: bool = False) -> None:
        """At the target: garbage bodies and replayed strangers' requests on its access
        path, probes with random nonces (each costs it a signature), and stalled
        connections (a request head whose body never comes) held open until the next
        epoch's roaming (or the end). ``FLOOD_REQUESTS`` requests, or ``forever``: until
        cancelled."""
        url = self.host_url(self.target or "", entry)
        if url is None:
            return
        hostport = url.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        signed = self.flood_requests(rec, entry)
        path = signed[0][0]
        for _ in range(FLOOD_STALLED):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\n"
                             "Content-Length: 100000\r\n\r\n".encode())
                self.stalled.append(writer)
        codes: dict[str, int] = defaultdict(int)
        timeout = aiohttp.ClientTimeout(total=2.0)
        headers = {"Content-Type": "application/json"}
        counter = iter(range(10**12 if forever else FLOOD_REQUESTS))

        async def worker() -> None:
            for k in counter:
                try:
                    if k % 3 == 0:
                        req = self.session.get(url + f"/v1/probe/{rec.epoch}/{k:032x}",
                                               timeout=timeout)
                    elif k % 3 == 1:
                        req = self.session.post(url + path, data=b'{"junk": 1}',
                                                headers=headers, timeout=timeout)
                    else:
                        p, body = signed[k % len(signed)]
                        req = self.session.post(url + p, data=body, headers=headers,
                                                timeout=timeout)
                    async with req as r:
                        await r.read()
                        codes[str(r.status)] += 1
                except (aiohttp.ClientError, TimeoutError):
                    codes["failed"] += 1

        try:
            await asyncio.gather(*(worker() for _ in range(FLOOD_CONCURRENCY)))
        finally:
            self.mechanics["floods"].append({"epoch": rec.epoch, "target": self.target,
                                             "answers": dict(codes),
                                             "stalled": len(self.stalled)})

    def close_stalled(self) -> None:
        for w in self.stalled:
            with contextlib.suppress(Exception):
                w.close()
        self.stalled = []


# --- one seed -------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class RunValues:
    deviation: str
    epochs: list[EpochValues]
    honest_excluded: list[str]
    faulty_excluded: list[str]  # nodes the scenario's faults took down, excluded for it
    deviator_excluded: list[int]  # epochs it was newly excluded at
    mechanics: dict[str, Any]
    grants_honest: int
    warnings: list[str]


@dataclass(slots=True, kw_only=True)
class SeedResult:
    seed: int
    deviator: str
    deviator_theta: float
    deviator_location: str
    truthful: RunValues
    faulty: list[str] = field(default_factory=list)  # taken down by the scenario's faults
    runs: dict[str, RunValues] = field(default_factory=dict)
    bayes: dict[str, float] = field(default_factory=dict)  # misreport -> interim gain


@dataclass(slots=True)
class Tally:
    """Runs played of the experiment's ``total`` (for the progress lines)."""

    total: int
    done: int = 0
    t0: float = field(default_factory=time.monotonic)

    def step(self) -> str:
        self.done += 1
        spent = time.monotonic() - self.t0
        left = spent / self.done * (self.total - self.done)
        return f"[run {self.done}/{self.total}, about {left / 60:.1f} min left]"


def truthful_population(scenario: Scenario, seed: int, epochs: int | None = None
                        ) -> list[NodePlan]:
    """The scenario's nodes, all truthful (their types of ``epochs`` epochs if redrawn)."""
    return [dataclasses.replace(p, strategy="truthful")
            for p in population(scenario, seed, epochs)]


def deviant_population(plans: list[NodePlan], deviator: str, deviation: Deviation,
                       seed: int, epochs: int = 1) -> list[NodePlan]:
    """The population with the deviator's strategy set (and its sybil, or the ``epochs``
    − 1 fresh identities of a whitewasher, appended)."""
    out = [dataclasses.replace(p, strategy=deviation.strategy) if p.name == deviator else p
           for p in plans]
    if deviation.whitewash:
        d = next(p for p in out if p.name == deviator)
        n_home = sum(p.location == d.location for p in plans)
        for k in range(1, epochs):
            name = f"{deviator.rsplit('-', 1)[0]}-{n_home + k - 1}"
            out.append(dataclasses.replace(d, name=name, index=len(out),
                                           seed=key_seed(seed, name + "/whitewash")))
    if deviation.sybil:
        d = next(p for p in out if p.name == deviator)
        half = d.capacity // 2
        out = [dataclasses.replace(p, capacity=d.capacity - half) if p.name == deviator else p
               for p in out]
        n_home = sum(p.location == d.location for p in plans)
        name = f"{deviator.rsplit('-', 1)[0]}-{n_home}"
        out.append(dataclasses.replace(d, name=name, index=len(out), capacity=half,
                                       seed=key_seed(seed, name + "/sybil")))
    return out


def identities_of(deviator: str, plans: Sequence[NodePlan], base: int) -> list[str]:
    """The deviator's names: itself and any identity appended after the base population."""
    return [deviator] + [p.name for p in plans[base:]]


def value_run(record: RunRecord, market: Market, plans: list[NodePlan], deviator: str,
              deviation: Deviation, base: int, mechanics: dict[str, Any],
              faulty: frozenset[str] = frozenset()) -> RunValues:
    by_name = {p.name: p for p in plans}
    names = identities_of(deviator, plans, base)
    played = [r for r in record.epochs if not r.cutoff]
    values = [value_epoch(r, market, by_name, names, deviation.withholds) for r in played]
    others = {n for r in record.epochs for n in r.newly_excluded if n not in names}
    excluded = sorted(others - faulty)
    dev_ex = [r.epoch for r in record.epochs if any(n in names for n in r.newly_excluded)]
    grants = sum(a.reason == "granted" for r in played for a in r.attempts
                 if a.roamer not in names)
    warnings = [w for r in record.epochs for w in r.warnings]
    mechanics = {**mechanics, "identities": names,
                 "declared": [r.declared.get(deviator) for r in played],
                 "included_identities": [[n for n in names if n in r.included] for r in played],
                 # the requests it was asked: roamers' and mystery shoppers' alike
                 "served_by_deviator": sum(a.reason == "granted" for r in played
                                           for a in (*r.attempts, *r.shopping)
                                           if a.host in names),
                 "refused_by_deviator": sum(a.reason not in (*NOT_ASKED, "granted")
                                            for r in played
                                            for a in (*r.attempts, *r.shopping)
                                            if a.host in names and a.included)}
    return RunValues(deviation=deviation.name, epochs=values, honest_excluded=excluded,
                     faulty_excluded=sorted(others & faulty), deviator_excluded=dev_ex,
                     mechanics=mechanics, grants_honest=grants, warnings=warnings)


async def play_run(scenario: Scenario, mechanism: str, seed: int, epochs: int, out: Path,
                   mode: str, plans: list[NodePlan], script: list[list[Attempt]],
                   deviation: Deviation, deviator: str | None
                   ) -> tuple[RunRecord, dict[str, Any]]:
    run_dir = out / "run" / f"seed{seed}" / deviation.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    options = Options(out=run_dir, seed=seed, mode=mode, progress=Progress(enabled=False),
                      plots=False, epochs=epochs)
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector) as session:
        player = DeviantPlayer(scenario, mechanism, options, run_dir,
                               session, plans=plans, script=script, deviation=deviation,
                               deviator=deviator)
        record = await player.play()
        return record, dict(player.mechanics)


def bayes_gain(mech: Mechanism, market: Market, plan: NodePlan, strategy: str, seed: int,
               epochs: int, profiles: int) -> float:
    """E over the others' types of U(θ, report) − U(θ, θ), per epoch, for the deviator:
    ``report`` is what its node declares under ``strategy`` (node/strategy.py: the
    factor, floored to micro-units, clamped to [0, 1]; here also to the prior's support),
    its θ that of each epoch; ``profiles`` profiles per epoch drawn from the priors,
    common to both reports (the IC auditor's interim utility)."""
    dist = market.locations[plan.location].dist
    lie = parse_strategy(strategy)
    rng = _rng(seed, "deviations", "others", plan.name)
    per_theta: dict[int, int] = defaultdict(int)  # θ (micro-units) -> epochs with it
    for e in range(epochs):
        per_theta[plan.theta_at(e)] += 1
    total = 0.0
    for theta_micro, n in sorted(per_theta.items()):
        theta = from_micro(theta_micro)
        report = min(max(from_micro(lie.declare(theta_micro)), float(dist.low)),
                     float(dist.high))
        others = market.sample_types(rng, n * profiles)
        B, P = interim_outcomes(mech, market, others, [theta, report],
                                location=plan.location)
        U = theta * B - P
        total += float((U[1] - U[0]).sum())
    return total / (epochs * profiles)


async def play_seed(scenario: Scenario, mechanism: str, seed: int, epochs: int, out: Path,
                    mode: str, deviations: Sequence[Deviation], progress: Progress,
                    profiles: int, jobs: int = 1, tally: Tally | None = None) -> SeedResult:
    """Play the truthful run, choose the deviator, then play ``deviations`` (``jobs`` runs
    at a time, each with its own coordinator)."""
    market = scenario.market()
    plans = truthful_population(scenario, seed, epochs)
    by_name = {p.name: p for p in plans}
    script = roaming_script(scenario, plans, seed, epochs)
    t0 = time.monotonic()
    truthful, mech0 = await play_run(scenario, mechanism, seed, epochs, out, mode, plans,
                                     script, Deviation(name="truthful", description=""), None)
    first = next((r for r in truthful.epochs if not r.cutoff), None)
    if first is None:
        raise DeviationError("the truthful run played no epoch")
    faulty = faulty_nodes(scenario, seed)
    deviator = choose_deviator(first, by_name, faulty)
    d = by_name[deviator]
    tally = tally or Tally(total=1 + len(deviations))
    progress.log(f"seed {seed}: truthful run in {time.monotonic() - t0:.1f} s; deviator "
                 f"{deviator} (θ = {from_micro(d.theta):.3f}) {tally.step()}")
    base = len(plans)
    result = SeedResult(
        seed=seed, deviator=deviator, deviator_theta=from_micro(d.theta),
        deviator_location=scenario.locations[d.location].name, faulty=sorted(faulty),
        truthful=value_run(truthful, market, plans, deviator, DEVIATIONS[0], base, mech0,
                           faulty))
    sem = asyncio.Semaphore(max(1, jobs))

    async def one(dev: Deviation) -> None:
        async with sem:
            t = time.monotonic()
            dplans = deviant_population(plans, deviator, dev, seed, epochs)
            record, mech = await play_run(scenario, mechanism, seed, epochs, out, mode, dplans,
                                          script, dev, deviator)
        rv = value_run(record, market, dplans, deviator, dev, base, mech, faulty)
        result.runs[dev.name] = rv
        gain = float(np.mean([a.deviator_utility - b.deviator_utility for a, b in
                              zip(rv.epochs, result.truthful.epochs, strict=True)]))
        progress.log(f"seed {seed}: {dev.name} in {time.monotonic() - t:.1f} s: ex-post gain "
                     f"{gain:+.4f}/epoch, honest excluded {len(rv.honest_excluded)} "
                     f"{tally.step()}")

    # Every run to its end before a failure is raised: a failure left pending while
    # asyncio.run cancels the others hung the experiment with no word.
    outcomes = await asyncio.gather(*(one(dev) for dev in deviations), return_exceptions=True)
    for dev, outcome in zip(deviations, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            raise DeviationError(f"seed {seed}: the {dev.name} run failed: "
                                 f"{type(outcome).__name__}: {outcome} (logs in "
                                 f"{out / 'run' / f'seed{seed}' / dev.name / 'logs'})"
                                 ) from outcome
    result.runs = {dev.name: result.runs[dev.name] for dev in deviations}
    # CPU-bound: after the runs, so that no in-process node waits on it.
    misreports = [dev for dev in deviations if dev.misreport is not None]
    if misreports:
        solved = solve(market, mechanism)
        for dev in misreports:
            assert dev.misreport is not None
            result.bayes[dev.name] = bayes_gain(solved, market, d, dev.strategy, seed,
                                                epochs, profiles)
    return result


# --- aggregation ----------------------------------------------------------------------------


def summarise(results: Sequence[SeedResult], deviations: Sequence[Deviation],
              epochs: int) -> list[dict[str, Any]]:
    """One row per deviation (the ``--json`` objects, with extra fields)."""
    rows = []
    for dev in deviations:
        ex_post, lost, grants_lost = [], [], []
        honest_ex: list[str] = []
        honest_ex_truth: list[str] = []
        faulty_ex: list[str] = []
        dev_included, dev_excluded, dev_credentialled = 0, 0, 0
        for res in results:
            rv, tv = res.runs[dev.name], res.truthful
            pairs = list(zip(rv.epochs, tv.epochs, strict=True))
            ex_post.append(float(np.mean([a.deviator_utility - b.deviator_utility
                                          for a, b in pairs])))
            lost.append(float(np.mean([sum(b.honest_value.values()) - sum(
                a.honest_value.get(n, 0.0) for n in b.honest_value) for a, b in pairs])))
            grants_lost.append((tv.grants_honest - rv.grants_honest) / len(pairs))
            honest_ex += [f"seed{res.seed}:{n}" for n in rv.honest_excluded]
            honest_ex_truth += [f"seed{res.seed}:{n}" for n in tv.honest_excluded]
            faulty_ex += [f"seed{res.seed}:{n}" for n in rv.faulty_excluded]
            dev_included += sum(a.deviator_included for a in rv.epochs)
            dev_credentialled += sum(a.deviator_credentialled for a in rv.epochs)
            dev_excluded += len(rv.deviator_excluded)
        if dev.misreport is not None:
            gains = [res.bayes[dev.name] for res in results]
            judged = "expectation over the others' types (IC auditor's interim utility)"
        else:
            gains, judged = ex_post, "paired wire runs (realised)"
        ci = ci95(gains)
        mean_gain = float(np.mean(gains))
        row: dict[str, Any] = {
            "deviation": dev.name,
            "gain": mean_gain,
            "ci95": list(ci) if ci is not None else None,
            "epochs": epochs,
            "seeds": len(results),
            "honest_excluded": len(honest_ex),
            "service_lost": float(np.mean(lost)),
            "description": dev.description,
            "judged_by": judged,
            "pays": bool(ci is not None and ci[0] > 0),
            "gain_ex_post": float(np.mean(ex_post)),
            "gain_ex_post_ci95": list(c) if (c := ci95(ex_post)) is not None else None,
            "service_lost_ci95": list(c) if (c := ci95(lost)) is not None else None,
            "honest_grants_lost_per_epoch": float(np.mean(grants_lost)),
            "honest_excluded_nodes": honest_ex,
            "honest_excluded_truthful": len(honest_ex_truth),
            "faulty_excluded_nodes": faulty_ex,
            "deviator_epochs_included": dev_included,
            "deviator_epochs_credentialled": dev_credentialled,
            "deviator_exclusions": dev_excluded,
        }
        rows.append(row)
    return rows


JSON_FIELDS = ("deviation", "gain", "ci95", "epochs", "seeds", "honest_excluded",
               "service_lost")

FORMULA = ("U_d = θ_d · π_d · Σ_l W[home_d, l] · u_l(Q_l · s_l) − p_d per epoch: π_d = 1 if "
           "included with a credential (not on probation); s_l = granted / covered attempts "
           "of included roamers at l; p_d its "
           "contribution (spec units), charged only if its host delivers; gain = U_d(deviation)"
           " − U_d(truthful), paired by seed")


INTERVAL = ("95% interval: Student t with S − 1 degrees of freedom over the S seeds, each "
            "seed one value (its gain averaged over the E epochs of its paired runs; epochs "
            "of one run are not independent -- an exclusion carries over -- so they are not "
            "counted as samples); a misreport's value per seed is its expected gain over "
            "E × profiles draws of the others' types")


def build_report(scenario: Scenario, mechanism: str, results: Sequence[SeedResult],
                 rows: list[dict[str, Any]], epochs: int, wall_s: float) -> dict[str, Any]:
    return {
        "scenario": scenario.name,
        "scenario_path": scenario.path,
        "mechanism": mechanism,
        "seeds": [r.seed for r in results],
        "epochs": epochs,
        "formula": FORMULA,
        "interval": INTERVAL,
        "units": "spec units per epoch (θ · u(Q) and contributions as in the market spec)",
        "deviator_rule": "included node of median θ at the location with the most included "
                         "nodes in the truthful run's first epoch; all other nodes truthful",
        "deviators": [{"seed": r.seed, "node": r.deviator, "theta": r.deviator_theta,
                       "location": r.deviator_location} for r in results],
        "faulty": {f"seed{r.seed}": r.faulty for r in results if r.faulty},
        "rows": rows,
        "runs": {f"seed{r.seed}": {
            name: {"mechanics": rv.mechanics, "honest_excluded": rv.honest_excluded,
                   "faulty_excluded": rv.faulty_excluded,
                   "gain_expected": r.bayes.get(name),
                   "deviator_excluded_at": rv.deviator_excluded,
                   "deviator_utility": [e.deviator_utility for e in rv.epochs],
                   "deviator_paid": [e.deviator_paid for e in rv.epochs],
                   "deviator_included": [e.deviator_included for e in rv.epochs],
                   "deviator_credentialled": [e.deviator_credentialled for e in rv.epochs],
                   "warnings": rv.warnings[:20]}
            for name, rv in [("truthful", r.truthful), *r.runs.items()]} for r in results},
        "wall_s": wall_s,
    }


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "n/a" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Deviation experiment: {report['scenario']} ({report['mechanism']})",
        "",
        f"{len(report['seeds'])} seeds x {report['epochs']} epochs; {report['units']}.",
        "",
        f"{report['interval']}.",
        "",
        f"Realised utility: {report['formula']}. Misreports: gain in expectation over the "
        "other nodes' types (the IC auditor's interim utility); their wire runs give the "
        "ex-post gain and the harm.",
        "",
        f"Deviator: {report['deviator_rule']}: "
        + ", ".join(f"seed {d['seed']}: {d['node']} (θ = {d['theta']:.3f})"
                    for d in report["deviators"]) + ".",
        "",
        "| deviation | gain / epoch | 95% CI | pays? | ex-post gain | honest excluded "
        "| service lost / epoch | honest grants lost / epoch | deviator excluded |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['deviation']} | {r['gain']:+.4f} | {_fmt_ci(r['ci95'])} | "
            f"{'**yes**' if r['pays'] else 'no'} | {r['gain_ex_post']:+.4f} | "
            f"{r['honest_excluded']} | {r['service_lost']:+.4f} | "
            f"{r['honest_grants_lost_per_epoch']:+.1f} | {r['deviator_exclusions']} |")
    if report.get("faulty"):
        lines += ["", "Taken down by the scenario's faults (not counted as honest nodes, "
                  "never the deviator): " + "; ".join(
                      f"{k}: {', '.join(v)}" for k, v in report["faulty"].items()) + "."]
    lines += ["", "Deviations:", ""]
    lines += [f"* `{r['deviation']}`: {r['description']}" for r in report["rows"]]
    lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.6))
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows, strict=True):
        ci = r["ci95"] or [r["gain"], r["gain"]]
        color = "tab:red" if r["pays"] else "tab:blue"
        ax.errorbar([r["gain"]], [y], xerr=[[r["gain"] - ci[0]], [ci[1] - r["gain"]]],
                    fmt="o", color=color, capsize=3)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["deviation"] for r in rows])
    ax.set_xlabel("deviator's gain over truthful play (spec utility units per epoch), 95% CI")
    ax.set_title(f"{report['scenario']} ({report['mechanism']}): "
                 f"{len(report['seeds'])} seeds x {report['epochs']} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: Path, *, plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report))
    if plots:
        plot(report, out / "gain.png")


def run_deviations(scenario: Scenario | str | Path, *, out: str | Path, seeds: int = 3,
                   first_seed: int | None = None, epochs: int = 10, mode: str = "inproc",
                   mechanism: str | None = None, only: Sequence[str] | None = None,
                   profiles: int = PROFILES, progress: Progress | None = None,
                   plots: bool = True, jobs: int = 3) -> dict[str, Any]:
    """Play the experiment and write report.json, report.md and gain.png into ``out``.

    ``seeds`` consecutive seeds from ``first_seed`` (default: the scenario's);
    ``only``: deviation names (default: all, :data:`DEVIATIONS`); ``jobs``: runs played at
    once (the control row shows whether that load disturbed anything). Returns the report.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    mech = mechanism or sc.mechanisms[0]
    if mech not in MECHANISMS:
        raise DeviationError(f"unknown mechanism {mech!r}")
    if seeds < 2:
        raise DeviationError("at least 2 seeds are needed for a confidence interval")
    devs = list(DEVIATIONS) if only is None else [BY_NAME[n] for n in only]
    prog = progress or Progress(enabled=False)
    out_dir = Path(out)
    start = sc.seed if first_seed is None else first_seed
    t0 = time.monotonic()
    results = []
    tally = Tally(total=seeds * (1 + len(devs)))
    for seed in range(start, start + seeds):
        results.append(asyncio.run(play_seed(sc, mech, seed, epochs, out_dir, mode, devs, prog,
                                             profiles, jobs, tally)))
    rows = summarise(results, devs, epochs)
    report = build_report(sc, mech, results, rows, epochs, time.monotonic() - t0)
    write_outputs(report, out_dir, plots=plots)
    return report


__all__ = ["DEVIATIONS", "Deviation", "DeviationError", "run_deviations"]
