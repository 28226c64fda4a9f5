"""Shared helpers of the node tests: a signed world, a scripted coordinator, a test bed.

* :class:`World` holds a coordinator, a host and some requesters with fixed keys, builds
  credentials and access requests (with mutate-and-re-sign knobs, after python-tuf's
  repository simulator) and host views.
* :class:`ScriptedCoordinator` serves the Coordinator table of ``protocol/HTTP.md`` with
  messages signed by a test identity; tests open and close epochs on it with the exact
  allocation they need (who owes what), which the real mechanism would not give them.
  Tests of the node against the real coordinator serve its app on the same network.
* :func:`node_bed` runs agents and their hosts on an in-memory network
  (:mod:`helpers.memnet`): no sockets, and time is the :class:`~helpers.clock.FakeClock`
  the test moves.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from helpers.clock import NOW, FakeClock
from helpers.memnet import memory_net
from node.agent import Agent, NodeSpec
from node.client import SharedDocuments
from node.gate import HostView
from node.launch import start_node
from node.strategy import parse_strategy
from protocol import (
    MICRO,
    AccessBody,
    AccessVerifier,
    Allocation,
    AuditReport,
    Commitment,
    Complaint,
    Credential,
    Declaration,
    Envelope,
    EpochAnnouncement,
    Identity,
    InkindError,
    Registration,
    make_access_request,
    open_envelope,
    seal,
    to_wire,
)
from protocol.errors import DuplicateDeclarationError, EpochClosedError, UnknownKeyError

EPOCH = 5


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


def counter_rng() -> Callable[[int], bytes]:
    """A deterministic random source for request nonces (distinct values)."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


@dataclass
class World:
    """Keys and builders for gate and host tests (all times near :data:`NOW`)."""

    coord: Identity = field(default_factory=lambda: ident(1))
    host: Identity = field(default_factory=lambda: ident(2))
    alice: Identity = field(default_factory=lambda: ident(3))  # included
    bob: Identity = field(default_factory=lambda: ident(4))  # not included
    carol: Identity = field(default_factory=lambda: ident(5))  # included but revoked
    mallory: Identity = field(default_factory=lambda: ident(6))  # no credential of her own
    epoch: int = EPOCH
    rng: Callable[[int], bytes] = field(default_factory=counter_rng)
    verifier: AccessVerifier | None = None

    @property
    def included(self) -> frozenset[str]:
        return frozenset({self.alice.node_id, self.carol.node_id})

    def credential(
        self,
        who: Identity,
        *,
        epoch: int | None = None,
        not_before: int = NOW - 100,
        expires: int = NOW + 3600,
        signer: Identity | None = None,
    ) -> Envelope:
        cred = Credential(
            node_id=who.node_id,
            public_key=who.public_key,
            epoch=self.epoch if epoch is None else epoch,
            not_before=not_before,
            expires=expires,
            location=1,
        )
        return seal(signer or self.coord, cred)

    def body(
        self,
        who: Identity,
        *,
        amount: int = MICRO,
        credential: Envelope | None = None,
        host_id: str | None = None,
        signer: Identity | None = None,
        resource: str | None = None,
        now: int = NOW,
    ) -> AccessBody:
        """``who``'s access body; ``signer`` signs the request instead (with a
        credential of its own key, then presented beside ``who``'s credential)."""
        cred = credential if credential is not None else self.credential(who)
        if signer is None:
            return make_access_request(who, cred, host_id=host_id or self.host.node_id,
                                       amount=amount, now=now, resource=resource,
                                       rng=self.rng)
        forged = make_access_request(signer, self.credential(signer),
                                     host_id=host_id or self.host.node_id, amount=amount,
                                     now=now, resource=resource, rng=self.rng)
        return AccessBody(request=forged.request, credential=cred)

    def request(self, who: Identity, **kw: Any) -> bytes:
        return self.body(who, **kw).to_bytes()

    def view(self, **overrides: Any) -> HostView:
        """A host view; ``coordinator_key`` and ``max_skew`` configure its verifier."""
        if self.verifier is None or {"coordinator_key", "max_skew"} & set(overrides):
            self.verifier = AccessVerifier(
                host_id=self.host.node_id,
                coordinator_key=overrides.pop("coordinator_key", self.coord.public_key),
                skew=overrides.pop("max_skew", 60),
            )
        values: dict[str, Any] = {
            "epoch": self.epoch,
            "included": self.included,
            "revoked": frozenset({self.carol.node_id}),
            "remaining": 3 * MICRO,
            "verifier": self.verifier,
        }
        values.update(overrides)
        return HostView(**values)


# --- a fake coordinator ------------------------------------------------------------------


class ScriptedCoordinator:
    """The Coordinator table of HTTP.md, enough for the node's agent; state in the open."""

    def __init__(self, identity: Identity, *, clock: Callable[[], int]) -> None:
        self.identity = identity
        self.clock = clock
        self.registrations: dict[str, Registration] = {}
        self.announcement: EpochAnnouncement | None = None
        self.declarations: dict[int, dict[str, Declaration]] = {}
        self.allocations: dict[int, Allocation] = {}
        self.credentials: dict[tuple[int, str], Envelope] = {}
        self.commitments: dict[int, dict[str, Commitment]] = {}
        self.audits: list[AuditReport] = []
        self.complaints: list[Complaint] = []
        self.excluded: list[dict[str, Any]] = []
        self.registered = asyncio.Event()
        self.gets: Counter[str] = Counter()  # answered GETs of a document, by its path

    # operator actions, called by the tests
    def open(
        self, epoch: int, *, deadline: int, payment: str = "in_kind", locations: int = 2
    ) -> None:
        self.announcement = EpochAnnouncement(
            epoch=epoch,
            mechanism="posted_fee",
            payment=payment,
            deadline=deadline,
            fees=(100_000,) * locations,
            q=(MICRO,) * locations,
            coordinator_key=self.identity.public_key,
        )
        self.declarations.setdefault(epoch, {})

    def close(
        self, epoch: int, *, owed: dict[str, int] | None = None, lifetime: int = 3600
    ) -> Allocation:
        """Include every node that declared θ > 0; each owes ``owed[id]`` (default 1 unit)."""
        decls = self.declarations.get(epoch, {})
        included = tuple(sorted(n for n, d in decls.items() if d.theta > 0))
        owed = owed or {}
        alloc = Allocation(
            epoch=epoch,
            mechanism="posted_fee",
            q=(MICRO, MICRO),
            included=included,
            contributions=tuple(owed.get(n, MICRO) for n in included),
            expected_welfare=0,
        )
        self.allocations[epoch] = alloc
        now = self.clock()
        for n in included:
            reg = self.registrations[n]
            cred = Credential(
                node_id=n,
                public_key=reg.public_key,
                epoch=epoch,
                not_before=now - 10,
                expires=now + lifetime,
                location=reg.home_location,
            )
            self.credentials[(epoch, n)] = seal(self.identity, cred)
        return alloc

    def _keys(self) -> frozenset[str]:
        return frozenset(r.public_key for r in self.registrations.values())

    def app(self) -> web.Application:
        @web.middleware
        async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
            try:
                response: web.StreamResponse = await handler(request)
                return response
            except InkindError as exc:
                return web.json_response(to_wire(exc), status=exc.http_status)

        def err(code: str, status: int) -> web.Response:
            return web.json_response({"code": code, "message": code}, status=status)

        async def register(request: web.Request) -> web.Response:
            _, reg = open_envelope(await request.read(), Registration, trusted=None)
            self.registrations[reg.node_id] = reg
            self.registered.set()
            return web.json_response({"node_id": reg.node_id, "epoch": reg.epoch})

        async def announcement(request: web.Request) -> web.Response:
            if self.announcement is None:
                return err("no_epoch", 404)
            return web.Response(
                body=seal(self.identity, self.announcement).to_bytes(),
                content_type="application/json",
            )

        async def declare(request: web.Request) -> web.Response:
            _, decl = open_envelope(await request.read(), Declaration, trusted=self._keys())
            if self.announcement is None or self.clock() >= self.announcement.deadline:
                raise EpochClosedError("the epoch is closed")
            table = self.declarations.setdefault(decl.epoch, {})
            if decl.node_id in table:
                raise DuplicateDeclarationError("already declared")
            table[decl.node_id] = decl
            return web.json_response({"epoch": decl.epoch, "node_id": decl.node_id, "accepted": 1})

        async def allocation(request: web.Request) -> web.Response:
            self.gets[request.path] += 1
            alloc = self.allocations.get(int(request.match_info["epoch"]))
            if alloc is None:
                return err("unknown_epoch", 404)
            body = seal(self.identity, alloc).to_bytes()
            return web.Response(body=body, content_type="application/json")

        async def credential(request: web.Request) -> web.Response:
            key = (int(request.match_info["epoch"]), request.match_info["node_id"])
            env = self.credentials.get(key)
            if env is None:
                return err("not_included", 403)
            return web.Response(body=env.to_bytes(), content_type="application/json")

        async def directory(request: web.Request) -> web.Response:
            self.gets[request.path] += 1
            epoch = int(request.match_info["epoch"])
            alloc = self.allocations.get(epoch)
            if alloc is None:
                return err("unknown_epoch", 404)
            nodes = [
                {
                    "node_id": n,
                    "public_key": self.registrations[n].public_key,
                    "location": self.registrations[n].home_location,
                    "endpoint": self.registrations[n].endpoint,
                    "kind": self.registrations[n].kind,
                    "contribution": c,
                }
                for n, c in zip(alloc.included, alloc.contributions, strict=True)
            ]
            return web.json_response({"epoch": epoch, "nodes": nodes})

        async def commit(request: web.Request) -> web.Response:
            _, com = open_envelope(await request.read(), Commitment, trusted=self._keys())
            self.commitments.setdefault(com.epoch, {})[com.node_id] = com
            return web.json_response({"accepted": 1})

        async def audit(request: web.Request) -> web.Response:
            _, rep = open_envelope(await request.read(), AuditReport, trusted=self._keys())
            if rep.reporter_id not in self.registrations:
                raise UnknownKeyError("not registered")
            self.audits.append(rep)
            return web.json_response({"accepted": len(rep.evidence)})

        async def complain(request: web.Request) -> web.Response:
            _, c = open_envelope(await request.read(), Complaint, trusted=self._keys())
            self.complaints.append(c)
            return web.json_response({"accepted": 1, "answer": None})

        async def status(request: web.Request) -> web.Response:
            return web.json_response({"excluded": self.excluded})

        app = web.Application(middlewares=[errors])
        app.router.add_post("/v1/register", register)
        app.router.add_get("/v1/announcement", announcement)
        app.router.add_post("/v1/declarations", declare)
        app.router.add_get("/v1/allocation/{epoch}", allocation)
        app.router.add_get("/v1/credential/{epoch}/{node_id}", credential)
        app.router.add_get("/v1/directory/{epoch}", directory)
        app.router.add_post("/v1/commitments", commit)
        app.router.add_post("/v1/audit", audit)
        app.router.add_post("/v1/complaints", complain)
        app.router.add_get("/v1/status", status)
        return app


# --- a bed of agents on an in-memory network ----------------------------------------------


@dataclass
class BedNode:
    """What :func:`node_bed` builds one node from (quantities in micro-units)."""

    seed: int
    location: int
    kind: str
    theta: int
    strategy: str = "truthful"
    capacity: int = 2 * MICRO
    script: Sequence[int] = ()
    files_dir: Path | None = None


@asynccontextmanager
async def node_bed(
    nodes: Sequence[BedNode], clock: FakeClock, *, trust_on_first_use: bool = False,
    documents: SharedDocuments | None = None,
) -> AsyncIterator[tuple[ScriptedCoordinator, list[Agent]]]:
    """A scripted coordinator and one agent per :class:`BedNode`, their hosts served on a
    :class:`~helpers.memnet.MemoryNet` (no sockets); each roams ``script`` in epoch 1.
    ``documents``: shared by every agent (as in one node process), else one each."""
    coord_id = ident(90)
    scripted = ScriptedCoordinator(coord_id, clock=clock)
    async with memory_net() as net:
        coord_endpoint = await net.serve(scripted.app())
        async with net.session() as session:
            agents = []
            for n in nodes:
                spec = NodeSpec(
                    coordinator=f"http://{coord_endpoint}",
                    location=n.location,
                    kind=n.kind,
                    capacity=n.capacity,
                    theta=n.theta,
                    strategy=parse_strategy(n.strategy),
                    coordinator_key=None if trust_on_first_use else coord_id.public_key,
                    files_dir=None if n.files_dir is None else str(n.files_dir),
                    roam_script={1: n.script},
                    seed=n.seed,
                )
                running = await start_node(spec, ident(n.seed), session, clock=clock,
                                           serve=net.start_site, documents=documents)
                agents.append(running.agent)
            yield scripted, agents


async def step_all(agents: Sequence[Agent]) -> list[str]:
    """One step of each agent, in order; what each did."""
    return [await a.run_epoch_step() for a in agents]
