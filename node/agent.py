"""The node's epoch loop (DESIGN "One epoch, end to end", the node's side).

:class:`Agent` drives one node through the epochs:

1. register (signed ``registration``: key, home location, capacity, kind, endpoint);
2. on each new signed announcement, declare θ as its strategy says (truthful by default);
3. once the epoch is closed, fetch the signed allocation, its own credential (if
   included) and the directory;
4. open its contribution in kind on its host (:class:`node.host.Host`) and send a signed
   ``commitment`` -- unless its strategy free-rides;
5. roam: for scripted or random moves to other locations, ask a host there for access
   (challenge, then a signed access request with the credential) and keep the signed
   receipts and refusals;
6. send them to the coordinator in a signed ``audit_report``.

Every step is a coroutine of its own and :meth:`Agent.run_epoch_step` does the next due
one and says which, so tests drive the loop step by step with an injected clock (no
sleeps); :meth:`Agent.run` loops until stopped.

A roamer may present a credential of a newly closed epoch before this agent's own loop
has fetched that allocation. The node's service then calls :meth:`Agent.serve_epoch`
(the credential is coordinator-signed, so the epoch has closed): step 3 and 4 for that
epoch happen at once, and the host answers under the new allocation instead of
``future_epoch``.

The agent keeps no state on disk: a restarted node registers again (idempotent) and
joins at the current epoch.

How much a node opens: with in-kind payment, what the allocation says it owes, capped by
the capacity it registered; with money payment, its full registered capacity. A compute
host limits each requester to the share its contribution bought (:class:`Tariff`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from node.client import (
    AccessAnswer,
    CoordinatorClient,
    Directory,
    DirectoryEntry,
    PeerClient,
    base_url,
    make_access_request,
)
from node.host import Host
from node.resources import Tariff
from node.strategy import Strategy, Truthful
from protocol import (
    MICRO,
    Allocation,
    AuditReport,
    Commitment,
    Declaration,
    Envelope,
    EpochAnnouncement,
    Identity,
    InkindError,
    Registration,
    seal,
)
from protocol.messages import MAX_AUDIT_ITEMS

log = logging.getLogger("inkind.node.agent")

Clock = Callable[[], int]
#: Micro-units a roamer asks per access by default (coverage, compute): a tenth of a unit,
#: so that one host's contribution serves several roamers. A channel is always one.
DEFAULT_ROAM_AMOUNT = MICRO // 10


@dataclass(slots=True, kw_only=True)
class EpochProgress:
    """What the agent has done in one epoch."""

    epoch: int
    announcement: EpochAnnouncement
    declared_theta: int | None = None
    declaration_refused: str | None = None  # the coordinator's code, if it refused
    allocation: Allocation | None = None
    credential: Envelope | None = None
    directory: Directory | None = None
    owed: int | None = None  # None: not included
    opened: int = 0
    committed: bool = False
    provided: bool = False
    roamed: bool = False
    reported: bool = False
    answers: list[AccessAnswer] = field(default_factory=list)

    @property
    def evidence(self) -> list[Envelope]:
        return [a.evidence for a in self.answers if a.evidence is not None]


class Agent:
    """One node's owner-side loop. ``theta`` and ``capacity`` are micro-units."""

    def __init__(
        self,
        identity: Identity,
        host: Host,
        coordinator: CoordinatorClient,
        peers: PeerClient,
        *,
        theta: int,
        capacity: int,
        clock: Clock,
        strategy: Strategy | None = None,
        endpoint: str | None = None,
        tariff: Tariff | None = None,
        roam_moves: int = 1,
        roam_script: Mapping[int, Sequence[int]] | None = None,
        roam_amount: int = DEFAULT_ROAM_AMOUNT,
        rng: random.Random | None = None,
        nonce: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.host = host
        self.coordinator = coordinator
        self.peers = peers
        self.theta = theta
        self.capacity = capacity
        self.clock = clock
        self.strategy: Strategy = strategy if strategy is not None else Truthful()
        self.endpoint = endpoint
        self.tariff = tariff if tariff is not None else Tariff()
        self.roam_moves = roam_moves
        self.roam_script = dict(roam_script or {})
        self.roam_amount = roam_amount
        self.rng = rng if rng is not None else random.Random()
        self._nonce = nonce
        self.registered = False
        self.current: EpochProgress | None = None
        self.history: dict[int, EpochProgress] = {}
        self._provide_lock = asyncio.Lock()
        self._serve_retry: dict[int, int] = {}  # epoch -> earliest time to try again

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    # --- the steps ----------------------------------------------------------------------

    async def register(self, epoch: int | None = None) -> dict[str, object]:
        """Send the signed registration (idempotent at the coordinator).

        ``epoch`` defaults to the epoch currently announced (0 before the first), so a
        restarted node re-registers at an epoch no older than its stored registration;
        if the coordinator holds a newer one anyway (``stale_epoch``), that one stands.
        """
        if epoch is None:
            epoch = await self._announced_epoch()
        reg = Registration(
            public_key=self.identity.public_key,
            epoch=epoch,
            home_location=self.host.location,
            capacity=self.capacity,
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
        self.registered = True
        return answer

    async def _announced_epoch(self) -> int:
        try:
            _, ann = await self.coordinator.announcement()
        except InkindError as exc:
            if exc.code == "no_epoch":
                return 0
            raise
        return ann.epoch

    async def poll_announcement(self) -> EpochAnnouncement | None:
        """The latest announcement if it opens an epoch newer than the current one.

        Never rolls back: an older or equal epoch is ignored. ``None`` before the first
        epoch (``no_epoch``) too.
        """
        try:
            _, ann = await self.coordinator.announcement()
        except InkindError as exc:
            if exc.code == "no_epoch":
                return None
            raise
        if self.host.coordinator_key is None:  # trusted on first use by the client
            self.host.coordinator_key = self.coordinator.coordinator_key
        if self.current is not None and ann.epoch <= self.current.epoch:
            return None
        # serve_epoch() may have started this epoch already (as a host).
        self.current = self.history.setdefault(
            ann.epoch, EpochProgress(epoch=ann.epoch, announcement=ann))
        return ann

    async def declare(self) -> dict[str, object] | None:
        """Declare θ for the current epoch as the strategy says, if still open."""
        progress = self._progress()
        ann = progress.announcement
        if (
            progress.declared_theta is not None
            or progress.declaration_refused is not None
            or self.clock() >= ann.deadline
        ):
            return None
        theta = self.strategy.declare(self.theta)
        decl = Declaration(
            epoch=ann.epoch, node_id=self.node_id, theta=theta, nonce=self._nonce(16).hex()
        )
        try:
            answer = await self.coordinator.declare(seal(self.identity, decl))
        except InkindError as exc:
            if exc.code == "duplicate_declaration":  # the first one counts
                answer = {"epoch": ann.epoch, "node_id": self.node_id, "accepted": 0}
            elif exc.code in ("epoch_closed", "stale_epoch", "future_epoch"):
                # The coordinator's clock or epoch disagrees: too late for this epoch.
                progress.declaration_refused = exc.code
                return None
            else:
                raise
        progress.declared_theta = theta
        return answer

    async def fetch_outcome(self, progress: EpochProgress | None = None) -> bool:
        """Fetch the epoch's allocation, own credential and directory (default: current).

        False while the epoch is not closed yet (``unknown_epoch``).
        """
        progress = progress if progress is not None else self._progress()
        try:
            alloc = await self.coordinator.allocation(progress.epoch)
        except InkindError as exc:
            if exc.code in ("unknown_epoch", "not_found"):
                return False
            raise
        progress.allocation = alloc
        progress.owed = alloc.contribution_of(self.node_id)
        if progress.owed is not None:
            progress.credential, _ = await self.coordinator.credential(progress.epoch, self.node_id)
        progress.directory = await self.coordinator.directory(progress.epoch)
        return True

    async def provide(self, progress: EpochProgress | None = None) -> Envelope | None:
        """Open the contribution on the host and send the signed commitment.

        Returns the commitment sent, or None (not included, or a free-rider that does
        not commit). A free-rider opens nothing, so its gate refuses every roamer.
        ``progress`` defaults to the current epoch's.
        """
        progress = progress if progress is not None else self._progress()
        alloc = progress.allocation
        if alloc is None:
            raise RuntimeError("provide() before the allocation is known")
        owed = progress.owed
        if owed is None:
            opened = 0
        elif progress.announcement.payment == "in_kind":
            unit = self.host.resource.UNIT  # whole channels: round what is owed up
            opened = min(-(-owed // unit) * unit, self.capacity)
        else:
            opened = self.capacity
        if not self.strategy.opens_contribution:
            opened = 0
        shares = None
        if self.host.kind == "compute":
            shares = {
                nid: self.tariff.share(p)
                for nid, p in zip(alloc.included, alloc.contributions, strict=True)
            }
        self.host.open_epoch(
            epoch=alloc.epoch,
            included=alloc.included,
            opened=opened,
            now=self.clock(),
            owed=owed or 0,
            shares=shares,
        )
        progress.opened = opened = self.host.resource.opened
        progress.provided = True
        if owed is None or not self.strategy.commits:
            return None
        # A free-rider that commits claims what it owes while opening nothing.
        claimed = opened if self.strategy.opens_contribution else min(owed, self.capacity)
        env = seal(
            self.identity,
            Commitment(epoch=alloc.epoch, node_id=self.node_id, contribution=claimed),
        )
        await self.coordinator.commit(env)
        progress.committed = True
        return env

    async def _ensure_provided(self, progress: EpochProgress) -> bool:
        """Fetch the outcome and provide for ``progress`` once (the loop and
        :meth:`serve_epoch` share this); False while the epoch is not closed."""
        async with self._provide_lock:
            if progress.provided:
                return True
            if progress.epoch < self.host.epoch:
                # The host already serves a newer epoch: this one's roamers are stale.
                progress.provided = True
                return True
            if progress.allocation is None and not await self.fetch_outcome(progress):
                return False
            await self.provide(progress)
            return True

    async def serve_epoch(self, epoch: int) -> bool:
        """Have the host enforce ``epoch``'s allocation now; True once it does.

        Called by the node's service when a roamer presents an authentic credential of
        a newer epoch than the host enforces (so the coordinator has closed ``epoch``).
        Fetches that epoch's allocation and provides (opens the contribution, commits),
        without disturbing the loop's work on an older epoch. A failed attempt is not
        repeated within the same second.
        """
        if self.host.epoch > epoch or not self.registered:
            return False
        progress = self.history.get(epoch)
        if progress is not None and progress.provided:
            return self.host.epoch == epoch
        now = self.clock()
        if self._serve_retry.get(epoch, now) > now:
            return False
        try:
            if progress is None:
                _, ann = await self.coordinator.announcement()
                if ann.epoch != epoch:  # the coordinator has moved past it: stay put
                    self._serve_retry[epoch] = now + 1
                    return False
                progress = self.history.setdefault(
                    epoch, EpochProgress(epoch=epoch, announcement=ann))
            if not await self._ensure_provided(progress):
                self._serve_retry[epoch] = now + 1
                return False
        except (aiohttp.ClientError, TimeoutError, InkindError) as exc:
            log.warning("node %s: catching up with epoch %d failed: %s",
                        self.node_id[:16], epoch, exc)
            self._serve_retry[epoch] = now + 1
            return False
        return self.host.epoch == epoch

    async def roam(self, locations: Sequence[int] | None = None) -> list[AccessAnswer]:
        """Ask hosts in other locations for access; keep their signed answers.

        ``locations``: where to go (default: the script for this epoch, else
        ``roam_moves`` random other locations that have a host with an endpoint).
        """
        progress = self._progress()
        progress.roamed = True
        directory, credential = progress.directory, progress.credential
        if directory is None or credential is None:
            return []
        hosts = [
            n
            for n in directory.nodes
            if n.endpoint and n.node_id != self.node_id and n.location != self.host.location
        ]
        if locations is None:
            locations = self.roam_script.get(progress.epoch)
        if locations is None:
            choices = sorted({n.location for n in hosts})
            moves = self.roam_moves if choices else 0
            locations = [self.rng.choice(choices) for _ in range(moves)]
        answers: list[AccessAnswer] = []
        for location in locations:
            here = [n for n in hosts if n.location == location]
            if not here:
                continue
            answer = await self.ask(self.rng.choice(here), credential)
            if answer is not None:
                answers.append(answer)
        progress.answers.extend(answers)
        return answers

    async def ask(
        self, entry: DirectoryEntry, credential: Envelope, *, amount: int | None = None
    ) -> AccessAnswer | None:
        """One access exchange with one host, by the host's kind. None on a network error."""
        assert entry.endpoint is not None
        url = base_url(entry.endpoint)
        try:
            resource: str | None = None
            sha = ""
            if entry.kind == "files":
                listing = [
                    f
                    for f in await self.peers.files(url)
                    if isinstance(f.get("sha256"), str)
                    and isinstance(f.get("size"), int)
                    and not isinstance(f.get("size"), bool)
                ]
                if not listing:
                    return None
                pick = self.rng.choice(listing)
                sha = pick["sha256"]
                resource = "file:" + sha
                amount = max(1, pick["size"])  # a download costs the file's size in bytes
            challenge = await self.peers.challenge(url)
            if entry.kind == "compute":
                resource = "compute"
                if amount is None:
                    progress = self._progress()
                    own = progress.owed or 0
                    amount = max(1, min(self.roam_amount, self.tariff.share(own)))
            elif entry.kind == "wlan_channels":
                amount = amount if amount is not None else MICRO
            amount = amount if amount is not None else self.roam_amount
            request = make_access_request(
                self.identity,
                credential,
                host_id=entry.node_id,
                challenge=challenge.value,
                amount=amount,
                resource=resource,
            )
            if entry.kind == "files":
                answer, _ = await self.peers.download(url, sha, request, host_key=entry.public_key)
            elif entry.kind == "compute":
                answer, _ = await self.peers.compute(url, request, host_key=entry.public_key)
            else:
                answer = await self.peers.access(url, request, host_key=entry.public_key)
        except (aiohttp.ClientError, TimeoutError, InkindError) as exc:
            log.info("roaming to %s failed: %s", entry.node_id[:16], exc)
            return None
        return answer

    async def report(self) -> dict[str, object] | None:
        """Send the epoch's receipts and refusals in a signed audit report (if any)."""
        progress = self._progress()
        progress.reported = True
        evidence = progress.evidence[:MAX_AUDIT_ITEMS]
        if not evidence:
            return None
        report = AuditReport(
            epoch=progress.epoch, reporter_id=self.node_id, evidence=tuple(evidence)
        )
        return await self.coordinator.audit(seal(self.identity, report))

    # --- the loop -----------------------------------------------------------------------

    async def run_epoch_step(self) -> str:
        """Do the next due step and name it.

        One of ``registered``, ``declared``, ``announced`` (a newer epoch opened before
        this one's outcome was fetched), ``provided``, ``roamed``, ``reported`` (work
        done), ``waiting`` (nothing to do until the coordinator moves on) or ``error``
        (a network failure or an unexpected refusal, logged; the step is retried).
        """
        try:
            return await self._step()
        except (aiohttp.ClientError, TimeoutError, InkindError) as exc:
            log.warning("node %s: step failed: %s", self.node_id[:16], exc)
            return "error"

    async def _step(self) -> str:
        if not self.registered:
            await self.register()
            return "registered"
        progress = self.current
        if progress is None or progress.reported:
            if await self.poll_announcement() is None:
                return "waiting"
            progress = self._progress()
        if (
            progress.declared_theta is None
            and progress.declaration_refused is None
            and self.clock() < progress.announcement.deadline
        ):
            await self.declare()
            return "declared"
        if not progress.provided:
            if not await self._ensure_provided(progress):
                # A newer epoch may have opened meanwhile (we missed this one's close).
                return "waiting" if await self.poll_announcement() is None else "announced"
            return "provided"
        if not progress.roamed:
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

    # --- helpers ------------------------------------------------------------------------

    def _progress(self) -> EpochProgress:
        if self.current is None:
            raise RuntimeError("no epoch announced yet")
        return self.current
