"""Errors keep their shape on the node too: requests aiohttp's HTTP parser refuses (both
``Content-Length`` and ``Transfer-Encoding``, a method that is not a token, a header line
over its limit, a bad chunk) are answered ``{"code", "message"}`` with the code's status
(protocol/HTTP.md), not in aiohttp's plain text.

aiohttp answers those from ``RequestHandler.handle_error``, before any application
middleware runs, and offers no hook for it (aio-libs/aiohttp#3287): :class:`NodeRunner`
is an ``AppRunner`` whose connections use :class:`JsonErrorHandler`. The coordinator has
the same shell in ``coordinator/http.py``; it is not shared because the node never
imports the coordinator and ``protocol`` carries no HTTP code. Parser errors are the
client's fault, so they are logged at debug level, never as internal errors.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from protocol.errors import (
    InkindError,
    MalformedError,
    MethodNotAllowedError,
    NotFoundError,
    TooLargeError,
    to_wire,
)

log = logging.getLogger(__name__)


def _too_many_headers(exc: BaseException | None) -> bool:
    """aiohttp refuses a head of more than ``max_headers`` lines with a plain
    ``BadHttpMessage``; only its message tells it from other malformed heads. A head too
    large in lines is as much ``too_large`` as one too large in bytes."""
    return isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower()


def parser_error(exc: BaseException | None, status: int) -> InkindError | None:
    """The protocol error for a request the parser refused; None for a server fault."""
    if isinstance(exc, LineTooLong) or _too_many_headers(exc) or status in (413, 431):
        return TooLargeError("a request line or header is too long")
    if isinstance(exc, BadHttpMethod) or status == 405:
        return MethodNotAllowedError("the request method is not a valid HTTP method")
    if status == 404:
        return NotFoundError("no such path")
    if isinstance(exc, HttpProcessingError) or 400 <= status < 500:
        # The parser's message can echo the offending bytes: name the kind only.
        return MalformedError(f"malformed HTTP request: {type(exc).__name__}")
    return None


class JsonErrorHandler(RequestHandler):
    """A connection whose own error answers carry the protocol's error body."""

    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        err = parser_error(exc, status)
        if isinstance(exc, ConnectionError):
            log.debug("client of %s went away: %s", request.remote, exc)
        elif err is None:
            log.error("error handling request from %s", request.remote, exc_info=exc)
        else:
            log.debug("refused unparsable request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            # Some of an answer is out already: the connection cannot carry another.
            raise ConnectionError("response already started; cannot send the error")
        body = (to_wire(err) if err is not None
                else {"code": "internal", "message": "internal error"})
        resp = web.json_response(body, status=500 if err is None else err.http_status)
        resp.force_close()
        return resp


class _JsonErrorServer(Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class NodeRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers parser errors as protocol errors."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # aiohttp builds its Server with no way to pick the connection class; the
        # subclass adds no state, only the factory.
        server.__class__ = _JsonErrorServer
        return server


__all__ = ["JsonErrorHandler", "NodeRunner", "parser_error"]
