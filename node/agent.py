"""The node's epoch pump: :class:`Agent` does the I/O that :class:`node.epoch.EpochMachine`
asks for (DESIGN "One epoch, end to end", the node's side).

Each call of :meth:`Agent.run_epoch_step` takes the machine's next action at the clock's
``now`` and does it:

1. ``register``: the signed ``registration`` (key, home location, capacity, kind, endpoint);
2. ``poll``: the signed announcement; a newer epoch starts its record, and its
   declaration follows in the same step;
3. ``declare``: θ as the strategy says (truthful by default);
4. ``provide``: once the epoch is closed, the signed allocation and the node's credential
   (if included); then the contribution opened on the host (:class:`node.host.Host`) and
   a signed ``commitment`` -- unless the strategy free-rides;
5. ``roam``: for scripted or random moves to other locations, ask a host there for access
   and keep the signed receipts and refusals. The directory (every included host) is
   fetched here, once per epoch and only if the node has somewhere to go, so a node that
   does not roam never downloads it;
6. ``report``: them and the host's ledger, in signed audit reports, and a complaint
   about every request that got no signed answer (the coordinator relays it to the
   host, protocol README section 7, step 7). Receipts the host signs after that are
   filed at its next step (:meth:`Agent.file_ledger`).

A step returns what it did (``registered``, ``declared``, ``announced``, ``provided``,
``roamed``, ``reported``) or ``waiting`` (nothing to do until the coordinator moves on)
or ``error`` (a network failure or an unexpected refusal, logged; the step is retried),
so tests and the in-process testbed drive nodes step by step with an injected clock;
:meth:`Agent.run` loops until stopped. Only the agent moves the host to a new epoch: the
node's service decides every request on what the host holds (a credential of an epoch
the host does not enforce yet is refused ``future_epoch``; the roamer may ask again).

The agent keeps no state on disk: a restarted node registers again (idempotent) and
joins at the current epoch. It is built from one :class:`NodeSpec`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from node.client import (
    AccessAnswer,
    CoordinatorClient,
    Directory,
    DirectoryEntry,
    Outcome,
    PeerClient,
    base_url,
    make_access_request,
)
from node.epoch import (
    Action,
    EpochMachine,
    EpochProgress,
    provision,
    roam_hosts,
    roam_locations,
)
from node.host import Host
from node.resources import Tariff, node_kind
from node.strategy import Strategy, Truthful
from protocol import (
    MICRO,
    AccessBody,
    Allocation,
    AuditReport,
    Commitment,
    Complaint,
    Declaration,
    DutyRequest,
    Envelope,
    EpochAnnouncement,
    Identity,
    InkindError,
    Registration,
    seal,
)
from protocol.kinds import Answer
from protocol.messages import MAX_AUDIT_ITEMS

#: Complaints a roamer keeps to file (the coordinator takes at most 32 per epoch).
MAX_COMPLAINTS = 32

log = logging.getLogger("inkind.node.agent")

Clock = Callable[[], int]
#: Micro-units a roamer asks per access by default (coverage, compute): a tenth of a unit,
#: so that one host's contribution serves several roamers. A channel is always one.
DEFAULT_ROAM_AMOUNT = MICRO // 10
#: Refusals of a declaration that end this epoch's declaring (the coordinator's clock or
#: epoch disagrees: too late); any other refusal is an error and the step is retried.
_TOO_LATE = frozenset({"epoch_closed", "stale_epoch", "future_epoch"})
_NETWORK = (aiohttp.ClientError, TimeoutError)
#: Refusals of a registration that will recur however often it is sent: the node's own
#: configuration is wrong (the CLI ends with a clear message and exit status 4).
PERMANENT = frozenset({"out_of_range", "malformed", "wrong_type", "missing_field",
                       "unknown_field", "bad_signature", "wrong_signer", "unauthorized"})


class PermanentError(RuntimeError):
    """A refusal that retrying cannot change: the node must stop."""


class TariffShares(Mapping[str, int]):
    """Each included node's compute share bought this epoch, ``tariff.share`` of its
    contribution (micro-units), read from the allocation on demand: O(log N) per lookup
    (binary search) and nothing built per host, where a dict would cost every host O(N)."""

    __slots__ = ("_allocation", "_tariff")

    def __init__(self, allocation: Allocation, tariff: Tariff) -> None:
        self._allocation = allocation
        self._tariff = tariff

    def __getitem__(self, node_id: str) -> int:
        paid = self._allocation.contribution_of(node_id)
        if paid is None:
            raise KeyError(node_id)
        return self._tariff.share(paid)

    def __iter__(self) -> Iterator[str]:
        return iter(self._allocation.included)

    def __len__(self) -> int:
        return len(self._allocation.included)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """Everything a node is configured with; quantities in micro-units.

    ``coordinator``: its base URL; ``coordinator_key``: the trusted key (None: trust the
    first announcement's signer, testbeds only); ``host``/``port``/``advertise``: where
    the service listens and the endpoint registered; ``roam_script``: epoch -> locations
    to visit (else ``roam_moves`` random ones); ``seed``: of the roaming (None: random);
    ``thetas``: epoch -> true θ for the epochs whose type differs from ``theta`` (types
    redrawn every epoch; :meth:`theta_at`); ``shops``: the agent does the node's
    mystery-shopper duties itself (False where another device roams for the node and
    shops for it too, as the testbed's launcher does).
    """

    coordinator: str
    location: int
    kind: str
    capacity: int
    theta: int
    strategy: Strategy = field(default_factory=Truthful)
    coordinator_key: str | None = None
    files_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    advertise: str | None = None
    session_seconds: int = 60
    tariff: Tariff | None = None
    roam_moves: int = 1
    roam_script: Mapping[int, Sequence[int]] | None = None
    roam_amount: int = DEFAULT_ROAM_AMOUNT
    max_skew: int = 60
    seed: int | None = None
    thetas: Mapping[int, int] | None = None
    shops: bool = True

    def theta_at(self, epoch: int) -> int:
        """The node's true θ (micro-units) in ``epoch`` (the coordinator's numbering)."""
        if self.thetas is not None and epoch in self.thetas:
            return self.thetas[epoch]
        return self.theta


class Agent:
    """One node's owner-side pump around its :class:`~node.epoch.EpochMachine`."""

    def __init__(
        self,
        spec: NodeSpec,
        *,
        identity: Identity,
        host: Host,
        coordinator: CoordinatorClient,
        peers: PeerClient,
        clock: Clock,
        endpoint: str | None = None,
        nonce: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.spec = spec
        self.identity = identity
        self.host = host
        self.coordinator = coordinator
        self.peers = peers
        self.clock = clock
        self.endpoint = endpoint if endpoint is not None else spec.advertise
        self.tariff = spec.tariff if spec.tariff is not None else Tariff()
        self.rng = random.Random(spec.seed)
        self.machine = EpochMachine()
        self._nonce = nonce
        # (epoch, complaint) about requests that got no signed answer, not filed yet.
        self._complaints: list[tuple[int, Complaint]] = []
        # The current allocation with its included set, shared by the nodes of this
        # process (node.client.Outcome): the host keeps the set instead of copying N ids.
        self._outcome: Outcome | None = None

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def registered(self) -> bool:
        return self.machine.registered

    @property
    def current(self) -> EpochProgress | None:
        return self.machine.current

    @property
    def history(self) -> dict[int, EpochProgress]:
        return self.machine.history

    # --- the pump -----------------------------------------------------------------------

    async def run_epoch_step(self) -> str:
        """Do the next due action and name what was done (see the module docstring)."""
        try:
            outcome = await self._step()
        except InkindError as exc:
            if not self.registered and exc.code in PERMANENT:
                # The coordinator will refuse this registration every time (a location
                # its market does not have, a malformed field): retrying cannot help.
                raise PermanentError(f"the coordinator refuses this node's registration: "
                                     f"{exc.code}: {exc}") from exc
            log.warning("node %s: step failed: %s", self.node_id[:16], exc)
            return "error"
        except _NETWORK as exc:
            log.warning("node %s: step failed: %s", self.node_id[:16], exc)
            return "error"
        if outcome != "waiting":  # one line per epoch step, for an operator to follow
            cur = self.current
            log.info("node %s epoch %s: %s", self.node_id[:16],
                     "-" if cur is None else cur.epoch, outcome)
        return outcome

    async def _step(self) -> str:
        await self.file_ledger()
        action = self.machine.next_action(self.clock())
        if action is Action.REGISTER:
            await self.register()
            return "registered"
        if action is Action.POLL:
            if await self.poll_announcement() is None:
                return "waiting"
            action = self.machine.next_action(self.clock())
        if action is Action.DECLARE:
            await self.declare()
            return "declared"
        if action is Action.PROVIDE:
            if await self.provide():
                return "provided"
            # A newer epoch may have opened meanwhile (this node missed this one's close).
            return "waiting" if await self.poll_announcement() is None else "announced"
        if action is Action.ROAM:
            await self.roam()
            return "roamed"
        await self.report()
        return "reported"

    async def run(self, stop: Callable[[], bool], *, poll_seconds: float = 1.0) -> None:
        """Step until ``stop()`` is true, pausing ``poll_seconds`` whenever idle."""
        while not stop():
            outcome = await self.run_epoch_step()
            if outcome in ("waiting", "error"):
                await asyncio.sleep(poll_seconds)

    # --- the actions --------------------------------------------------------------------

    async def register(self) -> dict[str, object]:
        """Send the signed registration (idempotent at the coordinator).

        At the epoch currently announced (0 before the first), so a restarted node
        re-registers at an epoch no older than its stored registration; if the coordinator
        holds a newer one anyway (``stale_epoch``), that one stands.
        """
        ann = await self._announcement()
        epoch = 0 if ann is None else ann.epoch
        reg = Registration(
            public_key=self.identity.public_key,
            epoch=epoch,
            home_location=self.host.location,
            capacity=self.spec.capacity,
            kind=self.host.kind,
            endpoint=self.endpoint,
            issued=self.clock(),
        )
        try:
            answer = await self.coordinator.register(seal(self.identity, reg))
        except InkindError as exc:
            if exc.code != "stale_epoch":
                raise
            answer = {"node_id": self.node_id, "epoch": epoch}
        self.machine.on_registered()
        return answer

    async def _announcement(self) -> EpochAnnouncement | None:
        """The coordinator's current announcement (None before the first epoch)."""
        try:
            _, ann = await self.coordinator.announcement()
        except InkindError as exc:
            if exc.code == "no_epoch":
                return None
            raise
        if self.host.coordinator_key is None:  # trusted on first use by the client
            self.host.coordinator_key = self.coordinator.coordinator_key
        return ann

    async def poll_announcement(self) -> EpochAnnouncement | None:
        """The latest announcement if it opens an epoch newer than the current one, which
        then becomes current; None otherwise (never rolls back)."""
        ann = await self._announcement()
        if ann is None or not self.machine.is_newer(ann):
            return None
        self.machine.on_announced(ann)
        return ann

    async def declare(self) -> dict[str, object] | None:
        """Declare θ for the current epoch as the strategy says (from the epoch's true θ)."""
        progress = self._progress()
        ann = progress.announcement
        theta = self.spec.strategy.declare(self.spec.theta_at(ann.epoch))
        decl = Declaration(
            epoch=ann.epoch, node_id=self.node_id, theta=theta, nonce=self._nonce(16).hex()
        )
        try:
            answer = await self.coordinator.declare(seal(self.identity, decl))
        except InkindError as exc:
            if exc.code == "duplicate_declaration":  # the first one counts
                answer = {"epoch": ann.epoch, "node_id": self.node_id, "accepted": 0}
            elif exc.code in _TOO_LATE:
                self.machine.on_declaration_refused(exc.code)
                return None
            else:
                raise
        self.machine.on_declared(theta)
        return answer

    async def fetch_outcome(self) -> bool:
        """Fetch the current epoch's allocation and own credential.

        False while the epoch is not closed yet (``unknown_epoch``).
        """
        progress = self._progress()
        if progress.allocation is not None:
            return True
        try:
            outcome = await self.coordinator.outcome(progress.epoch)
        except InkindError as exc:
            if exc.code in ("unknown_epoch", "not_found"):
                self.machine.on_not_closed()
                return False
            raise
        alloc = outcome.allocation
        credential = None
        if alloc.contribution_of(self.node_id) is not None:
            try:
                credential, _ = await self.coordinator.credential(progress.epoch, self.node_id)
            except InkindError as exc:
                # Probation (coordinator README "Probation"): a new key is included and
                # owes its contribution but may not roam yet; it provides as usual, and
                # its delivery is what establishes it.
                if exc.code != "probation":
                    raise
                log.info("epoch %d: on probation (no credential: %s)", progress.epoch, exc)
        self.machine.on_outcome(alloc, node_id=self.node_id, credential=credential)
        self._outcome = outcome
        return True

    async def directory(self) -> Directory:
        """The current (closed) epoch's directory, fetched on first use and kept."""
        progress = self._progress()
        if progress.directory is None:
            self.machine.on_directory(await self.coordinator.directory(progress.epoch))
        assert progress.directory is not None
        return progress.directory

    async def provide(self) -> bool:
        """Once the epoch is closed: open the contribution and send the commitment.

        False while the epoch is not closed. A node not included opens nothing; a
        free-rider opens nothing, so its gate refuses every roamer
        (:func:`node.epoch.provision` says how much).
        """
        if not await self.fetch_outcome():
            return False
        progress = self._progress()
        alloc = progress.allocation
        assert alloc is not None  # fetch_outcome() kept it
        kind = node_kind(self.host.kind)
        plan = provision(
            owed=progress.owed,
            payment=progress.announcement.payment,
            capacity=self.spec.capacity,
            unit=kind.wire.granularity,
            strategy=self.spec.strategy,
        )
        shares = TariffShares(alloc, self.tariff) if kind.wire.shares else None
        outcome = self._outcome
        included = (outcome.included if outcome is not None and outcome.allocation is alloc
                    else frozenset(alloc.included))
        self.host.open_epoch(
            epoch=alloc.epoch,
            included=included,
            opened=plan.opened,
            now=self.clock(),
            owed=progress.owed or 0,
            shares=shares,
        )
        if plan.claimed is not None:
            commitment = Commitment(
                epoch=alloc.epoch, node_id=self.node_id, contribution=plan.claimed)
            await self.coordinator.commit(seal(self.identity, commitment))
        self.machine.on_provided(opened=plan.opened, committed=plan.claimed is not None)
        return True

    async def roam(self, locations: Sequence[int] | None = None) -> list[AccessAnswer]:
        """Ask hosts in other locations for access, and the hosts this node shops at; keep
        their signed answers.

        ``locations``: where to go (default: the script for this epoch, else
        ``roam_moves`` random other locations that have a host with an endpoint). An
        included node also asks the coordinator for its mystery-shopper duties
        (protocol README section 7, step 8) and asks each of those hosts once, with an
        ordinary request exactly as a roamer's, at a random place among its roaming
        requests; a host that leaves it unanswered is complained about at the report
        step like any other.
        """
        progress = self._progress()
        credential = progress.credential
        script = locations
        if script is None and self.spec.roam_script is not None:
            script = self.spec.roam_script.get(progress.epoch)
        goes = bool(script) if script is not None else self.spec.roam_moves > 0
        answers: list[AccessAnswer] = []
        if credential is not None:
            visits: list[DirectoryEntry] = []
            if goes:
                directory = await self.directory()
                hosts = roam_hosts(directory, node_id=self.node_id, home=self.host.location)
                for location in roam_locations(hosts, script=script,
                                               moves=self.spec.roam_moves, rng=self.rng):
                    here = [n for n in hosts if n.location == location]
                    if here:
                        visits.append(self.rng.choice(here))
            duties = await self.shopping(progress.epoch) if self.spec.shops else []
            for entry in duties:
                visits.insert(self.rng.randrange(len(visits) + 1), entry)
            for entry in visits:
                answer = await self.ask(entry, credential)
                if answer is not None:
                    answers.append(answer)
        self.machine.on_roamed(answers)
        return answers

    async def shopping(self, epoch: int) -> list[DirectoryEntry]:
        """The directory entries of the hosts the coordinator told this node to shop at
        in ``epoch`` (``POST /v1/duties``, signed; none if it has no duty, or the
        coordinator does not answer: a missed duty costs only detection). Hosts without
        an endpoint are left to the probes."""
        try:
            duty = await self.coordinator.duties(seal(self.identity, DutyRequest(
                epoch=epoch, node_id=self.node_id, issued=self.clock())))
        except (*_NETWORK, InkindError) as exc:
            log.info("node %s: no shopping duties for epoch %d: %s", self.node_id[:16],
                     epoch, exc)
            return []
        if not duty.hosts:
            return []
        entries = (await self.directory()).by_id()
        return [entries[h] for h in duty.hosts if h in entries and entries[h].endpoint]

    async def ask(
        self, entry: DirectoryEntry, credential: Envelope, *, amount: int | None = None
    ) -> AccessAnswer | None:
        """One access exchange with one host, as its kind says. None on a network error or
        when the host has nothing to ask for (no files)."""
        assert entry.endpoint is not None
        url = base_url(entry.endpoint)
        sent: AccessBody | None = None
        try:
            kind = node_kind(entry.kind)
            item, cost = "", None
            if kind.wire.itemised:
                listing = [
                    f for f in await self.peers.files(url)
                    if isinstance(f.get("sha256"), str)
                    and isinstance(f.get("size"), int)
                    and not isinstance(f.get("size"), bool)
                ]
                if not listing:
                    return None
                pick = self.rng.choice(listing)
                item, cost = pick["sha256"], pick["size"]
            own = self.current.owed if self.current is not None else None
            ask = kind.ask(amount=amount, roam_amount=self.spec.roam_amount,
                           share=self.tariff.share(own or 0), item=item, cost=cost)
            request = make_access_request(
                self.identity,
                credential,
                host_id=entry.node_id,
                now=self.clock(),
                amount=ask.amount,
                resource=ask.resource,
            )
            sent = request
            if kind.wire.answer is Answer.FILE:
                answer, _ = await self.peers.download(url, ask.item, request,
                                                      host_key=entry.public_key)
            elif kind.wire.answer is Answer.JOB:
                answer, _ = await self.peers.compute(url, request, host_key=entry.public_key)
            else:
                answer = await self.peers.access(url, request, host_key=entry.public_key)
        except (*_NETWORK, InkindError) as exc:
            log.info("roaming to %s failed: %s", entry.node_id[:16], exc)
            if sent is not None:
                self._unanswered(entry.node_id, sent)
            return None
        if answer.evidence is None:
            self._unanswered(entry.node_id, sent)
        return answer

    def _unanswered(self, host_id: str, body: AccessBody) -> None:
        """A request that got no signed answer: complained about at the report step."""
        progress = self.current
        if progress is not None and len(self._complaints) < MAX_COMPLAINTS:
            self._complaints.append((progress.epoch, Complaint(
                epoch=progress.epoch, requester_id=self.node_id, host_id=host_id,
                request=body.request)))

    async def complain(self, epoch: int) -> int:
        """File the complaints about ``epoch``'s requests that got no signed answer
        (protocol README section 7, step 7: the coordinator relays each to its host);
        returns how many were accepted. A refused one is logged and dropped."""
        mine = [c for e, c in self._complaints if e == epoch]
        self._complaints = [(e, c) for e, c in self._complaints if e > epoch]
        accepted = 0
        for complaint in mine:
            try:
                await self.coordinator.complain(seal(self.identity, complaint))
                accepted += 1
            except (*_NETWORK, InkindError) as exc:
                log.info("node %s: complaint about %s refused: %s", self.node_id[:16],
                         complaint.host_id[:16], exc)
        return accepted

    async def report(self) -> dict[str, object] | None:
        """Send the epoch's receipts and refusals in signed audit reports (if any): the
        host's unfiled ledger first, then what the node got as a roamer, in reports of at
        most ``MAX_AUDIT_ITEMS`` items; the last answer is returned."""
        progress = self._progress()
        await self.complain(progress.epoch)
        # The host's own ledger first: its receipts, each backed by the roamer's request.
        ledger = self.host.unfiled(progress.epoch)
        evidence = ledger + progress.evidence
        answer: dict[str, object] | None = None
        try:
            for start in range(0, len(evidence), MAX_AUDIT_ITEMS):
                chunk = evidence[start:start + MAX_AUDIT_ITEMS]
                report = AuditReport(epoch=progress.epoch, reporter_id=self.node_id,
                                     evidence=tuple(chunk))
                answer = await self.coordinator.audit(seal(self.identity, report))
                self.host.filed(progress.epoch, chunk)
            return answer
        except InkindError:
            self.host.filed(progress.epoch, ledger)  # refused: it would be refused again
            raise
        finally:
            # One attempt: a report lost or refused is not retried, so the node never
            # stays behind in an old epoch (the audit's cut-off would refuse it anyway);
            # only the host's unfiled receipts are tried again (file_ledger).
            self.machine.on_reported()

    async def file_ledger(self) -> int:
        """File the receipts the host signed after its epoch's report (README section 7,
        step 5): grants go on until the host moves to a newer allocation, and a roamer
        that drains the host after its report and hides the receipt must not frame it.
        Every step files what is new, so the receipts reach the coordinator before the
        audit cut-off (the close of the next epoch). Returns how many were sent; a
        refused report (past the cut-off) drops them, a network error keeps them."""
        sent = 0
        for epoch in self.host.ledger_epochs():
            progress = self.history.get(epoch)
            pending = self.host.unfiled(epoch)
            if progress is None or not progress.reported or not pending:
                continue
            try:
                for start in range(0, len(pending), MAX_AUDIT_ITEMS):
                    chunk = pending[start:start + MAX_AUDIT_ITEMS]
                    report = AuditReport(epoch=epoch, reporter_id=self.node_id,
                                         evidence=tuple(chunk))
                    await self.coordinator.audit(seal(self.identity, report))
                    self.host.filed(epoch, chunk)
                    sent += len(chunk)
            except InkindError as exc:
                log.info("node %s: late ledger of epoch %d refused: %s",
                         self.node_id[:16], epoch, exc)
                self.host.filed(epoch, pending)
        return sent

    def _progress(self) -> EpochProgress:
        if self.current is None:
            raise RuntimeError("no epoch announced yet")
        return self.current
