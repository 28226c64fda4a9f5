"""The node's aiohttp service: the "Node (host side)" table of ``protocol/HTTP.md``.

Thin handlers over :class:`node.host.Host`: read the body (bounded before it is read in
full), read the clock once, call the core, serialise. One middleware turns the error
hierarchy into ``{"code", "message"}`` bodies with each code's HTTP status; a signed
refusal travels as ``403 {"code", "message", "refusal": ENVELOPE}``.

Beyond HTTP.md, ``GET /v1/files`` lists the shared files (``{"files": [{"sha256",
"size"}]}``) so a roamer can learn what to download; a node of another kind answers an
empty list. An endpoint of another resource kind than the node's answers
``404 not_found`` (nothing is consumed, not even the challenge).

:func:`make_app` builds the app with its dependencies injected; :func:`start_site` binds
it (port 0 for an ephemeral port), so many nodes share one process and one event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from node.files import SHA256_RE
from node.host import AccessOutcome, Host
from node.resources import hash_job, job_iterations
from protocol import AccessRequest, InkindError, from_micro, to_wire
from protocol.envelope import envelope_size_limit
from protocol.errors import (
    MethodNotAllowedError,
    NotFoundError,
    TooLargeError,
)
from protocol.kinds import Answer, kind_of

log = logging.getLogger("inkind.node")

Clock = Callable[[], int]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Largest access request body: the envelope limit of its type.
MAX_REQUEST_BYTES = envelope_size_limit(AccessRequest.MAX_PAYLOAD_BYTES)
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
        return await handler(request)
    except InkindError as exc:
        return web.json_response(to_wire(exc), status=exc.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "malformed" if exc.status < 500 else "internal")
        return _error(code, exc.reason, exc.status)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error("internal", "internal error", 500)


async def read_body(request: web.Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The body, refused (``too_large``) as soon as it exceeds ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"body of {request.content_length} bytes exceeds {limit}")
    buf = bytearray()  # read(n) returns what has arrived, not n bytes: read to EOF
    while chunk := await request.content.read(min(limit + 1 - len(buf), 1 << 20)):
        buf += chunk
        if len(buf) > limit:
            raise TooLargeError(f"body exceeds {limit} bytes")
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


def make_app(node_state: Host, *, clock: Clock) -> web.Application:
    """The node's app. ``clock()`` returns integer Unix seconds; read once per request.

    Every request is decided on what the host holds: a credential of an epoch the host
    does not enforce yet is refused ``future_epoch`` (only the node's agent moves the
    host to a new epoch; nothing here calls up into it).
    """
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_REQUEST_BYTES)
    app[HOST_KEY] = node_state
    host = node_state

    def decide(raw: bytes, resource: str | None = None) -> AccessOutcome:
        outcome = host.access(raw, now=clock(), resource=resource)
        d = outcome.decision
        # One line per decision, so an operator can follow grants and refusals.
        who = (d.requester_id or "an unverified requester")[:16]
        if d.granted:
            log.info("epoch %s: granted %s to %s", d.epoch, from_micro(d.amount), who)
        else:
            log.info("epoch %s: refused %s: %s", d.epoch, who, d.reason)
        return outcome

    async def challenge(request: web.Request) -> web.Response:
        issued = host.issue_challenge(clock())
        return web.json_response({"challenge": issued.value, "expires": issued.expires})

    async def access(request: web.Request) -> web.Response:
        if not _serves(host, Answer.RECEIPT):
            return _kind_error(host, "/v1/access")
        raw = await read_body(request)
        outcome = decide(raw)
        if outcome.receipt is None:
            return _refused(outcome)
        return web.Response(body=outcome.receipt.to_bytes(), content_type="application/json")

    async def download(request: web.Request) -> web.Response:
        sha = request.match_info["sha256"]
        if not _serves(host, Answer.FILE):
            return _kind_error(host, "/v1/files")
        if not SHA256_RE.fullmatch(sha) or sha not in host.files:
            return _error(NotFoundError.code, "no such file here", NotFoundError.http_status)
        raw = await read_body(request)
        outcome = decide(raw, kind_of(host.kind).resource_of(sha))
        if outcome.receipt is None:
            return _refused(outcome)
        data = await asyncio.to_thread(host.files.read, sha)
        header = base64.b64encode(outcome.receipt.to_bytes()).decode("ascii")
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"X-Inkind-Receipt": header},
        )

    async def compute(request: web.Request) -> web.Response:
        if not _serves(host, Answer.JOB):
            return _kind_error(host, "/v1/compute")
        raw = await read_body(request)
        outcome = decide(raw, kind_of(host.kind).resource_of())
        request_msg = outcome.decision.request
        if outcome.receipt is None or request_msg is None:
            return _refused(outcome)
        amount = outcome.decision.amount  # what was granted (maybe less than asked)
        seed = bytes.fromhex(request_msg.challenge)
        digest = await asyncio.to_thread(hash_job, amount, seed=seed)
        result = {
            "job": "sha256-chain",
            "seed": request_msg.challenge,
            "iterations": job_iterations(amount),
            "digest": digest,
        }
        return web.json_response({"receipt": outcome.receipt.to_obj(), "result": result})

    async def files(request: web.Request) -> web.Response:
        return web.json_response({"files": host.files.listing()})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(host.status(clock()))

    app.router.add_get("/v1/challenge", challenge)
    app.router.add_post("/v1/access", access)
    app.router.add_post("/v1/files/{sha256}", download)
    app.router.add_post("/v1/compute", compute)
    app.router.add_get("/v1/files", files)
    app.router.add_get("/v1/status", status)
    return app


async def start_site(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Bind ``app`` (port 0: an ephemeral port); returns the runner and ``host:port``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = int(runner.addresses[0][1]) if runner.addresses else port
    shown = f"[{host}]" if ":" in host else host
    return runner, f"{shown}:{bound_port}"
