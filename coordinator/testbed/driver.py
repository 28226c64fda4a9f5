"""The launcher: plays a scenario's epochs against a real coordinator and real nodes.

For each mechanism the scenario names, :func:`play` starts a coordinator
(``--manual``, so nothing moves unless the driver says so) and the node fleet, then for
each epoch:

1. faults due before the open (node crash or restart, coordinator restart, a silent
   host answering again);
2. ``POST /v1/admin/open``; every running node declares (its strategy, its seeded θ);
   the driver waits until the coordinator holds all their declarations;
3. ``POST /v1/admin/close`` (the audit cut-off of the previous epoch: free riders found
   there are left out); the driver reads the signed allocation, the directory and the
   included nodes' credentials;
4. the nodes fetch the allocation, open their contribution and commit; the driver waits
   until every running host enforces the new allocation and the commitments are in;
5. faults due after the commitments (crash, a host going silent);
6. roaming (:meth:`Player.roam`): the driver plays each node's roaming device -- it
   created the node's key, so it signs the node's access requests -- following the
   seeded roaming script, and records every answer and the decision latency; each
   included node asks the coordinator for its mystery-shopper duties (``POST
   /v1/duties``) and its device asks each of those hosts once, like a roamer, at a
   random place in that host's queue (:meth:`Player.duties`);
7. audit: each roamer's signed receipts and refusals go to the coordinator; then
   ``POST /v1/admin/probe``: the coordinator probes every host that owes something in
   this epoch now (``GET /v1/probe``), while the epoch's faults are still in force,
   so a crashed or silent host is found ``unreachable`` at the next cut-off;
8. the hosts' and the coordinator's status pages are read into the epoch's record.

After the last epoch one more epoch is opened and closed without roaming: its close is
the audit cut-off of the last played epoch, so free riders of that epoch are detected
too. The records go to :mod:`.report`.

How Q_l becomes service (the coverage model; README "Testbed"): location l is a unit
area; the allocation's Q_l, divided by the scenario's ``area`` of l, is the fraction
f_l = min(1, Q_l / area_l) of it that is served. The served part [0, f_l) is cut into
consecutive segments, one per included host of l (ordered by name), with lengths in
proportion to what each host owes (its contribution; equal if all owe nothing). A
roaming attempt stands at the scripted point u ∈ [0, 1): if u ≥ f_l nobody covers it
(``no_coverage``, no request is sent); otherwise the host whose segment holds u is
asked for ``amount`` of its resource. So an included roamer is served with probability
f_l exactly when every host delivers what it owes, and a free rider's segment turns
into refusals. The other kinds read the same way: f_l is the probability that a channel,
the wanted content or compute is available in l, and the covering host serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import secrets
import shutil
import signal
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from protocol import (
    AuditReport,
    Complaint,
    Credential,
    DutyRequest,
    Envelope,
    Identity,
    InkindError,
    from_micro,
    seal,
)
from protocol.kinds import KINDS
from protocol.messages import MAX_AUDIT_ITEMS, MAX_CREDENTIAL_LIFETIME

from .dashboard import Board
from .fleet import REBUTTAL_SECONDS, Fleet, FleetError, NodeHandle, make_fleet
from .progress import Progress
from .records import AttemptResult, EpochRecord, Options, RunRecord
from .report import ReportContext, build_report, epoch_report, write_report
from .scenario import (
    Attempt,
    NodePlan,
    Scenario,
    load_scenario,
    node_files,
    parse_strategy,
    population,
    resolve_faults,
    roaming_script,
)
from .schema import validate_epoch
from .wire import Coordinator, DirectoryEntry, ask

#: How long the driver waits for the nodes to reach a phase before it goes on without
#: the stragglers (and says so in the epoch's record).
PHASE_TIMEOUT = 60.0
POLL = 0.02
#: Access exchanges in flight at once (one queue per host, hosts in parallel).
ROAM_CONCURRENCY = 16
#: Audit reports in flight at once.
AUDIT_CONCURRENCY = 32


class TestbedError(RuntimeError):
    pass


async def wait_for(check: Callable[[], Awaitable[bool]], *, timeout: float = PHASE_TIMEOUT) -> bool:
    """Poll ``check`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL)


class Player:
    """One run: one coordinator, one fleet, one mechanism, the scenario's epochs."""

    def __init__(self, scenario: Scenario, mechanism: str, options: Options, run: int,
                 run_dir: Path, session: aiohttp.ClientSession, *,
                 plans: list[NodePlan] | None = None,
                 script: list[list[Attempt]] | None = None) -> None:
        """``plans`` and ``script`` replace the scenario's population and roaming script
        (the deviation experiment plays one population under several strategies)."""
        from .fleet import CoordinatorProcess

        self.scenario = scenario
        self.mechanism = mechanism
        self.options = options
        self.progress = options.progress
        self.run = run
        self.run_dir = run_dir
        self.session = session
        self.n_epochs = options.epochs or scenario.epochs
        self.plans = (population(scenario, options.seed, self.n_epochs) if plans is None
                      else plans)
        self.by_name = {p.name: p for p in self.plans}
        self.fault_plan = resolve_faults(scenario, options.seed)
        self.script = (roaming_script(scenario, self.plans, options.seed, self.n_epochs)
                       if script is None else script)
        self.identities = {p.name: Identity.from_seed(p.seed) for p in self.plans}
        self.name_of = {ident.node_id: name for name, ident in self.identities.items()}
        self.files: dict[str, list[tuple[str, int]]] = {}
        files_dirs: dict[str, Path] = {}
        for sub in ("logs", "keys"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        if scenario.kind == "files":
            for p in self.plans:
                d = run_dir / "files" / p.name
                d.mkdir(parents=True, exist_ok=True)
                entries = []
                for k, blob in enumerate(node_files(scenario, options.seed, p.name)):
                    path = d / f"file-{k}.bin"
                    if not path.exists():
                        path.write_bytes(blob)
                    entries.append((hashlib.sha256(blob).hexdigest(), len(blob)))
                self.files[p.name] = entries
                files_dirs[p.name] = d
        spec = run_dir / "market.json"
        spec.write_text(json.dumps(scenario.market_spec(), indent=1))
        self.token = secrets.token_hex(16)
        self.coordinator = CoordinatorProcess(
            spec=spec, mechanism=mechanism, db=run_dir / "coordinator.db",
            key=run_dir / "coordinator.pem", log=run_dir / "logs" / "coordinator.log",
            token=self.token)
        self.fleet: Fleet = make_fleet(
            options.mode, self.plans, run_dir=run_dir, kind=scenario.kind,
            session_seconds=scenario.access.session_seconds, files_dirs=files_dirs)
        self.client: Coordinator | None = None
        self.roam_timeout = aiohttp.ClientTimeout(total=scenario.access.timeout)
        self.status_timeout = self.roam_timeout
        self.credentials: dict[str, Envelope] = {}  # newest credential each node holds
        self.audited_at: float | None = None  # wall time of the last audit reports
        # per roamer, (host id, signed request) of requests that got no signed answer
        self.unanswered: defaultdict[str, list[tuple[str, Envelope]]] = defaultdict(list)
        self.record = RunRecord(run=run, mechanism=mechanism)
        self.crashed: set[str] = set()
        self.evidence: defaultdict[str, list[Envelope]] = defaultdict(list)  # per roamer
        self.report_context: ReportContext | None = None  # for the live dashboard

    # --- plumbing ----------------------------------------------------------------------

    async def admin(self, action: str) -> dict[str, Any]:
        assert self.client is not None
        try:
            return await self.client.admin(action)
        except InkindError as exc:
            raise TestbedError(f"admin {action}: {exc}") from exc

    async def status(self) -> dict[str, Any]:
        assert self.client is not None
        return await self.client.status()

    async def host_status(self, h: NodeHandle) -> dict[str, Any] | None:
        try:
            async with self.session.get(h.url + "/v1/status",
                                        timeout=self.status_timeout) as resp:
                body = await resp.json()
            return body if isinstance(body, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    # --- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        t0 = time.monotonic()
        self.progress.phase(f"starting the coordinator and {len(self.plans)} nodes "
                            f"({self.fleet.mode})")
        boot = getattr(self.fleet, "boot", None)
        if boot is not None:  # the node runner imports while the coordinator starts
            await asyncio.gather(self.coordinator.start(), boot())
        else:
            await self.coordinator.start()
        self.record.coordinator_start_s = time.monotonic() - t0
        self.client = Coordinator(self.session, self.coordinator.url,
                                  self.coordinator.public_key, token=self.token)
        t1 = time.monotonic()
        self.fleet.on_progress = lambda done, total: self.progress.update(
            f"starting nodes {done}/{total}")
        await self.fleet.start(self.coordinator.url, self.coordinator.public_key)
        await self.fleet.register_phase()
        n = len(self.fleet.live())

        async def registered() -> bool:
            return int((await self.status())["counts"]["nodes"]) >= n

        self.progress.phase(f"waiting for {n} registrations")
        if not await wait_for(registered):
            raise TestbedError("the nodes did not all register (see the logs in "
                               f"{self.run_dir / 'logs'})")
        self.record.nodes_start_s = time.monotonic() - t1
        self.record.startup_s = time.monotonic() - t0
        self.progress.log(f"{len(self.plans)} nodes ({self.fleet.mode}) and the coordinator "
                          f"up in {self.record.startup_s:.1f} s")

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.fleet.stop()
        with contextlib.suppress(Exception):
            await self.coordinator.stop()

    # --- faults ------------------------------------------------------------------------

    async def faults(self, index: int, when: str, rec: EpochRecord) -> None:
        for f in self.fault_plan:
            if f.kind == "coordinator_restart" and f.epoch == index and f.when == when:
                self.progress.phase("restarting the coordinator")
                await self.coordinator.restart()
                self.record.coordinator_restarts += 1
                rec.faults.append(f"coordinator restarted ({when})")
            if f.kind == "node_crash":
                if f.epoch == index and f.when == when:
                    for n in f.nodes:
                        await self.fleet.crash(n)
                        self.crashed.add(n)
                        rec.faults.append(f"{n} crashed ({when})")
                if f.until == index and when == "before_open":
                    for n in f.nodes:
                        await self.fleet.restart(n)
                        self.crashed.discard(n)
                        rec.faults.append(f"{n} restarted")
            if f.kind == "host_silent":
                if f.epoch == index and when == "after_commit":
                    for n in f.nodes:
                        await self.fleet.silence(n)
                        rec.faults.append(f"{n} went silent")
                if f.until == index and when == "before_open":
                    for n in f.nodes:
                        await self.fleet.resume(n)
                        rec.faults.append(f"{n} answers again")

    # --- one epoch ---------------------------------------------------------------------

    async def play_epoch(self, index: int, *, cutoff: bool = False) -> EpochRecord:
        rec = EpochRecord(index=index, run=self.run, mechanism=self.mechanism, cutoff=cutoff)
        # Epochs are numbered as the coordinator numbers them (from 0), everywhere.
        label = (f"{index} (the audit cut-off: opened and closed, not played)" if cutoff
                 else f"{index} (of 0..{self.n_epochs - 1})")
        self.progress.set_prefix(f"{self.mechanism} epoch {label}: ")
        t = time.monotonic()
        if not cutoff:
            await self.faults(index, "before_open", rec)
        opened = await self.admin("open")
        rec.epoch = int(opened["epoch"])
        self.progress.phase("declaring")
        await self.fleet.declare_phase(rec.epoch)
        live = self.fleet.live()
        expected = len(live)

        async def declared() -> bool:
            return int((await self.status())["counts"]["declarations"]) >= expected

        if not await wait_for(declared):
            rec.warnings.append("not every running node declared in time")
        rec.declarations = int((await self.status())["counts"]["declarations"])
        for h in live:
            p = h.plan
            rec.declared[p.name] = parse_strategy(p.strategy).declare(p.theta_at(rec.epoch))
        rec.durations["declare"] = time.monotonic() - t
        if not cutoff:
            await self.faults(index, "before_close", rec)
        t = time.monotonic()
        # The hosts' rebuttal window: the last audit reports are judged at this close only
        # once REBUTTAL_SECONDS whole seconds of the coordinator's clock (int(time.time()),
        # the same machine's) have passed since they were filed.
        if self.audited_at is not None:
            due = math.floor(self.audited_at) + REBUTTAL_SECONDS + 0.01
            await asyncio.sleep(max(0.0, due - time.time()))
        self.progress.phase("closing (the mechanism runs)")
        closed = await self.admin("close")
        rec.status = str(closed.get("status", ""))
        rec.newly_excluded = sorted(self.name_of.get(x, x) for x in closed.get("excluded", []))
        assert self.client is not None
        alloc = await self.client.allocation(rec.epoch)
        directory = await self.client.directory(rec.epoch)
        rec.q = list(alloc.q)
        rec.included = sorted(self.name_of[n] for n in alloc.included)
        # What each included node owes: contribution + restitution debt (the audit's sum).
        rec.owed = {self.name_of[n]: c for n, c in alloc.owed().items()}
        rec.debts = {self.name_of[n]: d for n, d in zip(alloc.included, alloc.debts,
                                                        strict=True) if d > 0
                     } if alloc.debts is not None else {}
        rec.expected_welfare = alloc.expected_welfare
        rec.durations["close"] = time.monotonic() - t
        if cutoff:
            return rec
        t = time.monotonic()
        creds = await asyncio.gather(*(self.credential(rec.epoch, n)
                                       for n in alloc.included))
        for node_id, env in zip(alloc.included, creds, strict=True):
            if env is None:
                rec.probation.append(self.name_of[node_id])
            else:
                self.credentials[self.name_of[node_id]] = env
        self.progress.phase("providing")
        await self.fleet.provide_phase(rec.epoch)
        included = set(rec.included)
        commits = {h.plan.name for h in live if h.plan.name in included
                   and parse_strategy(h.plan.strategy).commits}
        rec.expected_commitments = len(commits)
        hosts = self.fleet.live()

        async def provided() -> bool:
            # Stepped (in-process) hosts have provided once provide_phase returned; nodes
            # that run their own loop are asked.
            states = [] if self.fleet.stepped else await asyncio.gather(
                *(self.host_status(h) for h in hosts))
            if any(s is None or s.get("epoch") != rec.epoch
                   or s.get("included") != len(included) for s in states):
                return False
            st = await self.status()
            return int(st["counts"]["commitments"]) >= len(commits)

        if not await wait_for(provided):
            rec.warnings.append("not every running host opened its contribution in time")
        rec.commitments = int((await self.status())["counts"]["commitments"])
        rec.durations["provide"] = time.monotonic() - t
        await self.faults(index, "after_commit", rec)
        t = time.monotonic()
        entries = {self.name_of[e.node_id]: e for e in directory}
        shopping = await self.duties(rec)
        rec.attempts = await self.roam(index, rec, entries, shopping)
        rec.durations["roam"] = time.monotonic() - t
        t = time.monotonic()
        self.progress.phase("audit reports")
        rec.evidence_sent = await self.audit(rec)
        self.audited_at = time.time()
        rec.down_at_probe = sorted(n for n, h in self.fleet.nodes.items()
                                   if n in self.crashed or not h.alive or h.silent)
        t_probe = time.monotonic()
        probed = await self.admin("probe")
        rec.unanswered = sorted(self.name_of.get(n, n) for n in probed.get("unanswered", []))
        rec.durations["probe"] = time.monotonic() - t_probe
        await self.fleet.finish_phase(rec.epoch)
        states = await asyncio.gather(*(self.host_status(h) for h in self.fleet.live()))
        for h, s in zip(self.fleet.live(), states, strict=True):
            if s is not None:
                rec.hosts[h.plan.name] = s
        rec.durations["audit"] = time.monotonic() - t
        return rec

    async def credential(self, epoch: int, node_id: str) -> Envelope | None:
        """The included node's credential of ``epoch``; None if the coordinator holds it
        on probation (a key not established yet: it owes and hosts, but cannot roam)."""
        assert self.client is not None
        try:
            return await self.client.credential(epoch, node_id)
        except InkindError as exc:
            if exc.code == "probation":
                return None
            raise

    # --- roaming -----------------------------------------------------------------------

    def coverage(self, rec: EpochRecord, l: int) -> float:
        area = self.scenario.locations[l].area
        return min(1.0, from_micro(rec.q[l]) / area) if rec.q else 0.0

    def segments(self, rec: EpochRecord, l: int) -> list[tuple[float, str]]:
        """(upper end, host) of each included host's share of [0, 1) (scaled by f_l)."""
        hosts = sorted((n for n in rec.included if self.by_name[n].location == l),
                       key=lambda n: self.by_name[n].index)
        if not hosts:
            return []
        weights = [max(0, rec.owed.get(n, 0)) for n in hosts]
        total = sum(weights)
        if total <= 0:
            weights, total = [1] * len(hosts), len(hosts)
        out, acc = [], 0
        for n, w in zip(hosts, weights, strict=True):
            acc += w
            out.append((acc / total, n))
        return out

    def forged_credential(self, name: str, rec: EpochRecord) -> Envelope:
        """What a never-included roamer can show: a credential it signed itself."""
        ident = self.identities[name]
        now = int(time.time())
        cred = Credential(node_id=ident.node_id, public_key=ident.public_key, epoch=rec.epoch,
                          not_before=now - 1, expires=now + MAX_CREDENTIAL_LIFETIME // 2,
                          location=self.by_name[name].location)
        return seal(ident, cred)

    async def duties(self, rec: EpochRecord) -> list[tuple[str, str]]:
        """(shopper, host) of every duty the coordinator hands the running included
        nodes for this epoch, each asked with the node's own signed ``duty_request``.
        A refused or lost one is a warning: a missed duty costs only detection."""
        assert self.client is not None
        client = self.client
        sem = asyncio.Semaphore(AUDIT_CONCURRENCY)
        # Only credential holders shop (one on probation has no credential to ask with).
        probation = set(rec.probation)
        names = [n for n in rec.included if n not in self.crashed and n not in probation
                 and n in self.fleet.nodes and self.fleet.nodes[n].alive]

        async def ask_duty(name: str) -> list[tuple[str, str]]:
            ident = self.identities[name]
            req = seal(ident, DutyRequest(epoch=rec.epoch, node_id=ident.node_id,
                                          issued=int(time.time())))
            try:
                async with sem:
                    hosts = await client.duties(req)
            except (InkindError, aiohttp.ClientError, TimeoutError) as exc:
                rec.warnings.append(f"shopping duties of {name} refused: {exc}")
                return []
            return [(name, self.name_of[h]) for h in hosts if h in self.name_of]

        found = await asyncio.gather(*(ask_duty(n) for n in names))
        return [d for ds in found for d in ds]

    async def roam(self, index: int, rec: EpochRecord, entries: dict[str, DirectoryEntry],
                   shopping: list[tuple[str, str]] | None = None) -> list[AttemptResult]:
        """The roaming script's attempts of epoch ``index`` (returned), and the shoppers'
        requests ``shopping`` (shopper, host), each put at a seeded random place in its
        host's queue so that it comes in among the roamers (kept in ``rec.shopping``)."""
        attempts = list(self.script[index] if index < len(self.script) else [])
        n_script = len(attempts)
        # Roamers served as included: those with this epoch's credential (one on
        # probation has none; its attempts are recorded apart, AttemptResult.probation).
        included = set(rec.included) - set(rec.probation)
        probation = set(rec.probation)
        results: list[AttemptResult | None] = [None] * len(attempts)
        queues: dict[str, list[tuple[int, Attempt]]] = defaultdict(list)
        cover = [self.coverage(rec, l) for l in range(len(self.scenario.locations))]
        segs = [([end for end, _ in seg], [n for _, n in seg])
                for seg in (self.segments(rec, l) for l in range(len(self.scenario.locations)))]
        for k, a in enumerate(attempts):
            inc = a.roamer in included
            if a.roamer in self.crashed or not self.fleet.nodes[a.roamer].alive:
                results[k] = AttemptResult(roamer=a.roamer, location=a.location, included=inc,
                                           host=None, reason="not_running")
                continue
            f = cover[a.location]
            if a.u >= f or not segs[a.location][1]:
                results[k] = AttemptResult(roamer=a.roamer, location=a.location, included=inc,
                                           host=None, reason="no_coverage")
                continue
            x = a.u / f
            ends, names = segs[a.location]
            # The first segment whose upper end is above x (binary search: O(log N)).
            host = names[min(bisect_right(ends, x), len(names) - 1)]
            queues[host].append((k, a))
        rng = random.Random(f"shoppers:{self.options.seed}:{index}")
        for shopper, host in shopping or ():
            if host not in entries:
                continue
            k = len(attempts)
            attempts.append(Attempt(epoch=index, roamer=shopper,
                                    location=self.by_name[host].location, trip=-1,
                                    u=0.0, v=rng.random()))
            results.append(None)
            queue = queues[host]
            queue.insert(rng.randrange(len(queue) + 1), (k, attempts[k]))
        total, done = len(attempts), sum(r is not None for r in results)
        used: dict[tuple[str, str], int] = defaultdict(int)
        sem = asyncio.Semaphore(ROAM_CONCURRENCY)

        async def serve(host: str, items: list[tuple[int, Attempt]]) -> None:
            nonlocal done
            dead: str | None = None
            for k, a in items:
                inc = a.roamer in included
                if dead is not None and k < n_script:  # a shopper always asks itself
                    results[k] = AttemptResult(roamer=a.roamer, location=a.location,
                                               included=inc, host=host, reason=dead)
                else:
                    async with sem:
                        res = await self.attempt(a, host, entries[host], inc, used, rec)
                    results[k] = res
                    if res.reason in ("unreachable", "timeout") and k < n_script:
                        dead = res.reason  # the roamers' devices remember for this epoch
                done += 1
                self.progress.update(f"roaming {done}/{total}")

        self.progress.phase(f"roaming {done}/{total}")
        await asyncio.gather(*(serve(h, items) for h, items in queues.items()))
        rec.shopping = [r for r in results[n_script:] if r is not None]
        out = [r for r in results[:n_script] if r is not None]
        for r in out:
            r.probation = r.roamer in probation
        return out

    async def attempt(self, a: Attempt, host: str, entry: DirectoryEntry, included: bool,
                      used: dict[tuple[str, str], int], rec: EpochRecord) -> AttemptResult:
        """The roamer's device asks ``host`` at the endpoint and key the coordinator's
        directory ``entry`` publishes for it."""
        cred = self.credentials.get(a.roamer) or self.forged_credential(a.roamer, rec)
        kind = KINDS[self.scenario.kind]
        # a channel is asked whole; other kinds ask the scenario's amount
        amount = kind.granularity if kind.granularity > 1 else self.scenario.access.amount
        item = ""
        if kind.itemised:  # a file of the host's, by its hash: the amount is its size
            listing = self.files[host]
            item, size = listing[min(len(listing) - 1, int(a.v * len(listing)))]
            amount = max(1, size)
        elif kind.shares and included:  # at most what is left of the roamer's share
            left = rec.owed.get(a.roamer, 0) - used[(a.roamer, host)]
            amount = max(1, min(amount, left))
        res = AttemptResult(roamer=a.roamer, location=a.location, included=included, host=host,
                            reason="internal")
        url = self.host_url(host, entry)
        if url is None:
            res.reason = "unreachable"
            return res
        t0 = time.perf_counter()
        sent: list[Envelope] = []
        try:
            answer = await ask(self.session, url, kind=kind,
                               identity=self.identities[a.roamer], credential=cred,
                               host_id=entry.node_id, host_key=entry.public_key,
                               amount=amount, item=item, timeout=self.roam_timeout,
                               sent=sent)
        except TimeoutError:
            res.reason = "timeout"
            self.no_answer(a.roamer, entry.node_id, sent, included=included)
            return res
        except aiohttp.ClientError:
            res.reason = "unreachable"
            self.no_answer(a.roamer, entry.node_id, sent, included=included)
            return res
        if answer.evidence is None:
            self.no_answer(a.roamer, entry.node_id, sent, included=included)
        # The decision's latency: one POST of the access body (one exchange).
        res.latency_ms = (time.perf_counter() - t0) * 1000.0
        res.reason = answer.reason
        res.amount = answer.amount
        used[(a.roamer, host)] += answer.amount
        if answer.evidence is not None:
            self.evidence[a.roamer].append(answer.evidence)
        return res

    def no_answer(self, roamer: str, host_id: str, sent: list[Envelope], *,
                  included: bool) -> None:
        """Requests ``roamer`` sent ``host_id`` that got no signed answer, kept for its
        complaints. Only an included roamer complains: one not included this epoch signs
        with an earlier epoch's credential, and the coordinator owes it nothing."""
        if included:
            self.unanswered[roamer].extend((host_id, r) for r in sent)

    def host_url(self, host: str, entry: DirectoryEntry) -> str | None:
        """Where a roamer reaches ``host`` (None: nowhere); the directory ``entry`` is
        what the coordinator published for it."""
        return self.fleet.nodes[host].url

    async def audit(self, rec: EpochRecord) -> int:
        """Each roamer's reports, AUDIT_CONCURRENCY roamers at a time (the coordinator
        commits reports in groups: one at a time would wait a transaction each)."""
        assert self.client is not None
        client = self.client
        sent = 0
        evidence, self.evidence = self.evidence, defaultdict(list)
        sem = asyncio.Semaphore(AUDIT_CONCURRENCY)

        async def file(name: str, items: list[Envelope]) -> None:
            nonlocal sent
            ident = self.identities[name]
            for start in range(0, len(items), MAX_AUDIT_ITEMS):
                chunk = tuple(items[start:start + MAX_AUDIT_ITEMS])
                report = AuditReport(epoch=rec.epoch, reporter_id=ident.node_id, evidence=chunk)
                try:
                    async with sem:
                        await client.audit(seal(ident, report))
                    sent += len(chunk)
                except (InkindError, aiohttp.ClientError, TimeoutError) as exc:
                    rec.warnings.append(f"audit report of {name} refused: {exc}")

        await asyncio.gather(*(file(n, items) for n, items in sorted(evidence.items())))
        # Requests that got no signed answer: the roamer complains (protocol README §7,
        # step 7) and the coordinator relays each to its host.
        unanswered, self.unanswered = self.unanswered, defaultdict(list)
        for name, pending in sorted(unanswered.items()):
            ident = self.identities[name]
            for host_id, request in pending:
                try:
                    # A request that cannot make a complaint (not this epoch's, say) is
                    # skipped with a warning: one bad complaint never ends the run.
                    complaint = Complaint(epoch=rec.epoch, requester_id=ident.node_id,
                                          host_id=host_id, request=request)
                    await client.complain(seal(ident, complaint))
                    rec.complaints += 1
                except (InkindError, aiohttp.ClientError, TimeoutError) as exc:
                    rec.warnings.append(f"complaint of {name} refused: {exc}")
        return sent

    # --- the run -----------------------------------------------------------------------

    async def play(self) -> RunRecord:
        t0 = time.monotonic()
        try:
            await self.start()
            for i in range(self.n_epochs):
                if self.options.stop.is_set():
                    raise asyncio.CancelledError  # interrupted; see Options.stop
                rec = await self.play_epoch(i)
                self.record.epochs.append(rec)
                self.progress.log(self.summary_line(rec))
                if self.options.board is not None:
                    await self.show(rec)
            cut = await self.play_epoch(self.n_epochs, cutoff=True)
            self.record.epochs.append(cut)
            await self.fetch_exclusions()
        finally:
            self.progress.set_prefix("")
            self.progress.phase("stopping")
            await self.stop()
            self.record.wall_s = time.monotonic() - t0
        return self.record

    async def fetch_exclusions(self) -> None:
        """The coordinator's exclusions so far, with node names (the record's)."""
        st = await self.status()
        self.record.exclusions = [
            {**x, "node": self.name_of.get(x["node_id"], x["node_id"])}
            for x in st.get("excluded", [])]

    async def show(self, rec: EpochRecord) -> None:
        """Hand a played epoch to the live dashboard, as report.json will record it."""
        await self.fetch_exclusions()
        if self.report_context is None:
            self.report_context = ReportContext(self.scenario, self.options.seed,
                                                self.n_epochs)
        figures = await asyncio.to_thread(epoch_report, self.report_context, self.record, rec)
        figures = validate_epoch(figures).model_dump(mode="json")  # as report.json holds it
        self.options.board.epoch(figures, [
            {"node": x["node"], "epoch": x["detected_epoch"],
             "excluded_epoch": x["excluded_epoch"], "reason": x["reason"],
             "mechanism": self.mechanism} for x in self.record.exclusions])

    def summary_line(self, rec: EpochRecord) -> str:
        inc = [a for a in rec.attempts if a.included]
        exc = [a for a in rec.attempts if not a.included and not a.probation]
        g_inc = sum(a.reason == "granted" for a in inc)
        g_exc = sum(a.reason == "granted" for a in exc)
        qs = ", ".join(f"{loc.name} {from_micro(q):.2f}"
                       for loc, q in zip(self.scenario.locations, rec.q, strict=False))
        extra = f"; excluded now: {', '.join(rec.newly_excluded)}" if rec.newly_excluded else ""
        if rec.probation:
            extra += f"; on probation: {', '.join(rec.probation)}"
        faults = f"; faults: {'; '.join(rec.faults)}" if rec.faults else ""
        return (f"{self.mechanism} epoch {rec.epoch}: {len(rec.included)}/{rec.declarations} "
                f"included; Q: {qs}; included roamers served {g_inc}/{len(inc)}, "
                f"excluded {g_exc}/{len(exc)}{extra}{faults}")


async def play_all(scenario: Scenario, options: Options, runs: list[RunRecord]) -> None:
    """Play every mechanism of the scenario in turn; ``runs`` fills as they go (so an
    interrupted run still has its finished epochs)."""
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector) as session:
        for k, mech in enumerate(scenario.mechanisms):
            run_dir = options.run_root / mech
            if run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            player = Player(scenario, mech, options, k, run_dir, session)
            runs.append(player.record)
            await player.play()


def run_testbed(scenario: Scenario | str | Path, *, out: str | Path, seed: int | None = None,
                mode: str = "process", progress: Progress | None = None,
                epochs: int | None = None, plots: bool = True,
                board: Board | None = None, data_dir: str | Path | None = None
                ) -> dict[str, Any]:
    """Play ``scenario`` and write the report into ``out``; returns the report (a dict).
    ``board``: a live dashboard to follow the run (it is shown the report at the end);
    ``data_dir``: where keys, databases and logs go (``<data_dir>/testbed/<scenario>/
    <mechanism>``; default ``<out>/run/<mechanism>``).

    A KeyboardInterrupt stops everything cleanly, writes the report of the epochs played
    so far (``"interrupted": true``) and is raised again.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = Options(out=out_dir, seed=sc.seed if seed is None else seed, mode=mode,
                      progress=progress or Progress(enabled=False), epochs=epochs, plots=plots,
                      board=board,
                      state=None if data_dir is None else Path(data_dir) / "testbed" / sc.name)
    if board is not None:
        options.progress.listener = board.phase
    t0 = time.monotonic()
    runs: list[RunRecord] = []
    interrupted = False

    async def main() -> None:
        # Ctrl-C and SIGTERM end the run alike: the task is cancelled, so every ``finally``
        # stops what it started, and Options.stop is set in case a cancellation is lost.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            options.stop.set()
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, interrupt)
        await play_all(sc, options, runs)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    except FleetError as exc:
        raise TestbedError(str(exc)) from exc
    report = build_report(sc, options, runs, wall_s=time.monotonic() - t0,
                          interrupted=interrupted)
    write_report(report, out_dir, plots=plots)
    if board is not None:
        board.finish(report)
    if interrupted:
        raise KeyboardInterrupt
    return report


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


__all__ = ["AttemptResult", "EpochRecord", "NodePlan", "Options", "RunRecord", "run_testbed"]
