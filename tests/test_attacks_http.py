"""Errors keep their shape, more instances (issue 11 item 9): every class of request
aiohttp's HTTP parser or the app refuses gets the ``{"code", "message"}`` body of
protocol/HTTP.md with its code's status, at the node and at the coordinator alike, and
nothing is logged as an internal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers.coordinator import served_on_socket
from helpers.node import NOW, World
from helpers.rawhttp import exchange

from node.host import Host
from node.service import make_app as make_node_app
from node.service import start_site
from protocol import MICRO

#: ``PATH``: a path the server takes POSTs on. (request, status, code)
MORE_PARSER_ERRORS: list[tuple[str, bytes, int, str]] = [
    ("negative content-length",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "malformed"),
    ("non-numeric content-length",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "malformed"),
    ("plus-signed content-length",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n{}}", 400, "malformed"),
    ("two different content-lengths",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
     400, "malformed"),
    ("te then cl",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n"
     b"\r\n0\r\n\r\n", 400, "malformed"),
    ("unknown transfer-encoding",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "malformed"),
    ("chunk size not hex",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n{}\r\n0\r\n\r\n",
     400, "malformed"),
    ("chunk without its crlf",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
     400, "malformed"),
    ("header without a colon",
     b"GET /v1/status HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400, "malformed"),
    ("header name with a space",
     b"GET /v1/status HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400, "malformed"),
    ("nul in a header value",
     b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, "malformed"),
    ("obsolete line folding",
     b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, "malformed"),
    ("request line without a version",
     b"GET /v1/status\r\nHost: x\r\n\r\n", 400, "malformed"),
    # A TLS ClientHello: its first bytes are no method token.
    ("tls client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
     405, "method_not_allowed"),
    ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "malformed"),
    ("http/0.9", b"GET /v1/status HTTP/0.9\r\n\r\n", 400, "malformed"),
    ("many headers", b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", 413, "too_large"),
    ("long header name", b"GET /v1/status HTTP/1.1\r\nHost: x\r\n" + b"X" * 9000
     + b": v\r\n\r\n", 413, "too_large"),
    ("long chunk extension",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;" + b"e" * 70_000
     + b"\r\n{}\r\n0\r\n\r\n", 400, "missing_field"),
    ("lowercase method", b"get /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 405,
     "method_not_allowed"),
    ("wrong method on a route", b"DELETE /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 405,
     "method_not_allowed"),
    ("unknown path", b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"),
    ("non-utf-8 body",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4"
     b"\r\n\r\n\xff\xfe\xfd\xfc", 400, "malformed"),
    ("wrong content type, not json",
     b"POST PATH HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5"
     b"\r\n\r\nhello", 400, "malformed"),
    ("empty body", b"POST PATH HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 400,
     "malformed"),
]


@contextlib.asynccontextmanager
async def node_site() -> AsyncIterator[tuple[str, int]]:
    w = World()
    host = Host(w.host, kind="wlan_coverage", location=0, coordinator_key=w.coord.public_key)
    host.open_epoch(epoch=w.epoch, included=w.included, opened=10 * MICRO, now=NOW)
    app = make_node_app(host, clock=lambda: NOW)
    node_runner, endpoint = await start_site(app, port=0)
    try:
        yield "127.0.0.1", int(endpoint.rsplit(":", 1)[1])
    finally:
        await node_runner.cleanup()


def coordinator_site(tmp_path: Path) -> contextlib.AbstractAsyncContextManager[
        tuple[str, int]]:
    return served_on_socket(tmp_path)


PATHS = {"node": [b"/v1/access", b"/v1/resolve"],
         "coordinator": [b"/v1/register", b"/v1/declarations", b"/v1/audit",
                         b"/v1/complaints", b"/v1/commitments"]}


@pytest.mark.asyncio
@pytest.mark.parametrize("server", ["node", "coordinator"])
@pytest.mark.parametrize(("name", "request_bytes", "status", "code"), MORE_PARSER_ERRORS,
                         ids=[c[0] for c in MORE_PARSER_ERRORS])
async def test_every_parser_error_class_keeps_the_error_shape(
        server: str, name: str, request_bytes: bytes, status: int, code: str,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = node_site() if server == "node" else coordinator_site(tmp_path)
    with caplog.at_level(logging.DEBUG):
        async with site as where:
            for path in PATHS[server]:
                data = request_bytes.replace(b"PATH", path).replace(
                    b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n", 1)
                got = await exchange(where, data)
                got_status, body, content_type = got
                assert (got_status, body.get("code")) == (status, code), (path, got)
                assert set(body) == {"code", "message"}
                assert content_type.startswith("application/json")
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


@pytest.mark.asyncio
@pytest.mark.parametrize("server", ["node", "coordinator"])
async def test_a_truncated_body_is_not_an_internal_error(
        server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = node_site() if server == "node" else coordinator_site(tmp_path)
    path = PATHS[server][0]
    with caplog.at_level(logging.DEBUG):
        async with site as where:
            for tail in (b"Content-Length: 500\r\n\r\n{\"a\"",
                         b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"a\""):
                reader, writer = await asyncio.open_connection(*where)
                writer.write(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\n" + tail)
                await writer.drain()
                writer.write_eof()  # half-close: the body never completes
                with contextlib.suppress(ConnectionError):
                    async with asyncio.timeout(10):
                        await reader.read()
                writer.close()
            status, _, _ = await exchange(
                where, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 200
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


@pytest.mark.asyncio
@pytest.mark.parametrize("server", ["node", "coordinator"])
@pytest.mark.parametrize("head", [
    b"Content-Length: 9000000\r\n\r\n{",
    b"Transfer-Encoding: chunked\r\n\r\nffffff\r\n" + b"a" * 100_000,
], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_refused_before_it_is_read_in_full(
        server: str, head: bytes, tmp_path: Path) -> None:
    """protocol/HTTP.md: the ``too_large`` answer comes while the sender still owes most
    of its body (the server does not wait for the rest)."""
    site = node_site() if server == "node" else coordinator_site(tmp_path)
    async with site as where:
        reader, writer = await asyncio.open_connection(*where)
        writer.write(b"POST " + PATHS[server][0] + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n" + head)
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
            headers = {}
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
        writer.close()
    assert status_line.split(b" ")[1] == b"413"
    assert json.loads(body)["code"] == "too_large"
