"""The node's aiohttp service: the "Node (host side)" table of ``protocol/HTTP.md``.

Thin handlers over :class:`node.host.Host`: read the body (bounded in size and in time
before it is read in full), read the clock once, call the core, serialise. One
middleware turns the error hierarchy into ``{"code", "message"}`` bodies with each
code's HTTP status; a signed refusal travels as ``403 {"code", "message", "refusal":
ENVELOPE}``.

Slow and flooding clients (HTTP.md "Node: limits"): a connection that has not sent a
whole request head within :data:`IDLE_SECONDS` (of connecting, or of its last answer) is
closed (aiohttp's keep-alive timer, which also covers a connection that sends nothing);
a body must arrive within :data:`BODY_SECONDS` (else ``malformed`` and the connection
is closed);
and one client address holds at most :data:`MAX_CONNECTIONS_PER_CLIENT` connections at
once: a further one closes that address's oldest idle connection (one waiting for a
request head), or is closed on accept if none is idle. So stalled connections cannot
exhaust the host's file descriptors nor crowd out roamers and the coordinator's probes,
even from the flooder's own address, and since no
request reserves state before it verified (no challenge book), unauthenticated calls
cost the host CPU only, never a roamer's access.

Beyond HTTP.md, ``GET /v1/files`` lists the shared files (``{"files": [{"sha256",
"size"}]}``) so a roamer can learn what to download; a node of another kind answers an
empty list. An endpoint of another resource kind than the node's answers
``404 not_found`` (nothing is consumed, not even the nonce).

:func:`make_app` builds the app with its dependencies injected; :func:`start_site` binds
it (port 0 for an ephemeral port), so many nodes share one process and one event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion10, web
from aiohttp.web_protocol import RequestHandler

from node.client import RECEIPT_HEADER, SESSION_HEADER
from node.files import SHA256_RE
from node.host import AccessOutcome, Host
from node.http import NodeRunner
from node.resources import hash_job, job_iterations
from protocol import InkindError, from_micro, to_wire
from protocol.access import MAX_ACCESS_BODY_BYTES
from protocol.errors import (
    MalformedError,
    MethodNotAllowedError,
    NotFoundError,
    TooLargeError,
)
from protocol.fields import check_epoch, check_nonce
from protocol.kinds import Answer, kind_of

log = logging.getLogger("inkind.node")

Clock = Callable[[], int]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Largest access request body: two small envelopes (protocol.access).
MAX_REQUEST_BYTES = MAX_ACCESS_BODY_BYTES
#: Seconds a connection may stay without a whole request head (idle or trickling).
IDLE_SECONDS = 5.0
#: Seconds a request body may take to arrive.
BODY_SECONDS = 5.0
#: Connections one client address may hold open at once.
MAX_CONNECTIONS_PER_CLIENT = 128
HOST_KEY: web.AppKey[Host] = web.AppKey("host", Host)

_HTTP_CODES = {
    404: NotFoundError.code, 405: MethodNotAllowedError.code, 413: TooLargeError.code,
}


def _error(code: str, message: str, status: int) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"code", "message"}`` with the code's HTTP status."""
    try:
        if request.version < HttpVersion10:
            # HTTP/0.9 (a request line without a version) has no status line or headers
            # to carry the protocol's answers: the binding is HTTP/1.x (protocol/HTTP.md).
            raise MalformedError("HTTP/1.0 or HTTP/1.1 required")
        return await handler(request)
    except InkindError as exc:
        return web.json_response(to_wire(exc), status=exc.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "malformed" if exc.status < 500 else "internal")
        return _error(code, exc.reason, exc.status)
    except ConnectionResetError:
        # The client went away mid-body (aiohttp's body reader raises this): its fault,
        # not the host's; the answer has nobody to reach.
        log.debug("client closed the connection during %s %s", request.method, request.path)
        return _error(MalformedError.code, "connection closed before the body ended",
                      MalformedError.http_status)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error("internal", "internal error", 500)


async def read_body(
    request: web.Request, limit: int = MAX_REQUEST_BYTES, *, seconds: float = BODY_SECONDS
) -> bytes:
    """The body, refused (``too_large``) as soon as it exceeds ``limit`` bytes, and
    (``malformed``) if it has not arrived within ``seconds``."""
    content = request.content
    if content.is_eof():
        # The whole body arrived with the head (a small access body always does): it is
        # in the buffer, so neither a timer nor a wait is needed, and its size is known.
        data = content.read_nowait()
        if len(data) > limit:
            raise TooLargeError(f"body of {len(data)} bytes exceeds {limit}")
        return data
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"body of {request.content_length} bytes exceeds {limit}")
    buf = bytearray()  # read(n) returns what has arrived, not n bytes: read to EOF
    try:
        async with asyncio.timeout(seconds):
            while chunk := await request.content.read(min(limit + 1 - len(buf), 1 << 20)):
                buf += chunk
                if len(buf) > limit:
                    raise TooLargeError(f"body exceeds {limit} bytes")
    except TimeoutError:
        if request.transport is not None:
            request.transport.close()  # a slow sender loses its connection
        raise MalformedError(f"body not received within {seconds} s") from None
    return bytes(buf)


def _refused(outcome: AccessOutcome) -> web.Response:
    decision = outcome.decision
    body: dict[str, Any] = {"code": decision.reason, "message": decision.message}
    if outcome.refusal is not None:
        body["refusal"] = outcome.refusal.to_obj()
        return web.json_response(body, status=403)
    return web.json_response(body, status=decision.error().http_status)


def _serves(host: Host, answer: Answer) -> bool:
    """Whether the host's resource kind is served by the endpoint answering ``answer``."""
    return kind_of(host.kind).answer is answer


def _kind_error(host: Host, path: str) -> web.Response:
    return _error(NotFoundError.code, f"this node shares {host.kind}; {path} is not served",
                  NotFoundError.http_status)


def make_app(
    node_state: Host, *, clock: Clock, body_seconds: float = BODY_SECONDS
) -> web.Application:
    """The node's app. ``clock()`` returns integer Unix seconds; read once per request;
    a request body must arrive within ``body_seconds``.

    Every request is decided on what the host holds: a credential of an epoch the host
    does not enforce yet is refused ``future_epoch`` (only the node's agent moves the
    host to a new epoch; nothing here calls up into it).
    """
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_REQUEST_BYTES)
    app[HOST_KEY] = node_state
    host = node_state

    def decide(raw: bytes, resource: str | None = None) -> AccessOutcome:
        outcome = host.access(raw, now=clock(), resource=resource)
        if log.isEnabledFor(logging.INFO):
            # One line per decision, so an operator can follow grants and refusals.
            d = outcome.decision
            who = (d.requester_id or "an unverified requester")[:16]
            if d.granted:
                log.info("epoch %s: granted %s to %s", d.epoch, from_micro(d.amount), who)
            else:
                log.info("epoch %s: refused %s: %s", d.epoch, who, d.reason)
        return outcome

    async def probe(request: web.Request) -> web.Response:
        epoch = request.match_info["epoch"]
        if not epoch.isascii() or not epoch.isdigit() or len(epoch) > 16:
            raise NotFoundError("epoch must be a decimal integer")
        answer = host.probe(epoch=check_epoch("epoch", int(epoch)),
                            nonce=check_nonce("nonce", request.match_info["nonce"]))
        return web.Response(body=answer.to_bytes(), content_type="application/json")

    async def access(request: web.Request) -> web.Response:
        if not _serves(host, Answer.RECEIPT):
            return _kind_error(host, "/v1/access")
        raw = await read_body(request, seconds=body_seconds)
        outcome = decide(raw)
        if outcome.session_answer is not None:
            return web.Response(body=outcome.session_answer.to_bytes(),
                                content_type="application/json")
        if outcome.receipt is None:
            return _refused(outcome)
        return web.Response(body=outcome.receipt.to_bytes(), content_type="application/json")

    async def download(request: web.Request) -> web.Response:
        sha = request.match_info["sha256"]
        if not _serves(host, Answer.FILE):
            return _kind_error(host, "/v1/files")
        if not SHA256_RE.fullmatch(sha) or sha not in host.files:
            return _error(NotFoundError.code, "no such file here", NotFoundError.http_status)
        raw = await read_body(request, seconds=body_seconds)
        outcome = decide(raw, kind_of(host.kind).resource_of(sha))
        if not outcome.answered:
            return _refused(outcome)
        data = await asyncio.to_thread(host.files.read, sha)
        if outcome.session_answer is not None:
            headers = {SESSION_HEADER: outcome.session_answer.to_bytes().decode("ascii")}
        else:
            assert outcome.receipt is not None
            headers = {RECEIPT_HEADER: base64.b64encode(outcome.receipt.to_bytes()).decode()}
        return web.Response(body=data, content_type="application/octet-stream",
                            headers=headers)

    async def compute(request: web.Request) -> web.Response:
        if not _serves(host, Answer.JOB):
            return _kind_error(host, "/v1/compute")
        raw = await read_body(request, seconds=body_seconds)
        outcome = decide(raw, kind_of(host.kind).resource_of())
        request_msg = outcome.decision.request
        answer = outcome.session_answer
        if answer is not None:  # the job's seed: session id and counter
            seed_hex = answer.session + answer.counter.to_bytes(8, "big").hex()
        elif outcome.receipt is not None and request_msg is not None:
            seed_hex = request_msg.nonce
        else:
            return _refused(outcome)
        amount = outcome.decision.amount  # what was granted (maybe less than asked)
        digest = await asyncio.to_thread(hash_job, amount, seed=bytes.fromhex(seed_hex))
        result = {
            "job": "sha256-chain",
            "seed": seed_hex,
            "iterations": job_iterations(amount),
            "digest": digest,
        }
        if answer is not None:
            return web.json_response({"session_answer": answer.to_obj(), "result": result})
        assert outcome.receipt is not None
        return web.json_response({"receipt": outcome.receipt.to_obj(), "result": result})

    async def resolve(request: web.Request) -> web.Response:
        # A roamer's request the coordinator relays from its complaint (protocol README
        # section 7, step 7): answered like /v1/access, whatever the node's kind.
        raw = await read_body(request, seconds=body_seconds)
        outcome = host.resolve(raw, now=clock())
        d = outcome.decision
        log.info("epoch %s: relayed request of %s: %s", d.epoch,
                 (d.requester_id or "an unverified requester")[:16], d.reason)
        if outcome.receipt is None:
            return _refused(outcome)
        return web.Response(body=outcome.receipt.to_bytes(), content_type="application/json")

    async def files(request: web.Request) -> web.Response:
        return web.json_response({"files": host.files.listing()})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(host.status(clock()))

    app.router.add_get("/v1/probe/{epoch}/{nonce}", probe)
    app.router.add_post("/v1/access", access)
    app.router.add_post("/v1/files/{sha256}", download)
    app.router.add_post("/v1/compute", compute)
    app.router.add_post("/v1/resolve", resolve)
    app.router.add_get("/v1/files", files)
    app.router.add_get("/v1/status", status)
    return app


def _is_idle(handler: RequestHandler) -> bool:
    """Whether aiohttp's handler waits for a request head: its ``_waiter`` (the future its
    keep-alive timer checks for the same purpose) is pending. aiohttp has no public
    accessor; a handler without one counts as busy, which only makes the cap refuse the
    newest connection instead of closing an idle one."""
    waiter = getattr(handler, "_waiter", None)
    return isinstance(waiter, asyncio.Future) and not waiter.done()


class _PerClient(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection and books it under its client address,
    oldest first. When that address already holds ``limit`` connections, its oldest *idle*
    one (waiting for a request head: a stalled half head or a kept-alive connection, whose
    honest owner simply reconnects) is closed to make room; only if all are in the middle
    of a request is the new connection closed instead. So a flooder that shares an address
    with roamers or with the coordinator's probes (as everything on 127.0.0.1 does) cannot
    crowd them out: their new connections displace its stalled ones. The coordinator's
    ``LimitedSite`` does the same; the code is not shared because node and coordinator
    never import each other and ``protocol`` may not import asyncio or aiohttp."""

    def __init__(self, inner: RequestHandler, open_by: dict[str, dict[_PerClient, None]],
                 limit: int) -> None:
        self._inner, self._open_by, self._limit = inner, open_by, limit
        self._transport: asyncio.BaseTransport | None = None
        self._client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        mine = self._open_by.setdefault(self._client, {})
        if len(mine) >= self._limit:
            oldest_idle = next((c for c in mine if c._idle()), None)  # oldest first
            if oldest_idle is None:
                transport.close()  # never handed to aiohttp: it holds no state for it
                return
            oldest_idle._drop()
            mine = self._open_by.setdefault(self._client, {})  # the drop may have emptied it
        mine[self] = None
        self._transport = transport
        self._inner.connection_made(transport)

    def _idle(self) -> bool:
        return self._transport is not None and _is_idle(self._inner)

    def _drop(self) -> None:
        """Close this idle connection to make room (unbooked now: its count frees at once)."""
        self._forget()
        assert self._transport is not None
        self._transport.close()

    def _forget(self) -> None:
        mine = self._open_by.get(self._client)
        if mine is not None:
            mine.pop(self, None)
            if not mine:
                del self._open_by[self._client]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._forget()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> None:
        self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _LimitedSite(web.TCPSite):
    """:class:`aiohttp.web.TCPSite` whose connections go through :class:`_PerClient`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, per_client: int) -> None:
        super().__init__(runner, host, port)
        self._per_client = per_client

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        open_by: dict[str, dict[_PerClient, None]] = {}
        limit = self._per_client
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _PerClient(server(), open_by, limit), self._host, self._port,
            backlog=self._backlog)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


async def start_site(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    idle_seconds: float = IDLE_SECONDS,
    per_client: int = MAX_CONNECTIONS_PER_CLIENT,
) -> tuple[web.AppRunner, str]:
    """Bind ``app`` (port 0: an ephemeral port); returns the runner and ``host:port``.

    ``idle_seconds``: a connection without a whole request head for that long is closed;
    ``per_client``: most connections one client address may hold at once.
    """
    runner = NodeRunner(app, access_log=None, keepalive_timeout=idle_seconds)
    await runner.setup()
    site = _LimitedSite(runner, host, port, per_client=per_client)
    await site.start()
    bound_port = int(runner.addresses[0][1]) if runner.addresses else port
    shown = f"[{host}]" if ":" in host else host
    return runner, f"{shown}:{bound_port}"
