"""The coordinator's aiohttp service: a thin shell over :mod:`coordinator.epoch`.

Handlers read the body (bounded), open the envelope with :func:`protocol.open_envelope`
before anything else, call the pure core, persist its change record in one SQLite
transaction, apply it, and only then answer; there is no ``await`` between the check and
the apply, so requests never interleave inside one change. Declarations are group
committed: a checked one is queued (queued ones count as seen by later checks) and, once
the queue has stopped growing for a loop turn (:data:`FLUSH_TURNS` turns at most), one
loop callback persists the whole queue in one transaction, applies it and only then
acknowledges each (:meth:`Coordinator.flush_declarations`; a close flushes first).
Commitments and audit reports are group committed too (:meth:`Coordinator.submit`): each
is checked when its batch is flushed, against the state every earlier change has made,
and two that touch the same state (one node's commitment; one host's evidence) never
share a batch, so the outcome is that of committing them one by one -- in one fsync per
batch instead of one per request (an epoch has one of each per node). One
middleware turns every
:class:`protocol.InkindError` into ``{"code", "message"}`` with the class's HTTP status.
Time is read once per request from the injected ``clock``.

A background task (``auto_schedule``) closes the open epoch at its deadline and opens
the next after ``pause_seconds``; ``POST /v1/admin/open|close`` (bearer token) do the
same on demand. Coordinator probes (:mod:`coordinator.probe`): with the schedule, a second
task probes the hosts that owe something in the last closed epoch, ``probe_attempts``
rounds spread until the expected cut-off; ``POST /v1/admin/probe`` runs a round now. The
results are stored and read back at the cut-off. The mechanism runs in a worker thread
(``run_in_executor``), one solve at a time, while the core sits in its ``closing`` phase.

Endpoints: ``protocol/HTTP.md``, "Coordinator".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import HttpVersion10, web

from coordinator.allocation import MechanismRunner, former_names
from coordinator.config import BODY_SECONDS, IDLE_SECONDS, MAX_BODY_BYTES, CoordinatorConfig
from coordinator.epoch import (
    Audited,
    AuditState,
    Change,
    Closed,
    ComplaintRecord,
    Declared,
    EpochCore,
    EpochRecord,
    Phase,
    Settings,
)
from coordinator.http import JsonErrorRunner, error_for_status, error_response
from coordinator.probe import (
    ProbeResult,
    Target,
    probe_round,
    relay_complaint,
    round_times,
    targets,
)
from coordinator.shoppers import assign, epoch_secret
from coordinator.store import Store
from protocol import (
    MAX_CLOCK_SKEW,
    AuditReport,
    Commitment,
    Complaint,
    Declaration,
    DutyRequest,
    Envelope,
    Identity,
    InkindError,
    Message,
    Registration,
    ShoppingList,
    credential_digest,
    node_id_of,
    open_envelope,
    seal_bytes,
)
from protocol.encoding import MAX_SAFE_INTEGER
from protocol.envelope import envelope_size_limit
from protocol.errors import (
    ExpiredError,
    FutureEpochError,
    MalformedError,
    NoEpochError,
    NotIncludedError,
    NotYetValidError,
    OutOfRangeError,
    ProbationError,
    StaleEpochError,
    TooLargeError,
    UnauthorizedError,
    UnknownEpochError,
)
from protocol.fields import check_node_id

log = logging.getLogger(__name__)

Clock = Callable[[], int]
JSON = "application/json"
#: Closed epochs whose directory answers are kept (as bytes) at once.
DIRECTORY_EPOCHS = 2
#: Loop turns a declaration batch may wait for more declarations before it is committed
#: (:meth:`Coordinator._settle`): it waits only while it is still growing.
FLUSH_TURNS = 4


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop the coordinator is served on: uvloop's where it is installed (a
    dependency on POSIX systems), else asyncio's. Under the ingest benchmark uvloop's
    loop spends about a third less CPU per HTTP request than asyncio's; the handlers are
    the same, and the tests run them on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def wall_clock() -> int:
    """Unix time in whole seconds (the default clock)."""
    return int(time.time())


@dataclass(frozen=True, slots=True)
class _Submitted:
    """A change waiting for its batch: ``check`` makes it from the core's state then;
    ``touches`` names the state it reads and writes (no two in a batch share one)."""

    check: Callable[[], Change]
    touches: frozenset[Hashable]
    done: asyncio.Future[Change]


class Coordinator:
    """The service state: core, store, mechanism runner, clock and the epoch schedule."""

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        store: Store,
        identity: Identity,
        clock: Clock,
        runner: MechanismRunner | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.identity = identity
        self.clock = clock
        self.runner = runner or MechanismRunner(config.market, config.mechanism)
        self.settings = Settings(
            mechanism=self.runner.mechanism, payment=self.runner.payment,
            theta_bounds=self.runner.theta_bounds(), epoch_seconds=config.epoch_seconds,
            pause_seconds=config.pause_seconds, credential_grace=config.credential_grace,
            penalty=config.penalty, rebuttal_seconds=config.rebuttal_seconds,
            probation_epochs=config.probation_epochs)
        store.bind(coordinator_key=identity.public_key, mechanism=self.runner.mechanism,
                   former_names=former_names(self.runner.mechanism))
        self.core = EpochCore.restore(
            store.snapshot(identity.public_key), identity=identity, settings=self.settings)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechanism")
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        # When the last close happened, so a restarted schedule keeps the same pause.
        self.closed_at: int | None = (
            store.closed_at(self.core.epoch)
            if self.core.phase == Phase.CLOSED and self.core.epoch is not None else None)
        self._terms: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        # Directory answers per closed epoch, as bytes: the whole one (key None) and one
        # per location; built once from the store, dropped when a registration changes
        # (an endpoint may move) and kept for the last DIRECTORY_EPOCHS epochs only.
        self._directories: dict[int, dict[int | None, bytes]] = {}
        # Signed allocations as stored, per closed epoch (immutable once written): read
        # from the store once, not once per node asking; the last DIRECTORY_EPOCHS only.
        self._allocations: dict[int, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        # Group commit of declarations: checked ones wait here (not yet in the core) until
        # one transaction persists the whole batch; then each is applied and acknowledged.
        self._queue: list[tuple[Declared, asyncio.Future[None]]] = []
        self._queued_nodes: set[str] = set()
        self._queued_nonces: set[tuple[int, str]] = set()
        self._flush_handle: asyncio.Handle | None = None
        # Group commit of commitments and audit reports (submit / flush_submitted).
        self._submitted: list[_Submitted] = []
        self._submit_handle: asyncio.Handle | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()  # complaint relays in flight
        self._relay_lock = asyncio.Lock()  # one relay round at a time
        self._relay_wanted = False  # a background round is waiting to run
        # The mystery shoppers' duties of one epoch: (epoch, shopper -> hosts, included).
        self._duties: tuple[int, dict[str, tuple[str, ...]], frozenset[str]] | None = None
        # Each shopper's signed list of that epoch, once signed (at most one per included
        # node): a node asking again and again costs a verification, never a signature.
        self._lists: dict[str, bytes] = {}

    # -- epochs ------------------------------------------------------------------------

    async def terms(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The announcement's (fees, q), solved once from the priors, off the loop."""
        if self._terms is None:
            loop = asyncio.get_running_loop()
            self._terms = await loop.run_in_executor(
                self.executor, self.runner.announcement_terms)
        return self._terms

    async def open_epoch(self) -> EpochRecord:
        async with self.lock:
            fees, q = await self.terms()
            change = self.core.plan_open(self.clock(), fees=fees, q=q)
            self.store.persist(change)
            self.core.apply(change)
        log.info("epoch %d open until %d", change.record.epoch, change.record.deadline)
        self.wake.set()
        return change.record

    async def close_epoch(self) -> Closed:
        async with self.lock:
            self.flush_declarations()  # every accepted declaration takes part
            self.flush_submitted()  # and every commitment and report before the cut-off
            audit = self.core.audit
            plan = self.core.begin_close(
                self.clock(), () if audit is None else self.store.probes(audit.epoch))
            assert self.core.current is not None
            ann = self.core.current.announcement
            # Announced terms are binding (coordinator/allocation.py).
            run = functools.partial(self.runner.run, posted=(ann.fees, ann.q))
            try:
                loop = asyncio.get_running_loop()
                outcome = await loop.run_in_executor(self.executor, run, plan.participants)
                change = self.core.finish_close(plan, outcome)
                self.store.persist(change)
            except BaseException:
                self.core.abort_close(plan)
                raise
            self.core.apply(change)
            self.closed_at = change.closed_at
        log.info("epoch %d closed: %d of %d included (%s); %d newly excluded",
                 change.epoch, len(change.allocation.included), len(plan.participants),
                 change.status, len(change.exclusions))
        self.wake.set()
        return change

    async def schedule(self) -> None:
        """Close at the deadline, open after the pause, forever (auto-scheduling)."""
        while True:
            self.wake.clear()
            try:
                delay = await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("epoch schedule step failed; retrying in 1 s")
                delay = 1.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=delay)

    async def _tick(self) -> float:
        core, now = self.core, self.clock()
        if core.phase == Phase.IDLE:
            await self.open_epoch()
            return 0.0
        if core.phase == Phase.OPEN:
            assert core.current is not None
            if now >= core.current.deadline:
                await self.close_epoch()
                return 0.0
            return max(0.05, float(core.current.deadline - now))
        if core.phase == Phase.CLOSED:
            due = (self.closed_at if self.closed_at is not None else now) + \
                self.config.pause_seconds
            if now >= due:
                await self.open_epoch()
                return 0.0
            return max(0.05, float(due - now))
        return 0.2  # closing: the close in progress will wake us

    # -- probes (coordinator/probe.py) ------------------------------------------------

    async def probe(self, attempts: int, *, skip_answered: bool = False) -> list[ProbeResult]:
        """Probe the owing hosts of the last closed epoch now; store and return results."""
        audit = self.core.audit
        if audit is None or self.config.probe_attempts == 0:
            return []
        epoch = audit.epoch
        hosts = targets(audit.allocation, {
            n: r.registration for n, r in self.core.nodes.items()})
        if skip_answered:
            answered = {p.node_id for p in self.store.probes(epoch) if p.answered}
            hosts = {n: e for n, e in hosts.items() if n not in answered}
        results = await probe_round(epoch, hosts, clock=self.clock, attempts=attempts,
                                    timeout=self.config.probe_timeout)
        self.store.record_probes(results)
        async with self._relay_lock:
            await self.relay(epoch)
        missed = sorted({r.node_id[:16] for r in results if not r.answered})
        if missed:
            log.info("epoch %d probes: %d unanswered (%s...)", epoch, len(missed),
                     ", ".join(missed))
        return results

    def shopping_list(self, req: DutyRequest) -> bytes:
        """The signed ``shopping_list`` answering ``req`` (README section 7, step 8): the
        hosts ``req.node_id`` shops at in the audited epoch (possibly none). The shell
        opened ``req`` with the registered keys, so its signer is ``req.node_id``.
        Refused: ``issued`` off the coordinator's clock by more than ``MAX_CLOCK_SKEW``
        (``expired``, ``not_yet_valid``); an epoch not being audited (``stale_epoch``,
        ``future_epoch``); a node not included in it (``not_included``) or included on
        probation, without a credential to ask with (``probation``). A shopper's list is
        signed once per epoch and kept, so repeated requests cost no signature."""
        now = self.clock()
        if req.issued < now - MAX_CLOCK_SKEW:
            raise ExpiredError(f"duty request issued {now - req.issued} s ago")
        if req.issued > now + MAX_CLOCK_SKEW:
            raise NotYetValidError(f"duty request issued {req.issued - now} s from now")
        audit = self.core.audit
        if audit is None or self.core.phase == Phase.CLOSING or req.epoch > audit.epoch:
            if audit is not None and req.epoch < audit.epoch:
                raise StaleEpochError(f"epoch {req.epoch} is no longer audited")
            raise FutureEpochError(f"epoch {req.epoch} has not closed yet")
        if req.epoch < audit.epoch:
            raise StaleEpochError(f"epoch {req.epoch} is no longer audited")
        duties = self.duties(audit)
        if req.node_id not in duties[1]:
            if req.node_id in audit.members:
                raise ProbationError(f"node {req.node_id[:16]}... holds no credential for "
                                     f"epoch {req.epoch} (probation): it cannot shop")
            raise NotIncludedError(
                f"node {req.node_id[:16]}... was not included in epoch {req.epoch}")
        signed = self._lists.get(req.node_id)
        if signed is None:
            signed = self._lists[req.node_id] = seal_bytes(self.identity, ShoppingList(
                epoch=req.epoch, shopper_id=req.node_id, hosts=duties[0].get(req.node_id, ())))
        return signed

    def duties(self, audit: AuditState
               ) -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:
        """(shopper -> hosts, possible shoppers) of the audited epoch, drawn once per
        epoch (:func:`coordinator.shoppers.assign`, keyed by the coordinator's secret) and
        kept for that epoch only. Shoppers are the included nodes holding a credential
        (one on probation has none, so it cannot ask like a roamer); hosts are all that
        owe something, those on probation too."""
        allocation = audit.allocation
        if self._duties is None or self._duties[0] != allocation.epoch:
            home = {n: r.registration.home_location for n, r in self.core.nodes.items()}
            roamers = {n: home[n] for n in allocation.included
                       if n in home and n in audit.windows}
            hosts = {n: home[n] for n, owed in allocation.owed().items()
                     if owed > 0 and n in home}
            drawn = assign(epoch_secret(self.identity, allocation.epoch), hosts, roamers,
                           self.config.shoppers_per_host)
            self._duties = (allocation.epoch, drawn, frozenset(roamers))
            self._lists = {}
        return self._duties[1], self._duties[2]

    async def relay(self, epoch: int | None = None) -> int:
        """Relay every complaint of the audited epoch whose host has not answered yet
        (README section 7, step 7); store each signed answer as evidence, dated by its
        complaint's filing (the accusation's time, for the rebuttal window), and count
        every attempt. Returns how many were answered."""
        audit = self.core.audit
        if audit is None or self.config.probe_attempts == 0 or (
                epoch is not None and audit.epoch != epoch):
            return 0
        pending = audit.pending()
        if not pending:
            return 0
        hosts = {n: r.registration for n, r in self.core.nodes.items()}

        async def one(session: aiohttp.ClientSession, rec: ComplaintRecord
                      ) -> tuple[ComplaintRecord, Envelope | None]:
            c = rec.complaint
            raw = self.store.credential(c.epoch, c.requester_id)
            reg = hosts.get(c.host_id)
            if raw is None or reg is None:
                return rec, None
            target = Target(endpoint=reg.endpoint or None, public_key=reg.public_key)
            return rec, await relay_complaint(
                session, target, c, Envelope.from_bytes(raw, max_size=MAX_BODY_BYTES),
                timeout=self.config.probe_timeout)

        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(one(session, rec) for rec in pending))
        answered = 0
        for rec, answer in results:
            c = rec.complaint
            try:
                change = self.core.check_relay(c.epoch, rec.key)
                self.store.persist(change)
                self.core.apply(change)
                if answer is not None:
                    report = AuditReport(epoch=c.epoch, reporter_id=c.host_id,
                                         evidence=(answer,))
                    filed = self.core.check_audit(c.host_id, report, now=rec.filed_at,
                                                  at=self.clock())
                    self.store.persist(filed)
                    self.core.apply(filed)
                    answered += 1
            except InkindError as exc:  # the epoch's audit closed meanwhile
                log.info("relay of a complaint against %s dropped: %s", c.host_id[:16], exc)
        return answered

    async def probe_schedule(self) -> None:
        """``probe_attempts`` rounds per closed epoch, evenly until the expected cut-off."""
        done: set[tuple[int, int]] = set()
        span = self.config.pause_seconds + self.config.epoch_seconds
        while True:
            delay = 1.0
            try:
                audit = self.core.audit
                closed_at = None if audit is None else self.store.closed_at(audit.epoch)
                if audit is not None and closed_at is not None:
                    times = round_times(closed_at, span, self.config.probe_attempts)
                    for k, due in enumerate(times):
                        if (audit.epoch, k) in done:
                            continue
                        now = self.clock()
                        if now >= due:
                            done.add((audit.epoch, k))
                            await self.probe(1, skip_answered=True)
                            delay = 0.0
                        else:
                            delay = min(delay, float(due - now))
                        break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("probe round failed")
            await asyncio.sleep(max(0.05, delay) if delay > 0 else 0)

    # -- declarations (group commit) -----------------------------------------------------

    def declare(self, raw: bytes, decl: Declaration) -> asyncio.Future[None]:
        """Check ``decl`` now (queued ones count as seen) and queue it; the future is done
        once its batch is committed and applied. A refused declaration raises here."""
        change = self.core.check_declaration(
            decl, raw, self.clock(), queued_nonces=self._queued_nonces,
            queued_nodes=self._queued_nodes)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((change, done))
        self._queued_nodes.add(decl.node_id)
        self._queued_nonces.add((decl.epoch, decl.nonce))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._settle, 0, 0)
        return done

    def _settle(self, size: int, turns: int) -> None:
        """Flush once a loop turn has passed without the queue growing, or after
        :data:`FLUSH_TURNS` turns. Declarations read in the same few turns (aiohttp takes
        two per request: the connection's task, then the request's) join one batch, so
        a burst shares one transaction and one fsync instead of several; a turn costs no
        timer and no wait when nothing else is ready. ``size``: the queue's length at the
        last turn; ``turns``: the turns waited so far."""
        if turns < FLUSH_TURNS and len(self._queue) != size:
            self._flush_handle = asyncio.get_running_loop().call_soon(
                self._settle, len(self._queue), turns + 1)
        else:
            self.flush_declarations()

    def flush_declarations(self) -> None:
        """Persist the queue in one transaction, apply it, then resolve each future.

        Synchronous on the event loop, so no other change interleaves. If the batch
        cannot be written, each declaration is retried alone, so one failure does not
        refuse the others."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._queue = self._queue, []
        try:
            self._commit_batch(batch)
        finally:
            self._queued_nodes.clear()
            self._queued_nonces.clear()

    # -- commitments and audit reports (group commit) ------------------------------------

    def submit(self, check: Callable[[], Change], touches: frozenset[Hashable]
               ) -> asyncio.Future[Change]:
        """Queue a change for the next batch; the future is its checked change once that
        batch is committed and applied, or the check's refusal. ``check`` runs at the
        flush (synchronously, after every earlier batch was applied)."""
        done: asyncio.Future[Change] = asyncio.get_running_loop().create_future()
        self._submitted.append(_Submitted(check, touches, done))
        if self._submit_handle is None:
            self._submit_handle = asyncio.get_running_loop().call_soon(self.flush_submitted)
        return done

    def flush_submitted(self) -> None:
        """Check, persist (one transaction per batch) and apply what was submitted.

        Synchronous on the event loop. In submission order, each change is checked
        against the core as every earlier batch left it; one that touches what an earlier
        one of the batch touched waits for the next batch, so its check sees that one
        applied: the same outcome as one transaction each. A refused check refuses only
        its own request; a batch that cannot be written is retried change by change."""
        if self._submit_handle is not None:
            self._submit_handle.cancel()
            self._submit_handle = None
        pending, self._submitted = self._submitted, []
        while pending:
            batch: list[tuple[Change, asyncio.Future[Change]]] = []
            later: list[_Submitted] = []
            taken: set[Hashable] = set()
            for item in pending:
                if item.done.done():  # its request was cancelled: nothing to answer
                    continue
                if not taken.isdisjoint(item.touches):
                    later.append(item)
                    continue
                taken |= item.touches
                try:
                    change = item.check()
                except Exception as exc:  # a refusal: that request's answer
                    item.done.set_exception(exc)
                    continue
                batch.append((change, item.done))
            self._commit_batch(batch)
            pending = later

    def _commit_batch(self, batch: Sequence[tuple[Change, asyncio.Future[Any]]]) -> None:
        """Persist ``batch`` in one transaction, apply it, then resolve each future with
        its change; if it cannot be written, each change is retried alone (one failure
        does not refuse the others) and a failed one's future gets the error."""
        if not batch:
            return
        failed: dict[int, Exception] = {}
        try:
            self.store.persist_many([change for change, _ in batch])
        except Exception:
            for i, (change, _) in enumerate(batch):
                try:
                    self.store.persist(change)
                except Exception as exc:
                    failed[i] = exc
        for i, (change, done) in enumerate(batch):
            err = failed.get(i)
            if err is None:
                self.core.apply(change)
                if not done.done():
                    done.set_result(change)
            elif not done.done():
                done.set_exception(err)

    async def start(self) -> None:
        if self.config.auto_schedule and self._task is None:
            self._task = asyncio.create_task(self.schedule(), name="epoch-schedule")
        if (self.config.auto_schedule and self.config.probe_attempts > 0
                and self._probe_task is None):
            self._probe_task = asyncio.create_task(self.probe_schedule(), name="probes")

    def schedule_relay(self, epoch: int) -> None:
        """Relay the pending complaints of ``epoch`` soon, in the background. Coalesced:
        one relay round runs at a time and at most one more waits (it will relay every
        complaint filed meanwhile), so a burst of complaints costs each host one answer
        per complaint and round, not one per complaint filed since."""
        if self._relay_wanted:
            return
        self._relay_wanted = True

        async def run() -> None:
            async with self._relay_lock:
                self._relay_wanted = False
                await self.relay(epoch)

        self.background(run())

    def background(self, work: Awaitable[Any]) -> None:
        """Run ``work`` (a relay) without blocking the answer; failures are logged, and
        :meth:`stop` cancels what is still running."""

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background relay failed")

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush_declarations()
        self.flush_submitted()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- the allocation and the directory ----------------------------------------------

    def allocation(self, epoch: int) -> bytes:
        """The signed allocation envelope of ``epoch`` as stored (one store read per
        epoch); ``unknown_epoch`` while it has none."""
        raw = self._allocations.get(epoch)
        if raw is None:
            raw = self.store.allocation(epoch)
            if raw is None:
                raise UnknownEpochError(f"epoch {epoch} has no allocation")
            self._allocations[epoch] = raw
            for old in sorted(self._allocations)[:-DIRECTORY_EPOCHS]:
                del self._allocations[old]
        return raw

    def directory(self, epoch: int, location: int | None) -> bytes:
        """``{"epoch", "nodes"}`` of ``epoch`` (hosts of ``location`` only, if given) as
        JSON bytes; one store query per epoch, not per request. ``unknown_epoch`` if the
        epoch has no allocation, ``out_of_range`` for a location outside the market."""
        if location is not None and location >= self.settings.n_locations:
            raise OutOfRangeError(f"location {location}: the market has "
                                  f"{self.settings.n_locations} locations")
        built = self._directories.get(epoch)
        if built is None:
            self.allocation(epoch)  # unknown_epoch before the close
            rows = self.store.directory(epoch)
            built = {None: json.dumps({"epoch": epoch, "nodes": rows}).encode()}
            for loc in range(self.settings.n_locations):
                here = [r for r in rows if r["location"] == loc]
                built[loc] = json.dumps({"epoch": epoch, "location": loc,
                                         "nodes": here}).encode()
            self._directories[epoch] = built
            for old in sorted(self._directories)[:-DIRECTORY_EPOCHS]:
                del self._directories[old]
        return built[location]

    def forget_directories(self) -> None:
        """A registration changed: directories are rebuilt on the next request."""
        self._directories.clear()

    # -- the status page ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        core = self.core
        audit = core.audit
        return {
            "coordinator_key": self.identity.public_key,
            "epoch": core.epoch,
            "phase": core.phase.value,
            "deadline": None if core.current is None else core.current.deadline,
            "mechanism": self.settings.mechanism,
            "payment": self.settings.payment,
            "auto_schedule": self.config.auto_schedule,
            "counts": {
                "nodes": len(core.nodes),
                "declarations": len(core.declarations),
                "audit_epoch": None if audit is None else audit.epoch,
                "included": 0 if audit is None else len(audit.allocation.included),
                "commitments": 0 if audit is None else len(audit.commitments),
                "evidence": 0 if audit is None else len(audit.evidence),
                # Probation (README "Probation"): included in the audited epoch without a
                # credential; keys established (delivered in enough audited epochs).
                "probation": 0 if audit is None else (
                    len(audit.allocation.included) - len(audit.windows)),
                "established": core.n_established,
            },
            "probation_epochs": self.settings.probation_epochs,
            "last_close": core.last_status,
            # Offences of the recent history (penalty.history_epochs), each with the
            # epochs it keeps its node out: excluded_epoch … excluded_until.
            "excluded": [
                {"node_id": s.offence.node_id, "excluded_epoch": s.offence.excluded_epoch,
                 "excluded_until": s.last_epoch, "detected_epoch": s.offence.detected_epoch,
                 "reason": s.offence.reason, "detail": s.offence.detail}
                for s in core.sanctions
            ],
        }


COORDINATOR: web.AppKey[Coordinator] = web.AppKey("coordinator", Coordinator)
#: Seconds a request body may take to arrive (:func:`read_body`).
BODY_SECONDS_KEY: web.AppKey[float] = web.AppKey("body_seconds", float)


# --- helpers -----------------------------------------------------------------------------


@functools.cache
def _limit(cls: type[Message]) -> int:
    """The largest body an endpoint taking ``cls`` reads (a constant of the type)."""
    return min(envelope_size_limit(cls.MAX_PAYLOAD_BYTES), MAX_BODY_BYTES)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused as ``too_large`` before reading past ``limit`` bytes, and
    as ``malformed`` (the connection closed) if it has not arrived within the app's
    ``body_seconds`` (:func:`make_app`): a trickled body cannot hold a connection."""
    length = request.content_length  # parsed from the header on every access
    if length is not None and length > limit:
        raise TooLargeError(f"body of {length} bytes exceeds {limit}")
    if length is not None and request.content.is_eof():
        # The whole body has arrived (a small one comes with its head, and the parser
        # delivers exactly Content-Length bytes): it is taken as it is, with no timer
        # armed (about 4 µs of CPU per request) and no copy.
        return request.content.read_nowait()
    seconds = request.app[BODY_SECONDS_KEY]
    try:
        async with asyncio.timeout(seconds):
            if length is not None:
                # The parser delivers at most Content-Length bytes: one read, no loop.
                return await request.read()
            buf = bytearray()
            async for chunk in request.content.iter_chunked(64 * 1024):
                buf += chunk
                if len(buf) > limit:
                    raise TooLargeError(f"body exceeds {limit} bytes")
            return bytes(buf)
    except TimeoutError:
        if request.transport is not None:
            request.transport.close()  # a slow sender loses its connection
        raise MalformedError(f"body not received within {seconds} s") from None


def _int_arg(request: web.Request, name: str) -> int:
    text = request.match_info[name]
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise OutOfRangeError(f"{name}: a decimal integer without leading zeros")
    if len(text) > 16 or int(text) > MAX_SAFE_INTEGER:
        raise OutOfRangeError(f"{name}: out of range")
    return int(text)


def _epoch_arg(request: web.Request) -> int:
    return _int_arg(request, "epoch")


def _json(answer: dict[str, Any]) -> web.Response:
    """A small JSON answer (``web.json_response`` without its text round trip)."""
    return web.Response(body=orjson.dumps(answer), content_type=JSON)


def _envelope(raw: bytes) -> web.Response:
    return web.Response(body=raw, content_type=JSON)


def _coordinator(request: web.Request) -> Coordinator:
    return request.app[COORDINATOR]


# --- handlers ----------------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    raw = await read_body(request, _limit(Registration))
    _, reg = open_envelope(raw, Registration, trusted=None)
    c = _coordinator(request)
    change = c.core.check_registration(reg, raw, now=c.clock())
    if change is not None:
        c.store.persist(change)
        c.core.apply(change)
        c.forget_directories()
    return _json({"node_id": reg.node_id, "epoch": reg.epoch})


async def announcement(request: web.Request) -> web.Response:
    current = _coordinator(request).core.current
    if current is None:
        raise NoEpochError("no epoch has been opened yet")
    return _envelope(current.envelope)


async def declare(request: web.Request) -> web.Response:
    limit = _limit(Declaration)
    raw = await read_body(request, limit)
    c = _coordinator(request)
    _, decl = open_envelope(raw, Declaration, trusted=c.core.keys, max_size=limit)
    await c.declare(raw, decl)  # durable (group commit) before it is acknowledged
    return _json({"epoch": decl.epoch, "node_id": decl.node_id, "accepted": 1})


async def allocation(request: web.Request) -> web.Response:
    return _envelope(_coordinator(request).allocation(_epoch_arg(request)))


async def credential(request: web.Request) -> web.Response:
    epoch = _epoch_arg(request)
    node_id = check_node_id("node_id", request.match_info["node_id"])
    c = _coordinator(request)
    c.allocation(epoch)  # unknown_epoch before the close
    raw = c.store.credential(epoch, node_id)
    if raw is None and c.store.on_probation(epoch, node_id):
        raise ProbationError(
            f"node {node_id[:16]}... is included in epoch {epoch} and owes its "
            "contribution, but gets no credential until an audit of an epoch in which it "
            "owed something has found it delivering (probation of new keys)")
    if raw is None:
        raise NotIncludedError(f"node {node_id[:16]}... was not included in epoch {epoch}")
    return _envelope(raw)


async def directory(request: web.Request) -> web.Response:
    """``GET /v1/directory/{epoch}`` and ``GET /v1/directory/{epoch}/{location}``."""
    epoch = _epoch_arg(request)
    location = (None if "location" not in request.match_info
                else _int_arg(request, "location"))
    return _envelope(_coordinator(request).directory(epoch, location))


async def commit(request: web.Request) -> web.Response:
    raw = await read_body(request, _limit(Commitment))
    c = _coordinator(request)
    _, commitment = open_envelope(raw, Commitment, trusted=c.core.keys)
    # Touches the node's commitment (the highest counts).
    await c.submit(functools.partial(c.core.check_commitment, commitment, raw),
                   frozenset({("commitment", commitment.node_id)}))
    return web.json_response({"accepted": 1})


async def audit(request: web.Request) -> web.Response:
    raw = await read_body(request, _limit(AuditReport))
    c = _coordinator(request)
    signer, report = open_envelope(raw, AuditReport, trusted=c.core.keys)
    # Touches the evidence and the quota of each host whose item it carries (an item
    # is signed by the host it names: protocol.verify.open_evidence). Filed now: the
    # request's time, not the batch's.
    change = await c.submit(
        functools.partial(c.core.check_audit, node_id_of(signer), report, now=c.clock()),
        frozenset(("host", env.signer) for env in report.evidence))
    assert isinstance(change, Audited)
    return web.json_response({"accepted": change.n_items})


async def complain(request: web.Request) -> web.Response:
    """``POST /v1/complaints``: a roamer's signed complaint (README section 7, step 7).
    Answers ``{"accepted": 1, "answer": ENVELOPE | null}``: the host's signed answer to
    that request once the coordinator holds it (the same complaint may be posted again
    to fetch it: idempotent). A new complaint is relayed to its host at once."""
    raw = await read_body(request, _limit(Complaint))
    c = _coordinator(request)
    _, complaint = open_envelope(raw, Complaint, trusted=c.core.keys)
    cred = c.store.credential(complaint.epoch, complaint.requester_id)
    digest = None if cred is None else credential_digest(
        Envelope.from_bytes(cred, max_size=MAX_BODY_BYTES))
    change = c.core.check_complaint(complaint, raw, now=c.clock(), credential_digest=digest)
    if change is not None:
        c.store.persist(change)
        c.core.apply(change)
        if c.config.probe_attempts > 0:
            c.schedule_relay(complaint.epoch)
    answer = c.store.answer(complaint.epoch, complaint.host_id, complaint.requester_id,
                            complaint.nonce)
    return web.json_response({
        "accepted": 1,
        "answer": None if answer is None else json.loads(answer)})


async def duties(request: web.Request) -> web.Response:
    """``POST /v1/duties``: an included node's signed ``duty_request``, answered with its
    own signed ``shopping_list`` (README section 7, step 8). Reads nothing but the core."""
    raw = await read_body(request, _limit(DutyRequest))
    c = _coordinator(request)
    _, req = open_envelope(raw, DutyRequest, trusted=c.core.keys)
    return _envelope(c.shopping_list(req))


async def status(request: web.Request) -> web.Response:
    return web.json_response(_coordinator(request).status())


def _authorize(request: web.Request) -> None:
    token = _coordinator(request).config.admin_token
    given = request.headers.get("Authorization", "")
    # surrogateescape: a header with undecodable bytes must compare unequal, not crash.
    if token is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                f"Bearer {token}".encode()):
        raise UnauthorizedError("admin actions need Authorization: Bearer <token>")


async def admin_open(request: web.Request) -> web.Response:
    _authorize(request)
    record = await _coordinator(request).open_epoch()
    return web.json_response({"epoch": record.epoch, "phase": "open",
                              "deadline": record.deadline})


async def admin_close(request: web.Request) -> web.Response:
    _authorize(request)
    change = await _coordinator(request).close_epoch()
    return web.json_response({
        "epoch": change.epoch, "phase": "closed", "included": len(change.allocation.included),
        "excluded": [x.node_id for x in change.exclusions], "status": change.status})


async def admin_probe(request: web.Request) -> web.Response:
    _authorize(request)
    c = _coordinator(request)
    audit = c.core.audit
    results = await c.probe(c.config.probe_attempts)
    probed: dict[str, bool] = {}
    for r in results:
        probed[r.node_id] = probed.get(r.node_id, False) or r.answered
    return web.json_response({
        "epoch": None if audit is None else audit.epoch,
        "enabled": c.config.probe_attempts > 0,
        "probes": [{"node_id": r.node_id, "time": r.time, "answered": r.answered}
                   for r in results],
        "unanswered": sorted(n for n, ok in probed.items() if not ok)})


# --- the app -----------------------------------------------------------------------------


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The one place errors become ``{"code", "message"}`` with their HTTP status."""
    try:
        if request.version < HttpVersion10:
            # HTTP/0.9 (a request line without a version) has no status line or headers
            # to carry the protocol's answers: the binding is HTTP/1.x (protocol/HTTP.md).
            raise MalformedError("HTTP/1.0 or HTTP/1.1 required")
        return await handler(request)
    except InkindError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"no such path {request.path[:100]}",
                   405: f"{request.method} is not allowed here",
                   413: "body too large"}.get(exc.status, exc.reason)
        return error_response(error_for_status(exc.status, message))
    except ConnectionResetError:
        # The client went away mid-request (aiohttp's body reader raises this): its
        # fault, not ours; the answer has nobody to reach and is dropped.
        log.debug("client closed the connection during %s %s", request.method, request.path)
        return error_response(MalformedError("connection closed before the body ended"))
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(None)


def make_runner(app: web.Application, *, idle_seconds: float = IDLE_SECONDS,
                **kwargs: Any) -> web.AppRunner:
    """The runner the coordinator is served with: aiohttp's, except that requests its
    HTTP parser refuses are answered in the protocol's error shape too
    (:mod:`coordinator.http`), and a connection without a whole request head for
    ``idle_seconds`` (from its start or its last answer: silent, trickled heads, idle
    keep-alive) is closed. ``kwargs`` go to ``web.AppRunner``."""
    return JsonErrorRunner(app, keepalive_timeout=idle_seconds, **kwargs)


def make_app(
    config: CoordinatorConfig,
    *,
    store: Store,
    identity: Identity,
    clock: Clock = wall_clock,
    runner: MechanismRunner | None = None,
    body_seconds: float = BODY_SECONDS,
) -> web.Application:
    """The coordinator app. The store is the caller's to close; the schedule task and the
    mechanism thread start and stop with the app. ``runner`` lets tests share solved
    mechanisms between apps; a request body must arrive within ``body_seconds``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[BODY_SECONDS_KEY] = body_seconds
    coordinator = Coordinator(config, store=store, identity=identity, clock=clock,
                              runner=runner)
    app[COORDINATOR] = coordinator

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await coordinator.start()
        yield
        await coordinator.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/register", register)
    app.router.add_get("/v1/announcement", announcement)
    app.router.add_post("/v1/declarations", declare)
    app.router.add_get("/v1/allocation/{epoch}", allocation)
    app.router.add_get("/v1/credential/{epoch}/{node_id}", credential)
    app.router.add_get("/v1/directory/{epoch}", directory)
    app.router.add_get("/v1/directory/{epoch}/{location}", directory)
    app.router.add_post("/v1/commitments", commit)
    app.router.add_post("/v1/audit", audit)
    app.router.add_post("/v1/complaints", complain)
    app.router.add_post("/v1/duties", duties)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/admin/open", admin_open)
    app.router.add_post("/v1/admin/close", admin_close)
    app.router.add_post("/v1/admin/probe", admin_probe)
    return app
