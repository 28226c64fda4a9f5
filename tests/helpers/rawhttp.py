"""Raw HTTP/1.1 bytes to a live server on 127.0.0.1, for requests aiohttp's client would
never send (malformed framing, bad methods, oversized heads)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

#: Requests aiohttp's parser refuses, with the status and protocol code each must get
#: (protocol/HTTP.md: every error answer is ``{"code", "message"}``). ``PATH`` is a path
#: the server under test accepts POSTs on.
PARSER_ERRORS: list[tuple[bytes, int, str]] = [
    (b"POST PATH HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "malformed"),
    (b"G(T /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    (b"BREW /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 413,
     "too_large"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 413, "too_large"),
    (b"POST PATH HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
     "malformed"),
    (b"GET /v1/status HTTP/9.9\r\nHost: x\r\n\r\n", 400, "malformed"),
]


async def exchange(where: tuple[str, int], data: bytes) -> tuple[int, dict[str, Any], str]:
    """Send raw bytes, read the whole answer: (status, JSON body, content type)."""
    reader, writer = await asyncio.open_connection(*where)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), json.loads(body), headers.get("Content-Type", "")


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection of ``reader`` within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True
