"""Errors keep their shape: every answer of the coordinator's HTTP server that is an error
is ``{"code", "message"}`` with the code's status (protocol/HTTP.md), even when aiohttp
refuses the request before any handler or middleware runs.

aiohttp answers requests its HTTP parser rejects (both ``Content-Length`` and
``Transfer-Encoding``, a method that is not a token, a header line over its limit, a bad
chunk) from ``RequestHandler.handle_error`` in plain text, bypassing the application and
its middlewares, and offers no hook for it (aio-libs/aiohttp#3287). :class:`JsonErrorRunner`
is an ``AppRunner`` whose connections use :class:`JsonErrorHandler`, which answers those
in the protocol's error body. Parser errors are the client's fault: they are logged at
debug level, not as internal errors.

:func:`error_for_status` maps an HTTP status (from the parser or an ``HTTPException``) to
the protocol error the answer carries; the service's middleware uses it too.
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


def error_for_status(status: int, message: str) -> InkindError | None:
    """The protocol error an HTTP error status stands for; None for a non-error status.

    404 ``not_found``, 405 ``method_not_allowed``, 413 and 431 ``too_large``, any other
    4xx ``malformed``; 5xx is None as well (the caller answers ``internal``).
    """
    if status == 404:
        return NotFoundError(message)
    if status == 405:
        return MethodNotAllowedError(message)
    if status in (413, 431):
        return TooLargeError(message)
    if 400 <= status < 500:
        return MalformedError(message)
    return None


def error_response(err: InkindError | None) -> web.Response:
    """``{"code", "message"}`` with the error's status; None is ``500 internal``."""
    if err is None:
        return web.json_response({"code": "internal", "message": "internal error"},
                                 status=500)
    return web.json_response(to_wire(err), status=err.http_status)


def _too_many_headers(exc: BaseException | None) -> bool:
    """aiohttp refuses a head of more than ``max_headers`` lines with a plain
    ``BadHttpMessage``; only its message tells it from other malformed heads. A head too
    large in lines is as much ``too_large`` as one too large in bytes."""
    return isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower()


def parser_error(exc: BaseException | None, status: int) -> InkindError | None:
    """The protocol error for a request aiohttp's parser refused (``exc``, ``status``)."""
    if isinstance(exc, LineTooLong) or _too_many_headers(exc):
        return TooLargeError("a request line or header is too long")
    if isinstance(exc, BadHttpMethod):
        return MethodNotAllowedError("the request method is not a valid HTTP method")
    if isinstance(exc, HttpProcessingError):
        # The parser's message can echo the offending bytes: name the kind only.
        return error_for_status(exc.code or status, f"malformed HTTP request: "
                                                    f"{type(exc).__name__}")
    return error_for_status(status, "malformed HTTP request")


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
        resp = error_response(err)
        resp.force_close()
        return resp


class _JsonErrorServer(Server):
    """aiohttp's server, making :class:`JsonErrorHandler` connections."""

    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers parser errors as protocol errors."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # aiohttp builds its Server inside Application._make_handler with no way to pick
        # the connection class; the subclass adds no state, only the factory.
        server.__class__ = _JsonErrorServer
        return server


__all__ = ["JsonErrorHandler", "JsonErrorRunner", "error_for_status", "error_response",
           "parser_error"]
