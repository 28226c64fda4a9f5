"""Shared helpers of the coordinator tests: markets, deterministic node identities,
builders of signed messages, an epoch core with registered nodes, and a harness over the
coordinator's HTTP app (the clock is :class:`helpers.clock.FakeClock`)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from coordinator.allocation import MechanismRunner
from coordinator.config import CoordinatorConfig
from coordinator.connections import LimitedSite
from coordinator.epoch import Closed, EpochCore, Settings
from coordinator.mechanism import Market, market_from_dict
from coordinator.service import make_app, make_runner
from coordinator.store import Store
from helpers.clock import NOW, FakeClock
from helpers.memnet import MemoryNet
from protocol import (
    AccessRequest,
    AuditReport,
    Commitment,
    Declaration,
    Envelope,
    GrantReceipt,
    Identity,
    Refusal,
    Registration,
    seal,
    seal_bytes,
)

T0 = NOW
EPOCH_SECONDS = 60
PAUSE_SECONDS = 5
GRACE = 30
ADMIN_TOKEN = "test-admin-token-123"


def one_town(n: int = 4, *, high: float = 1.0, payment: str = "money") -> dict[str, Any]:
    """The slides' market (u = 2/3 sqrt(Q), c = Q, θ ~ U[0, high]) as a spec dict."""
    return {
        "market": {"payment": payment, "exclusion": True},
        "locations": [{
            "name": "town", "n": n,
            "type": {"dist": "uniform", "low": 0.0, "high": high},
            "utility": {"kind": "power", "A": 2.0 / 3.0, "alpha": 0.5},
            "cost": {"kind": "power", "B": 1.0, "beta": 1.0},
        }],
    }


def two_towns(payment: str = "money") -> dict[str, Any]:
    loc = one_town()["locations"][0]
    return {
        "weights": [[1.0, 0.5], [0.5, 1.0]],
        "market": {"payment": payment, "exclusion": True},
        "locations": [dict(loc, name="a", n=3), dict(loc, name="b", n=3)],
    }


SPEC_TOML = """\
[market]
payment = "money"
exclusion = true

[[locations]]
name = "town"
n = 4
type = { dist = "uniform", low = 0.0, high = 1.0 }
utility = { kind = "power", A = 0.6666666666666666, alpha = 0.5 }
cost = { kind = "power", B = 1.0, delta = 0.0, beta = 1.0 }
"""

_MARKETS: dict[str, Market] = {}
_RUNNERS: dict[tuple[str, str], MechanismRunner] = {}


def market(name: str = "one") -> Market:
    if name not in _MARKETS:
        spec = {"one": one_town(), "two": two_towns(), "narrow": one_town(high=0.8),
                "two_in_kind": two_towns("in_kind")}[name]
        _MARKETS[name] = market_from_dict(spec)
    return _MARKETS[name]


def runner(name: str = "one", mechanism: str = "posted_fee") -> MechanismRunner:
    """Shared across tests so a size vector is solved once per session."""
    key = (name, mechanism)
    if key not in _RUNNERS:
        _RUNNERS[key] = MechanismRunner(market(name), mechanism)
    return _RUNNERS[key]


def settings(run: MechanismRunner) -> Settings:
    return Settings(mechanism=run.mechanism, payment=run.payment,
                    theta_bounds=run.theta_bounds(), epoch_seconds=EPOCH_SECONDS,
                    pause_seconds=PAUSE_SECONDS, credential_grace=GRACE)


COORDINATOR = Identity.from_seed(bytes(range(32)))


def node(i: int) -> Identity:
    return Identity.from_seed(bytes([i + 1]) * 32)


def new_core(run: MechanismRunner | None = None) -> EpochCore:
    run = run or runner()
    return EpochCore(identity=COORDINATOR, settings=settings(run))


def nonce(i: int) -> str:
    return f"{i:032x}"


def registration(who: Identity, *, location: int = 0, epoch: int = 0,
                 capacity: int = 5_000_000, endpoint: str | None = None,
                 issued: int | None = None, kind: str = "wlan_channels") -> Registration:
    return Registration(public_key=who.public_key, epoch=epoch, home_location=location,
                        capacity=capacity, kind=kind, endpoint=endpoint, issued=issued)


def declaration(who: Identity, *, epoch: int = 0, theta: int = 900_000,
                n: int | None = None) -> Declaration:
    seq = n if n is not None else int(who.node_id[:8], 16) + epoch
    return Declaration(epoch=epoch, node_id=who.node_id, theta=theta, nonce=nonce(seq))


def commitment(who: Identity, *, epoch: int = 0, amount: int) -> Commitment:
    return Commitment(epoch=epoch, node_id=who.node_id, contribution=amount)


def access_request(host: Identity, requester: Identity, *, epoch: int = 0, n: int = 1,
                   issued: int, amount: int) -> Envelope:
    """The requester's signed request (what receipts and refusals embed)."""
    return seal(requester, AccessRequest(credential_digest="ab" * 32, host_id=host.node_id,
                                         epoch=epoch, issued=issued, nonce=nonce(n),
                                         amount=amount))


def refusal(host: Identity, requester: Identity, *, epoch: int = 0, reason: str,
            time: int, n: int = 1, amount: int | None = None,
            issued: int | None = None) -> Envelope:
    req = access_request(host, requester, epoch=epoch, n=n,
                         issued=time if issued is None else issued, amount=amount or 1)
    return seal(host, Refusal(epoch=epoch, host_id=host.node_id,
                              requester_id=requester.node_id, nonce=nonce(n),
                              reason=reason, time=time, request=req, amount=amount))


def receipt(host: Identity, requester: Identity, *, epoch: int = 0, amount: int,
            time: int, n: int = 1, issued: int | None = None,
            asked: int | None = None) -> Envelope:
    req = access_request(host, requester, epoch=epoch, n=n,
                         issued=time if issued is None else issued, amount=asked or amount)
    return seal(host, GrantReceipt(epoch=epoch, host_id=host.node_id,
                                   requester_id=requester.node_id, nonce=nonce(n),
                                   amount=amount, time=time, request=req))


def audit_report(reporter: Identity, evidence: Sequence[Envelope], *,
                 epoch: int = 0) -> AuditReport:
    return AuditReport(epoch=epoch, reporter_id=reporter.node_id, evidence=tuple(evidence))


def raw(who: Identity, message: Any) -> bytes:
    return seal_bytes(who, message)


def forge_payload(who: Identity, message_type: str, payload: dict[str, Any]) -> bytes:
    """Sign an arbitrary payload object as ``message_type`` (valid signature, bad content).

    Encoded like the canonical form (sorted keys, no whitespace) but without its checks,
    so booleans and other refused values can be signed."""
    data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return Envelope.seal(who, message_type, data).to_bytes()


def envelope_obj(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(data)
    return obj


def relabel(data: bytes, new_type: str) -> bytes:
    """The same payload and signature under another type (the signature then fails)."""
    obj = envelope_obj(data)
    obj["type"] = new_type
    return json.dumps(obj).encode()


def flip_signature(data: bytes) -> bytes:
    obj = envelope_obj(data)
    sig = bytearray(bytes.fromhex(obj["signature"]))
    sig[0] ^= 1
    obj["signature"] = sig.hex()
    return json.dumps(obj).encode()


def payload_of(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(base64.b64decode(envelope_obj(data)["payload"]))
    return obj


# --- an epoch core with nodes -------------------------------------------------------------


def registered(core: EpochCore, n: int, *, location: int = 0) -> list[Identity]:
    people = [node(i) for i in range(n)]
    for p in people:
        reg = registration(p, location=location)
        change = core.check_registration(reg, raw(p, reg), now=T0)
        assert change is not None
        core.apply(change)
    return people


def open_now(core: EpochCore, now: int = T0) -> None:
    fees, q = runner().announcement_terms()
    core.apply(core.plan_open(now, fees=fees, q=q))


def close_epoch_zero(core: EpochCore, people: Sequence[Identity], *,
                     theta: int = 950_000, kind: str = "wlan_coverage",
                     ) -> tuple[Closed, dict[str, Envelope]]:
    """Register ``people`` (hosts of ``kind``), open epoch 0 at T0, declare ``theta``
    each, close it at T0 + EPOCH_SECONDS and commit what each owes: the close and the
    credentials (envelopes by node id)."""
    for p in people:
        r = registration(p, kind=kind)
        change = core.check_registration(r, raw(p, r), now=T0)
        assert change is not None
        core.apply(change)
    fees, q = runner().announcement_terms()
    core.apply(core.plan_open(T0, fees=fees, q=q))
    for p in people:
        d = declaration(p, theta=theta)
        core.apply(core.check_declaration(d, raw(p, d), T0 + 1))
    closed = core.close(T0 + EPOCH_SECONDS, runner().run)
    for p in people:
        c = commitment(p, amount=closed.allocation.contribution_of(p.node_id) or 0)
        core.apply(core.check_commitment(c, raw(p, c)))
    creds = {c.credential.node_id: Envelope.from_bytes(c.envelope, max_size=1 << 16)
             for c in closed.credentials}
    return closed, creds


# --- the HTTP app under a test client -----------------------------------------------------

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Harness:
    client: TestClient[Any, Any]
    store: Store
    clock: FakeClock
    log: list[Any] = field(default_factory=list)

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None
                   ) -> tuple[int, Any]:
        resp = await self.client.post(path, data=body, headers=headers or {})
        return resp.status, await resp.json(content_type=None)

    async def get(self, path: str) -> tuple[int, bytes]:
        resp = await self.client.get(path)
        return resp.status, await resp.read()

    async def ok(self, path: str, body: bytes = b"", admin: bool = False) -> Any:
        status, data = await self.post(path, body, ADMIN if admin else None)
        assert status == 200, data
        return data

    async def fingerprint(self) -> Any:
        _, status = await self.get("/v1/status")
        counts = [self.store.count(t) for t in ("nodes", "epochs", "declarations", "allocations",
                                                 "credentials", "commitments", "evidence",
                                                 "exclusions")]
        return (json.loads(status), counts, self.store.declarations(0),
                self.store.declarations(1))


def config(**kw: Any) -> CoordinatorConfig:
    base: dict[str, Any] = {"market": market(), "mechanism": "posted_fee",
                            "epoch_seconds": EPOCH_SECONDS, "pause_seconds": 5,
                            "credential_grace": 30, "auto_schedule": False,
                            "admin_token": ADMIN_TOKEN}
    base.update(kw)
    return CoordinatorConfig(**base)


async def register_all(h: Harness, people: list[Identity], epoch: int = 0) -> None:
    for i, p in enumerate(people):
        reg = registration(p, epoch=epoch, endpoint=f"127.0.0.1:{9000 + i}")
        data = await h.ok("/v1/register", raw(p, reg))
        assert data == {"node_id": p.node_id, "epoch": epoch}


def decl_payload(who: Identity, **changes: Any) -> dict[str, Any]:
    base = {"epoch": 0, "node_id": who.node_id, "theta": 500_000, "nonce": nonce(4242)}
    base.update(changes)
    return base


# --- the real coordinator on an in-memory network ------------------------------------------


@asynccontextmanager
async def coordinator_on(
    net: MemoryNet, path: Path, clock: FakeClock, *, market_name: str = "two",
    **overrides: Any,
) -> AsyncIterator[str]:
    """The coordinator's own app (``coordinator.service.make_app``, SQLite at ``path``,
    manual epochs) served on ``net``; yields its base URL. Nodes reach it through
    ``net.session()``: the node's link to the coordinator's core, without a socket."""
    store = Store(path)
    app = make_app(config(market=market(market_name), **overrides), store=store,
                   identity=COORDINATOR, clock=clock, runner=runner(market_name))
    try:
        endpoint = await net.serve(app)
        yield f"http://{endpoint}"
        await net.stop(endpoint)
    finally:
        store.close()


@asynccontextmanager
async def served_on_socket(
    tmp_path: Path, *, middlewares: Sequence[Any] = (), app_kwargs: dict[str, Any] | None = None,
    runner_kwargs: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """A fresh coordinator (database in ``tmp_path``) behind its own runner, as the CLI
    serves it, on 127.0.0.1 and an ephemeral port: yields ``(host, port)``.
    ``middlewares`` run after the app's own."""
    store = Store(tmp_path / "coord.db")
    app = make_app(config(), store=store, identity=COORDINATOR, clock=FakeClock(),
                   runner=runner(), **(app_kwargs or {}))
    app.middlewares.extend(middlewares)
    site_runner = make_runner(app, access_log=None, **(runner_kwargs or {}))
    await site_runner.setup()
    site = LimitedSite(site_runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield "127.0.0.1", int(site_runner.addresses[0][1])
    finally:
        await site_runner.cleanup()
        store.close()
