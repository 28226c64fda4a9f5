#!/usr/bin/env python3
"""Speed of the signed protocol: host access decisions and coordinator ingest.

    python scripts/bench_protocol.py            # about 40 s
    python scripts/bench_protocol.py --quick    # smaller counts, under a minute
    python scripts/bench_protocol.py --json     # the figures as a JSON list
    python scripts/bench_protocol.py --check    # exit status 1 if a target is missed
    python scripts/bench_protocol.py --profile  # profile the ingest even if it meets its target

Targets: a host decides an access request in under 1 ms of CPU; through HTTP a first
decision (one POST, one Ed25519 verification once the host knows the credential) reaches
at least 90 % of a bare aiohttp handler doing the same cryptography, and a later decision
in a session (README section 7.1: MACed) at least 50 % of a bare trivial handler, both
measured in the same run with the same load generator (issue 8, item 1); the coordinator
ingests signed declarations at no less than 40 % of one core's raw Ed25519 verification
rate, measured in the coordinator's own process in the same run (issue 8, item 2). The
last column says whether a target is met (yes or NO); ``--check`` exits with status 1 if
one is missed. Each figure judged against a ceiling prints the ceiling and the ratio
beside it; ``--json`` prints a list of objects with ``figure``, ``value``, ``unit``,
``ceiling``, ``ratio``, ``goal`` and ``met``.

1. Host decision CPU: a :class:`node.host.Host` with an open epoch whose allocation
   includes the requesters; access bodies (README section 7) are signed in advance, each
   with a fresh nonce; each ``host.access(raw, now=...)`` is timed with
   :func:`time.process_time`. Grant path (requester included) and refusal path
   (``not_included``: a valid credential of a node the allocation left out; the host signs
   a refusal). The credentials were seen once before (warm-up), so each decision verifies
   one Ed25519 signature (the request's) and signs one (the answer).
2. Decisions per second through HTTP, with 16 in flight from one aiohttp session in this
   process (the load generator), against servers in child processes on 127.0.0.1: the
   node app (:func:`node.service.make_app`, its connection limits included); bare aiohttp
   apps whose handler reads the body and does a first decision's cryptography and nothing
   else -- verify one Ed25519 signature over a request's signing input (its key loaded
   once, as the node keeps a known credential's key), sign a receipt's signing input and
   answer a receipt's size (the sizes of a real grant by the node, with or without a
   session key), and (for a request opening a session) one X25519 exchange and
   HKDF-SHA256 -- (the ceilings of first decisions); and a bare aiohttp app answering a
   fixed short body (the trivial ceiling of session decisions). For context, a *floor*:
   a bare app doing the least an honest host must do besides that cryptography, as
   tersely as Python allows (one match of the canonical body and one of the payload, the
   known credential by its wire strings, the request's checks, a nonce set, the capacity,
   a receipt formatted in place; no ledger, no answers kept for complaints, no share or
   revocation checks), whose answers the roamer's client accepts as receipts. A host that
   also keeps what the audit and complaints need does at least this much, so the floor's
   ratio is about the most the node's can reach with this stack. Three node figures:
   first decisions opening a session
   (the request carries a ``session_key``), first decisions without one, and session
   decisions (MACed requests on sessions opened before the clock starts, by requesters
   the first-decision runs do not use, so no session is closed to make room). Bodies are
   signed (or MACed) before the clock starts and answers are only checked for their
   status in the timed loop; its CPU per request is printed beside the server's (one
   Python client process: for the cheapest requests it can be the bottleneck, which
   pulls a figure and its ceiling alike). Runs alternate over 5 rounds (3 with
   ``--quick``) and each figure is its median round; session and trivial runs send 4
   times as many requests, so all runs last about as long. The same three comparisons
   are printed per CPU-second of the server process (1 / its CPU per request), which
   other work on a shared machine disturbs much less than the wall rates. A receipt, a
   session answer and the floor's receipts (with and without a session) are verified
   afterwards.
3. Coordinator ingest: the coordinator app (:func:`coordinator.service.make_app`, served by
   :func:`coordinator.service.make_runner` on :func:`coordinator.service.new_event_loop`, as
   its command line does: uvloop where installed) in a child process, a
   real SQLite store (WAL, ``synchronous=FULL``) in a temporary directory, manual epochs
   (``POST /v1/admin/open`` with the admin token). The nodes register (not timed), an
   epoch opens, all declarations are signed in advance and posted over loopback with 32
   in flight, in 3 rounds; before each round the coordinator process times raw Ed25519
   verifications (``cryptography``, one key loaded once, a declaration's signing-input
   size): the ceiling. Every answer must be ``200 {"accepted": 1}``, which the service
   sends only after the declaration's transaction committed; the database is counted
   again after the coordinator stopped. Reported: declarations acknowledged per CPU-second
   of the coordinator process (the figure: one core) beside raw verifications per
   CPU-second (the ceiling; best round of each), and per wall second (bounded by the
   one-process load generator on a shared machine, so context only). Below the goal (or
   with ``--profile``) two short cProfile passes run in the coordinator
   process (wall-clock and CPU timers) on further declarations of the same epoch, and the
   time is split into signature verification, SQLite, JSON, aiohttp/asyncio, inkind logic
   (a builtin such as ``isinstance`` counts for its caller's category). cProfile's cost per
   call inflates the Python-heavy categories (with the CPU timer most); the C calls
   (Ed25519, SQLite) are close to their true cost, so read the split, not the total.

Servers run in child processes so the client's work (signing, parsing answers) is not
charged to them; the machine's core count is printed, since client and server share it.
Everything listens on 127.0.0.1 with ephemeral ports; temporary directories are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import hashlib
import json
import multiprocessing as mp
import os
import platform
import pstats
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.client import PeerClient, make_access_request
from node.host import Host
from node.service import make_app as make_node_app
from node.service import start_site
from protocol import (
    MICRO,
    Credential,
    Declaration,
    Envelope,
    Identity,
    Registration,
    seal,
    seal_bytes,
    verify_signature,
)
from protocol.access import _CANONICAL_BODY, AccessBody, AccessVerifier
from protocol.envelope import DOMAIN, payload_from_b64, signing_input
from protocol.fields import MAX_CLOCK_SKEW
from protocol.identity import VerifyKey
from protocol.messages import _CANONICAL_ACCESS_REQUEST
from protocol.session import RoamerSession, new_session_key, public_hex

# The coordinator (numpy, scipy) is imported only where it is used, so the node's child
# process starts quickly.

EPOCH = 5
ADMIN_TOKEN = "bench-admin-token"
TARGET_DECISION_US = 1000.0
#: Declarations ingested per coordinator CPU-second over raw Ed25519 verifications per
#: CPU-second, both in the coordinator's process (issue 8, item 2).
TARGET_INGEST_RATIO = 0.4
#: Bytes a declaration's signature covers (domain, type, length, a ~150-byte payload).
DECLARATION_SIGNING_BYTES = 180
#: Alternating rounds of ingest and raw verification, figure 3 (best of each kept).
INGEST_ROUNDS = 3
HTTP_CONCURRENCY = 16
ROUNDS = 10  # alternating rounds of grant and refusal, figure 1
INGEST_CONCURRENCY = 32
#: The slides' one-town market (u = 2/3 sqrt(Q), c = Q, θ ~ U[0, 1]); only its
#: announcement terms are solved here (no epoch is closed).
MARKET_SPEC: dict[str, Any] = {
    "market": {"payment": "money", "exclusion": True},
    "locations": [{
        "name": "town", "n": 100,
        "type": {"dist": "uniform", "low": 0.0, "high": 1.0},
        "utility": {"kind": "power", "A": 2.0 / 3.0, "alpha": 0.5},
        "cost": {"kind": "power", "B": 1.0, "beta": 1.0},
    }],
}


@dataclass(frozen=True)
class Sizes:
    decisions_cpu: int  # signed requests per path, figure 1
    requesters: int  # included requesters in the allocation
    decisions_http: int  # decisions per HTTP run (sequential and concurrent), figure 2
    nodes: int  # declarations ingested per round, figure 3
    profile_nodes: int  # declarations per profiling pass
    http_rounds: int  # alternating rounds of the HTTP runs, figure 2 (the median is kept)


FULL = Sizes(decisions_cpu=5000, requesters=1000, decisions_http=2000, nodes=1500,
             profile_nodes=600, http_rounds=5)
QUICK = Sizes(decisions_cpu=1000, requesters=200, decisions_http=300, nodes=300,
              profile_nodes=200, http_rounds=3)


@dataclass(frozen=True)
class Row:
    figure: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    ceiling: float | None = None  # the bare figure this one is judged against, same run
    goal: float | None = None  # the ratio to reach

    @property
    def ratio(self) -> float | None:
        return None if self.ceiling is None else self.value / self.ceiling

    def to_json(self) -> dict[str, Any]:
        return {"figure": self.figure, "value": self.value, "unit": self.unit,
                "ceiling": self.ceiling, "ratio": self.ratio,
                # A ratio goal where there is a same-run ceiling, else the absolute target
                # the row is judged by (so a "met" never stands without what it met).
                "goal": self.goal if self.goal is not None else (self.target or None),
                "met": self.met}


# --- small helpers ---------------------------------------------------------------------


def ident(tag: str, i: int) -> Identity:
    """A deterministic identity, the same in every process."""
    return Identity.from_seed(hashlib.sha256(f"inkind-bench:{tag}:{i}".encode()).digest())


def pct(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p * (len(ordered) - 1))))]


def credential(coord: Identity, who: Identity, *, now: int) -> Envelope:
    return seal(coord, Credential(node_id=who.node_id, public_key=who.public_key, epoch=EPOCH,
                                  not_before=now - 100, expires=now + 3600, location=1))


async def run_bounded(count: int, concurrency: int,
                      job: Callable[[int], Awaitable[float]]) -> list[float]:
    """Run ``job(i)`` for i < count with at most ``concurrency`` in flight; their results."""
    results: list[float] = [0.0] * count
    indices = iter(range(count))

    async def worker() -> None:
        for i in indices:  # shared iterator: each index is taken once
            results[i] = await job(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return results


# --- child processes: a node or a coordinator, plus /bench/ control routes --------------


def _category(file: str, name: str) -> str:
    """Where a profiled function's own time goes."""
    text = f"{file} {name}"
    if "cryptography" in text or "ed25519" in text.lower():
        return "signature verification (Ed25519)"
    if "sqlite3" in text:
        return "SQLite (statements, commit + fsync)"
    if "epoll" in name or "select.poll" in name:
        return "idle (waiting in epoll)"
    if "/json/" in file or "json" in name or "scanner" in name or "protocol/encoding" in file:
        return "JSON (parse, canonical check, answer)"
    if any(part in text for part in ("aiohttp", "asyncio", "selectors", "multidict", "yarl",
                                     "_socket", "socket.py", "contextvars", "propcache")):
        return "aiohttp + asyncio (HTTP, event loop)"
    if any(part in file for part in ("/protocol/", "/coordinator/", "/node/")):
        return "inkind logic (envelopes, checks, state)"
    return "other (stdlib, builtins)"


def _profile_summary(prof: cProfile.Profile, timer: str) -> dict[str, Any]:
    stats = pstats.Stats(prof)
    categories: Counter[str] = Counter()
    top: list[tuple[float, str, int]] = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    other = _category("", "")
    for (file, line, name), (_cc, calls, own, _cum, callers) in raw.items():
        category = _category(file, name)
        if file == "~" and category == other and callers:
            # A builtin (isinstance, len, bytes.fromhex...) counts for whoever called it.
            for (c_file, _c_line, c_name), edge in callers.items():
                categories[_category(c_file, c_name)] += edge[2]
        else:
            categories[category] += own
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        top.append((own, where, calls))
    top.sort(reverse=True)
    return {"timer": timer, "total": sum(categories.values()),
            "categories": dict(categories), "top": top[:8]}


def _add_bench_routes(app: web.Application, stop: asyncio.Event) -> None:
    """CPU clock, cProfile switch and stop, all run in the server's event-loop thread."""
    profiler: list[cProfile.Profile] = []

    async def cpu(_: web.Request) -> web.Response:
        return web.json_response({"cpu": time.process_time()})

    async def profile_start(request: web.Request) -> web.Response:
        timer = request.query.get("timer", "wall")
        prof = cProfile.Profile(time.process_time if timer == "cpu" else time.perf_counter)
        profiler[:] = [prof]
        prof.enable()
        return web.json_response({"timer": timer})

    async def profile_stop(request: web.Request) -> web.Response:
        prof = profiler.pop()
        prof.disable()
        return web.json_response(_profile_summary(prof, request.query.get("timer", "wall")))

    async def verify(request: web.Request) -> web.Response:
        """The ingest's ceiling: raw Ed25519 verifications per CPU-second in this process
        (one key loaded once, a declaration's signing-input size, ``cryptography``)."""
        n = int(request.query.get("n", "1000"))
        key = ident("ceiling", 0)
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.public_key))
        data = b"d" * DECLARATION_SIGNING_BYTES
        signature = key.sign(data)
        t0 = time.process_time()
        for _ in range(n):
            public.verify(signature, data)
        return web.json_response({"per_cpu_second": n / (time.process_time() - t0)})

    async def halt(_: web.Request) -> web.Response:
        stop.set()
        return web.json_response({"stopping": True})

    app.router.add_get("/bench/cpu", cpu)
    app.router.add_post("/bench/profile/start", profile_start)
    app.router.add_post("/bench/profile/stop", profile_stop)
    app.router.add_post("/bench/verify", verify)
    app.router.add_post("/bench/stop", halt)



def _access_sizes(opening: bool) -> tuple[int, int, int]:
    """``(request signing input, receipt signing input, receipt on the wire)``, bytes, of
    a real first decision at a :class:`node.host.Host` (with or without a session key),
    so each ceiling hashes, signs and sends exactly what the node does."""
    coord, host_id, who = ident("coordinator", 0), ident("host", 0), ident("req", 0)
    now = int(time.time())
    host = Host(host_id, kind="wlan_coverage", location=0, coordinator_key=coord.public_key)
    host.open_epoch(epoch=EPOCH, included=[who.node_id], opened=MICRO, now=now)
    body = make_access_request(who, credential(coord, who, now=now), host_id=host_id.node_id,
                               amount=MICRO, now=now,
                               session_key=public_hex(new_session_key()) if opening else None)
    receipt = host.access(body.to_bytes(), now=now).receipt
    if receipt is None:
        raise RuntimeError("the sample request was not granted")
    return (len(signing_input(body.request.type, body.request.payload)),
            len(signing_input(receipt.type, receipt.payload)), len(receipt.to_bytes()))


def _bare_app(crypto: str) -> tuple[web.Application, Callable[[], None]]:
    """The ceilings of figure 2: a handler doing a first decision's cryptography and
    nothing else -- ``crypto`` "sign": verify one Ed25519 signature over an access
    request's signing input, sign a receipt's, answer a receipt's size (the node's sizes,
    :func:`_access_sizes`); "session": that, plus one X25519 exchange and HKDF-SHA256 as
    when a session opens -- or ("none") only reading the body and answering."""
    key = ident("bare", 0)
    request_bytes, receipt_bytes, reply_bytes = _access_sizes(crypto == "session")
    data = b"r" * request_bytes
    signature = key.sign(data)
    # Loaded once, as the node keeps a known credential's key loaded: the ceiling does the
    # cryptography the cheapest way the node could.
    loaded = VerifyKey.load(key.public_key)
    assert loaded is not None
    to_sign = b"s" * receipt_bytes
    reply = b"x" * reply_bytes
    own = X25519PrivateKey.generate()  # the host's key of the epoch
    peer = X25519PublicKey.from_public_bytes(X25519PrivateKey.generate().public_key()
                                             .public_bytes_raw())

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if crypto == "none":
            return web.Response(body=b'{"ok":1}', content_type="application/json")
        if not loaded.verify(signature, data):
            raise RuntimeError("the fixed signature does not verify")
        if crypto == "session":
            okm = HKDF(algorithm=hashes.SHA256(), length=80, salt=data[:32],
                       info=data[:64]).derive(own.exchange(peer))
            signed = to_sign[:-80] + okm
        else:
            signed = to_sign
        return web.Response(body=reply[:-64] + key.sign(signed)[:64],
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/access", handle)
    return app, lambda: None


#: The request signing input's prefix (protocol README section 4: domain, type, NUL).
_REQUEST_PREFIX = DOMAIN + b"access_request\x00"
_RECEIPT_PREFIX = DOMAIN + b"grant_receipt\x00"


def _floor_app() -> tuple[web.Application, Callable[[], None]]:
    """A lower bound on a host's Python per first decision (context for figure 2): the
    least an honest host must do besides the cryptography, written as tersely as Python
    allows, on the very bodies the node gets. One match of the canonical body and one of
    the request's payload (the protocol's grammars), the known credential by its wire
    strings (learnt once, as the node does: coordinator signature verified, payload
    parsed), the request's Ed25519 signature, its host, credential, epoch, window, skew,
    nonce (a set) and inclusion, the capacity, and a receipt formatted in place and
    signed; for a request with a session key, also the X25519 exchange, HKDF and a
    session table entry. It
    keeps nothing else -- no ledger for the audit, no answer for a relayed complaint, no
    per-roamer share, no revocation, no error bodies -- so a host that keeps what the
    audit and complaints need does at least this much, and the floor's ratio is about
    the most the node's can reach with this stack."""
    coord, host = ident("coordinator", 0), ident("host", 0)
    verifier = AccessVerifier(host_id=host.node_id, coordinator_key=coord.public_key)
    host_id = host.node_id.encode()
    signer = host.public_key.encode()
    known: dict[bytes, tuple[str, Credential, VerifyKey]] = {}
    seen: set[tuple[str, bytes]] = set()
    sessions: dict[bytes, tuple[str, bytes]] = {}
    left = [10**15]
    own = X25519PrivateKey.generate()  # the host's key of the epoch, and its public half
    own_public = b',"session_key":"%s"' % public_hex(own).encode()

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        now = int(time.time())
        m = _CANONICAL_BODY.fullmatch(raw)
        if m is None:
            raise web.HTTPBadRequest()
        c_payload, c_sig, c_signer, r_payload, r_sig, r_signer = m.groups()
        entry = known.get(c_payload + c_sig + c_signer)
        if entry is None:  # learnt once per credential, as the node remembers it
            digest, cred = verifier.credential(AccessBody.from_bytes(raw).credential)
            key = VerifyKey.load(cred.public_key)
            assert key is not None
            entry = known[c_payload + c_sig + c_signer] = (digest, cred, key)
        digest, cred, key = entry
        payload = payload_from_b64(r_payload)
        if r_signer.decode() != cred.public_key or not key.verify(
                bytes.fromhex(r_sig.decode()),
                _REQUEST_PREFIX + len(payload).to_bytes(8, "big") + payload):
            raise web.HTTPForbidden()
        p = _CANONICAL_ACCESS_REQUEST.fullmatch(payload)
        if p is None:
            raise web.HTTPBadRequest()
        amount, r_digest, epoch, r_host, issued, nonce, _, session_key = p.groups()
        if (r_host != host_id or r_digest.decode() != digest or int(epoch) != cred.epoch
                or not cred.not_before - MAX_CLOCK_SKEW <= now <= cred.expires + MAX_CLOCK_SKEW
                or abs(int(issued) - now) > MAX_CLOCK_SKEW or (cred.node_id, nonce) in seen
                or int(amount) > left[0]):
            raise web.HTTPForbidden()
        seen.add((cred.node_id, nonce))
        left[0] -= int(amount)
        envelope = raw[m.start(4) - 12:m.end(6) + 26]  # the request's canonical envelope
        extra = b""
        if session_key is not None:
            shared = own.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(
                session_key.decode())))
            okm = HKDF(algorithm=hashes.SHA256(), length=80,
                       salt=hashlib.sha256(envelope).digest(), info=session_key).derive(shared)
            sessions[okm[64:]] = (cred.node_id, okm[:64])
            extra = own_public
        receipt = (b'{"amount":%s,"epoch":%s,"host_id":"%s","nonce":"%s","request":%s,'
                   b'"requester_id":"%s"%s,"time":%d}' % (
                       amount, epoch, host_id, nonce, envelope, cred.node_id.encode(), extra,
                       now))
        sig = host.sign(_RECEIPT_PREFIX + len(receipt).to_bytes(8, "big") + receipt)
        return web.Response(body=b'{"payload":"%s","signature":"%s","signer":"%s",'
                                 b'"type":"grant_receipt"}' % (
                                     base64.b64encode(receipt), sig.hex().encode(), signer),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/access", handle)
    return app, lambda: None


def _node_app(requesters: int) -> tuple[web.Application, Callable[[], None]]:
    host = Host(ident("host", 0), kind="wlan_coverage", location=0,
                coordinator_key=ident("coordinator", 0).public_key)
    now = int(time.time())
    host.open_epoch(epoch=EPOCH, included=[ident("req", i).node_id for i in range(requesters)],
                    opened=1_000_000 * MICRO, now=now)
    return make_node_app(host, clock=lambda: int(time.time())), lambda: None


def _coordinator_app(db_dir: str) -> tuple[web.Application, Callable[[], None]]:
    from coordinator.config import CoordinatorConfig
    from coordinator.mechanism import market_from_dict
    from coordinator.service import make_app as make_coordinator_app
    from coordinator.store import Store

    config = CoordinatorConfig(market=market_from_dict(MARKET_SPEC), mechanism="posted_fee",
                               epoch_seconds=3600, auto_schedule=False,
                               admin_token=ADMIN_TOKEN)
    store = Store(Path(db_dir) / "coordinator.db")
    app = make_coordinator_app(config, store=store, identity=ident("coordinator", 0))
    return app, store.close


def serve(kind: str, arg: Any, conn: Connection) -> None:
    """Child process body: serve ``kind`` ("node" or "coordinator") until /bench/stop."""

    async def main() -> None:
        if kind == "node":
            app, close = _node_app(arg)
        elif kind == "bare":
            app, close = _bare_app(arg)
        elif kind == "floor":
            app, close = _floor_app()
        else:
            app, close = _coordinator_app(arg)
        stop = asyncio.Event()
        _add_bench_routes(app, stop)
        if kind in ("bare", "floor", "coordinator"):
            # Plain aiohttp for the ceilings (no limits of the node's own); the coordinator
            # with the runner its command line serves it with.
            runner = web.AppRunner(app, access_log=None)
            if kind == "coordinator":
                from coordinator.service import make_runner

                runner = make_runner(app, handle_signals=False, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            if kind == "coordinator":
                from coordinator.connections import LimitedSite

                site = LimitedSite(runner, "127.0.0.1", 0)
            await site.start()
            address = f"127.0.0.1:{runner.addresses[0][1]}"
        else:
            runner, address = await start_site(app)
        try:
            conn.send(address)
            await stop.wait()
            await asyncio.sleep(0.05)  # let the answer to /bench/stop leave
        finally:
            await runner.cleanup()
            close()

    if kind == "coordinator":  # on the event loop its command line serves it on
        from coordinator.service import new_event_loop

        with asyncio.Runner(loop_factory=new_event_loop) as loop_runner:
            loop_runner.run(main())
    else:
        asyncio.run(main())


class Child:
    """A server in a child process, reached over HTTP at ``url``."""

    def __init__(self, kind: str, arg: Any) -> None:
        ctx = mp.get_context("spawn")
        mine, theirs = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(kind, arg, theirs), daemon=True)
        self.process.start()
        theirs.close()
        if not mine.poll(60):
            self.process.terminate()
            raise RuntimeError(f"the {kind} process did not start")
        self.url = "http://" + str(mine.recv())
        mine.close()

    async def cpu(self, session: aiohttp.ClientSession) -> float:
        async with session.get(self.url + "/bench/cpu") as resp:
            return float((await resp.json())["cpu"])

    async def control(self, session: aiohttp.ClientSession, path: str) -> Any:
        async with session.post(self.url + path) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def stop(self, session: aiohttp.ClientSession) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await self.control(session, "/bench/stop")
        await asyncio.to_thread(self.process.join, 10)
        if self.process.is_alive():
            self.process.terminate()
            await asyncio.to_thread(self.process.join, 5)


# --- 1. host decision CPU ----------------------------------------------------------------


def bench_host_cpu(sizes: Sizes) -> tuple[list[Row], dict[str, float]]:
    now = 1_700_000_000
    coord, host_id = ident("coordinator", 0), ident("host", 0)
    included = [ident("req", i) for i in range(sizes.requesters)]
    outsiders = [ident("out", i) for i in range(50)]
    m = sizes.decisions_cpu
    host = Host(host_id, kind="wlan_coverage", location=0, coordinator_key=coord.public_key,
                max_replays=4 * m + 200)
    host.open_epoch(epoch=EPOCH, included=[w.node_id for w in included],
                    opened=(m + sizes.requesters + 100) * MICRO, now=now)
    creds = {w.node_id: credential(coord, w, now=now) for w in included + outsiders}

    def requests(people: list[Identity], n: int) -> list[bytes]:
        out = []
        for i in range(n):
            who = people[i % len(people)]
            out.append(make_access_request(who, creds[who.node_id], host_id=host.node_id,
                                           amount=MICRO, now=now).to_bytes())
        return out

    # Rounds alternate the two paths so that both see the same machine (a shared VM's
    # CPU time is noisy); every request is decided once, nonces are all fresh.
    paths = {"grant": (included, "granted"), "refusal not_included": (outsiders, "not_included")}
    samples: dict[str, list[float]] = {label: [] for label in paths}
    # Warm-up: every requester once, so the host knows each credential (verified once).
    for raw in requests(included, len(included)) + requests(outsiders, len(outsiders)):
        host.access(raw, now=now)
    for rnd in range(ROUNDS):
        order = list(paths) if rnd % 2 == 0 else list(reversed(paths))
        batches = {label: requests(paths[label][0], m // ROUNDS) for label in order}
        for label in order:
            want = paths[label][1]
            for raw in batches[label]:
                t0 = time.process_time()
                outcome = host.access(raw, now=now)
                samples[label].append(time.process_time() - t0)
                if outcome.decision.reason != want:
                    raise RuntimeError(f"{label}: expected {want}, got "
                                       f"{outcome.decision.reason}")
    rows: list[Row] = []
    for label, cpu in samples.items():
        for stat, value in (("mean", sum(cpu) / len(cpu)), ("p50", pct(cpu, 0.5)),
                            ("p99", pct(cpu, 0.99))):
            us = 1e6 * value
            rows.append(Row(f"host decision CPU, {label}: {stat}", us, "µs",
                            "< 1000 µs", us < TARGET_DECISION_US))

    # Context: the Ed25519 operations a decision contains (1 verification, 1 signature).
    data = b"x" * 300
    sig = coord.sign(data)
    reps = 2000
    t0 = time.process_time()
    for _ in range(reps):
        coord.sign(data)
    sign_us = 1e6 * (time.process_time() - t0) / reps
    t0 = time.process_time()
    for _ in range(reps):
        verify_signature(coord.public_key, sig, data)
    verify_us = 1e6 * (time.process_time() - t0) / reps
    return rows, {"sign_us": sign_us, "verify_us": verify_us}


# --- 2. decisions per second through HTTP ------------------------------------------------


async def bench_http(sizes: Sizes) -> list[Row]:
    coord = ident("coordinator", 0)
    host = ident("host", 0)
    n_people = min(sizes.requesters // 2, 64)
    people = [ident("req", i) for i in range(n_people)]  # first decisions
    # Session holders: other included requesters, so that the first-decision runs (which
    # open sessions too) never close theirs to make room.
    holders = [ident("req", n_people + i) for i in range(n_people)]
    n = sizes.decisions_http
    rows: list[Row] = []
    rates: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=HTTP_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        children = {"node": await asyncio.to_thread(Child, "node", sizes.requesters),
                    "bare-session": await asyncio.to_thread(Child, "bare", "session"),
                    "bare-crypto": await asyncio.to_thread(Child, "bare", "sign"),
                    "bare-trivial": await asyncio.to_thread(Child, "bare", "none"),
                    "floor": await asyncio.to_thread(Child, "floor", None)}
        try:
            now0 = int(time.time())
            creds = [credential(coord, w, now=now0) for w in people]
            holder_creds = [credential(coord, w, now=now0) for w in holders]
            keys = [public_hex(new_session_key()) for _ in range(8)]

            def bodies(count: int, *, opening: bool) -> list[bytes]:
                now = int(time.time())
                return [make_access_request(
                    people[i % n_people], creds[i % n_people], host_id=host.node_id,
                    amount=MICRO, now=now,
                    session_key=keys[i % len(keys)] if opening else None,
                ).to_bytes() for i in range(count)]

            # Sessions for the session runs, opened through the node's own client (one
            # signed request each, balance 10,000 units), before any clock starts.
            peer = PeerClient(session)
            sessions: list[RoamerSession] = []
            for who, cred in zip(holders, holder_creds, strict=True):
                own = new_session_key()
                body = make_access_request(who, cred, host_id=host.node_id,
                                           amount=10_000 * MICRO, now=int(time.time()),
                                           session_key=public_hex(own))
                answer = await peer.access(children["node"].url, body,
                                           host_key=host.public_key)
                opened = peer.open_session(own, body, answer)
                if opened is None:
                    raise RuntimeError(f"no session opened: {answer.reason}")
                sessions.append(opened)

            def session_bodies(count: int) -> list[bytes]:
                return [sessions[i % len(sessions)].request(1).to_bytes()
                        for i in range(count)]

            async def run(name: str, payloads: list[bytes]) -> tuple[float, float, float]:
                """(requests per wall second, server CPU and client CPU per request, µs)."""
                url = children[name].url + "/v1/access"

                async def post(i: int) -> float:
                    async with session.post(url, data=payloads[i]) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"{name}: HTTP {resp.status}")
                    return 0.0

                cpu0 = await children[name].cpu(session)
                t0, client0 = time.perf_counter(), time.process_time()
                await run_bounded(len(payloads), HTTP_CONCURRENCY, post)
                wall = time.perf_counter() - t0
                client = time.process_time() - client0
                server = await children[name].cpu(session) - cpu0
                k = len(payloads)
                return k / wall, 1e6 * server / k, 1e6 * client / k

            runs: dict[str, tuple[str, Callable[[int], list[bytes]]]] = {
                "first, opening a session": ("node", lambda k: bodies(k, opening=True)),
                "first, no session": ("node", lambda k: bodies(k, opening=False)),
                "session": ("node", session_bodies),
                "bare-session": ("bare-session", lambda k: bodies(k, opening=True)),
                "bare-crypto": ("bare-crypto", lambda k: bodies(k, opening=False)),
                "bare-trivial": ("bare-trivial", session_bodies),
                "floor, opening a session": ("floor", lambda k: bodies(k, opening=True)),
                "floor, no session": ("floor", lambda k: bodies(k, opening=False)),
            }
            # Warm up: every requester once at the node (its credential is then known),
            # and every server's connections.
            for name, make in runs.values():
                await run(name, make(max(n_people, 50)))
            # Alternate the runs so they see the same machine, and keep each one's median
            # round: on a shared machine the best of a few short runs rewards whichever
            # caught a quiet moment. Cheap requests (session, trivial) are sent in larger
            # runs, so every run lasts about as long and sees as much of the noise.
            samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs}
            for _ in range(sizes.http_rounds):
                for label, (name, make) in runs.items():
                    cheap = label in ("session", "bare-trivial")
                    samples[label].append(await run(name, make(4 * n if cheap else n)))
            for label, got in samples.items():
                rate, server_us, client_us = sorted(got)[len(got) // 2]
                rates[label] = rate
                rates[label + ":server"] = server_us
                rates[label + ":client"] = client_us
            # The answers are ones the roamer accepts (checked outside the timing): a
            # receipt carrying the host's session key, and a MACed session answer.
            own = new_session_key()
            body = make_access_request(people[0], creds[0], host_id=host.node_id,
                                       amount=MICRO, now=int(time.time()),
                                       session_key=public_hex(own))
            answer = await peer.access(children["node"].url, body, host_key=host.public_key)
            if peer.open_session(own, body, answer) is None:
                raise RuntimeError(f"access refused or no session: {answer.reason}")
            grant = await peer.session_access(children["node"].url, sessions[0], amount=1)
            if not grant.granted:
                raise RuntimeError(f"session request refused: {grant.error}")
            # The floor's answers are receipts a roamer accepts too (so it did the work).
            for opening in (False, True):
                sample = make_access_request(
                    people[1], creds[1], host_id=host.node_id, amount=MICRO,
                    now=int(time.time()),
                    session_key=public_hex(new_session_key()) if opening else None)
                answer = await peer.access(children["floor"].url, sample,
                                           host_key=host.public_key)
                if not answer.granted:
                    raise RuntimeError(f"the floor's answer is no receipt: {answer.reason}")
        finally:
            for child in children.values():
                await child.stop(session)
    tag = f"HTTP, {HTTP_CONCURRENCY} in flight"
    judged = (
        ("first, opening a session", "bare-session", 0.9,
         "first access decisions/s, one POST opening a session", "same-crypto ceiling "
         "(Ed25519 verify + sign, X25519, HKDF)"),
        ("first, no session", "bare-crypto", 0.9,
         "first access decisions/s, one POST, no session", "same-crypto ceiling "
         "(Ed25519 verify + sign)"),
        ("session", "bare-trivial", 0.5,
         "session decisions/s (MACed, HMAC-SHA256)", "bare trivial ceiling"),
    )
    for label, ceiling_name, goal, figure, what in judged:
        value, ceiling = rates[label], rates[ceiling_name]
        rows.append(Row(f"{figure}, {tag}", value, "/s",
                        f">= {100 * goal:.0f}% of the {what}", value >= goal * ceiling,
                        ceiling=ceiling, goal=goal))
    # The same comparison by the server's own CPU per request (what one core serves): on a
    # shared machine the wall rates above swing with other work, these much less.
    for label, ceiling_name, goal, figure, what in judged:
        value = 1e6 / rates[label + ":server"]
        ceiling = 1e6 / rates[ceiling_name + ":server"]
        rows.append(Row(f"{figure.replace('/s', '')} per server CPU-second", value, "/CPU-s",
                        f">= {100 * goal:.0f}% of the {what}", value >= goal * ceiling,
                        ceiling=ceiling, goal=goal))
    # The floor (context, no goal): the most any correct host could reach here.
    for label, ceiling_name, what in (
            ("floor, opening a session", "bare-session", "opening a session"),
            ("floor, no session", "bare-crypto", "no session")):
        rows.append(Row(f"  floor: least Python a first decision needs, {what}, {tag}",
                        rates[label], "/s", ceiling=rates[ceiling_name]))
        rows.append(Row(f"  floor: least Python a first decision needs, {what}, per server "
                        "CPU-second", 1e6 / rates[label + ":server"], "/CPU-s",
                        ceiling=1e6 / rates[ceiling_name + ":server"]))
    for label, ceiling_label in (("bare-session", "bare handler, Ed25519 + X25519 + HKDF"),
                                 ("bare-crypto", "bare handler, Ed25519 verify + sign"),
                                 ("bare-trivial", "bare trivial handler")):
        rows.append(Row(f"  ceiling: {ceiling_label}, {tag}", rates[label], "/s"))
    for label in runs:
        rows.append(Row(f"  server CPU per request ({label})", rates[label + ":server"], "µs"))
        rows.append(Row(f"  load generator CPU per request ({label})",
                        rates[label + ":client"], "µs"))
    return rows


# --- 3. coordinator ingest -----------------------------------------------------------------


def sqlite_commit_ms(directory: str, n: int = 300) -> tuple[float, float]:
    """Wall and CPU ms of one small ``BEGIN IMMEDIATE; INSERT; COMMIT`` (WAL, FULL) here."""
    path = Path(directory) / "probe.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?, ?)", (i, b"x" * 400))
            db.execute("COMMIT")
        return (1e3 * (time.perf_counter() - w0) / n, 1e3 * (time.process_time() - c0) / n)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)


async def post_all(session: aiohttp.ClientSession, url: str, bodies: Sequence[bytes],
                   concurrency: int, *, field: str = "accepted", want: object = 1) -> list[float]:
    """POST every body; each answer must be 200 with ``body[field] == want``."""
    headers = {"Content-Type": "application/json"}

    async def post(i: int) -> float:
        t0 = time.perf_counter()
        async with session.post(url, data=bodies[i], headers=headers) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200 or body.get(field) != want:
                raise RuntimeError(f"{url}: HTTP {resp.status} {body}")
        return time.perf_counter() - t0

    return await run_bounded(len(bodies), concurrency, post)


@dataclass
class IngestResult:
    rows: list[Row]
    profiles: list[dict[str, Any]]
    profiled: int
    db_rows: int


async def bench_ingest(sizes: Sizes, *, force_profile: bool) -> IngestResult:
    k, p, r = sizes.nodes, sizes.profile_nodes, INGEST_ROUNDS
    nodes = [ident("node", i) for i in range(r * k + 2 * p)]
    regs = [seal_bytes(w, Registration(public_key=w.public_key, epoch=0, home_location=0,
                                       capacity=5 * MICRO, kind="wlan_channels"))
            for w in nodes]
    tmp = tempfile.mkdtemp(prefix="inkind-bench-")
    rows: list[Row] = []
    profiles: list[dict[str, Any]] = []
    try:
        commit_wall, commit_cpu = sqlite_commit_ms(tmp)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=INGEST_CONCURRENCY)) as session:
            child = await asyncio.to_thread(Child, "coordinator", tmp)
            try:
                await post_all(session, child.url + "/v1/register", regs, INGEST_CONCURRENCY,
                               field="epoch", want=0)
                async with session.post(child.url + "/v1/admin/open", headers={
                        "Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
                    resp.raise_for_status()
                    epoch = int((await resp.json())["epoch"])
                decls = [seal_bytes(w, Declaration(epoch=epoch, node_id=w.node_id,
                                                   theta=100_000 + (i * 7919) % 800_000,
                                                   nonce=f"{i:032x}"))
                         for i, w in enumerate(nodes)]
                url = child.url + "/v1/declarations"
                # Rounds alternate the ingest and the raw-verify ceiling in the same
                # process, so both see the same machine; each keeps its best round.
                best: dict[str, float] = {}
                lat: list[float] = []
                for i in range(r):
                    verify = await child.control(session, f"/bench/verify?n={k}")
                    best["verify"] = max(best.get("verify", 0.0), verify["per_cpu_second"])
                    cpu0 = await child.cpu(session)
                    t0 = time.perf_counter()
                    lat += await post_all(session, url, decls[i * k:(i + 1) * k],
                                          INGEST_CONCURRENCY)
                    wall = time.perf_counter() - t0
                    cpu = await child.cpu(session) - cpu0
                    best["wall"] = max(best.get("wall", 0.0), k / wall)
                    best["cpu"] = max(best.get("cpu", 0.0), k / cpu)
                ratio = best["cpu"] / best["verify"]
                rows += [
                    Row("declarations ingested per coordinator CPU-second", best["cpu"],
                        "/CPU-s", f">= {TARGET_INGEST_RATIO:.0%} of raw Ed25519 verify",
                        ratio >= TARGET_INGEST_RATIO, ceiling=best["verify"],
                        goal=TARGET_INGEST_RATIO),
                    Row("  ceiling: raw Ed25519 verifications per CPU-second, same process",
                        best["verify"], "/CPU-s"),
                    Row("  coordinator CPU per declaration", 1e6 / best["cpu"], "µs"),
                    Row(f"  declarations acknowledged/s ({INGEST_CONCURRENCY} in flight, "
                        "one client process)", best["wall"], "/s"),
                    Row("  declaration latency p50", 1e3 * pct(lat, 0.5), "ms"),
                    Row("  declaration latency p99", 1e3 * pct(lat, 0.99), "ms"),
                    Row("  SQLite commit alone (WAL, FULL), wall", commit_wall, "ms"),
                    Row("  SQLite commit alone (WAL, FULL), CPU", commit_cpu, "ms"),
                ]
                profiled = 0
                if force_profile or ratio < TARGET_INGEST_RATIO:
                    for n, timer in enumerate(("wall", "cpu")):
                        batch = decls[r * k + n * p: r * k + (n + 1) * p]
                        await child.control(session, f"/bench/profile/start?timer={timer}")
                        await post_all(session, url, batch, INGEST_CONCURRENCY)
                        profiles.append(await child.control(
                            session, f"/bench/profile/stop?timer={timer}"))
                        profiled += len(batch)
            finally:
                await child.stop(session)
        db = sqlite3.connect(f"file:{Path(tmp) / 'coordinator.db'}?mode=ro", uri=True)
        try:
            db_rows = int(db.execute("SELECT COUNT(*) FROM declarations WHERE epoch = ?",
                                     (epoch,)).fetchone()[0])
        finally:
            db.close()
        if db_rows != r * k + profiled:
            raise RuntimeError(f"{db_rows} declarations stored, {r * k + profiled} acknowledged")
        return IngestResult(rows=rows, profiles=profiles, profiled=profiled, db_rows=db_rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- output --------------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def print_table(rows: Sequence[Row]) -> None:
    head = ("figure", "value", "unit", "ceiling", "ratio", "target", "met")
    cells = [(r.figure, _num(r.value), r.unit,
              "-" if r.ceiling is None else _num(r.ceiling),
              "-" if r.ratio is None else f"{100 * r.ratio:.0f}%",
              r.target or "-", "-" if r.met is None else ("yes" if r.met else "NO"))
             for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for c in cells:
        print("  ".join([c[0].ljust(widths[0]), c[1].rjust(widths[1]), c[2].ljust(widths[2]),
                         c[3].rjust(widths[3]), c[4].rjust(widths[4]),
                         *(x.ljust(w) for x, w in zip(c[5:], widths[5:], strict=True))]))


def print_profiles(result: IngestResult, per_pass: int) -> None:
    for prof in result.profiles:
        total = prof["total"]
        print(f"\ncProfile of the coordinator process, {per_pass} declarations, "
              f"{prof['timer']} timer: {1e3 * total / per_pass:.2f} ms per declaration "
              "(profiler overhead included)")
        for name, own in sorted(prof["categories"].items(), key=lambda kv: -kv[1]):
            print(f"  {100 * own / total:5.1f}%  {1e6 * own / per_pass:8.1f} µs/decl  {name}")
        print("  top functions by own time:")
        for own, where, calls in prof["top"][:6]:
            print(f"    {100 * own / total:5.1f}%  {calls:>7} calls  {where[:90]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts (under a minute)")
    parser.add_argument("--json", action="store_true",
                        help="print the figures as a JSON list of objects")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 if any figure misses its goal")
    parser.add_argument("--profile", action="store_true",
                        help="profile the coordinator ingest even if it meets its target")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    note = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON
    print(f"inkind protocol benchmark{' (--quick)' if args.quick else ''}: "
          f"Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"aiohttp {aiohttp.__version__}, SQLite {sqlite3.sqlite_version}, "
          f"temp dir {tempfile.gettempdir()}", file=note, flush=True)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.1f} before starting; other processes share the "
              "cores, so these figures are pessimistic", file=note, flush=True)

    host_rows, crypto = bench_host_cpu(sizes)
    http_rows = asyncio.run(bench_http(sizes))
    ingest = asyncio.run(bench_ingest(sizes, force_profile=args.profile))
    rows = [*host_rows,
            Row("  context: Ed25519 sign (cryptography)", crypto["sign_us"], "µs"),
            Row("  context: Ed25519 verify (verify_signature)", crypto["verify_us"], "µs"),
            *http_rows, *ingest.rows]
    missed = [r.figure.strip() for r in rows if r.met is False]
    failed = 1 if args.check and missed else 0
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=1))
        if failed:
            print(f"goals missed: {missed}", file=sys.stderr)
        return failed
    print(f"host: {sizes.decisions_cpu} decisions per path, {sizes.requesters} included; "
          f"HTTP: {sizes.decisions_http} decisions per run (1 decision = one POST "
          f"/v1/access); ingest: {INGEST_ROUNDS} rounds of {sizes.nodes} declarations, "
          f"{INGEST_CONCURRENCY} in flight, "
          f"{ingest.db_rows} declarations found committed in the database\n")
    print_table(rows)
    if ingest.profiles:
        print_profiles(ingest, sizes.profile_nodes)
    print(f"\ntotal {time.perf_counter() - started:.1f} s, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    if failed:
        print(f"goals missed: {'; '.join(missed)}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
