"""An in-memory network for aiohttp: clients reach apps without sockets.

:class:`MemoryNet` serves aiohttp applications at made-up ``host:port`` addresses and
hands out a :class:`aiohttp.ClientSession` whose connector joins each connection to the
addressed app's server protocol through a pair of in-memory transports (as h11's paired
connections or aioquic's ``client_and_server``): every byte goes through aiohttp's real
HTTP/1.1 client and server, middlewares and handlers included, but no socket is opened,
so nothing depends on ports or the network. The real coordinator app and real node apps
both run on it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler


class _Pipe(asyncio.Transport):
    """One direction's transport: what is written is delivered to ``peer`` (next turn)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, address: tuple[str, int]) -> None:
        super().__init__()
        self._loop = loop
        self._address = address
        self.peer: asyncio.Protocol | None = None
        self.other: _Pipe | None = None
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("peername", "sockname"):
            return self._address
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.peer is None:
            return
        self._loop.call_soon(self._deliver, bytes(data))

    def _deliver(self, data: bytes) -> None:
        if self.peer is not None and self.other is not None and not self.other._closing:
            self.peer.data_received(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        # Both ends learn the connection is gone, after what was written is delivered.
        self._loop.call_soon(self._lost)

    def _lost(self) -> None:
        other = self.other
        if other is not None and not other._closing:
            other._closing = True
            if other.peer is not None:
                other.peer.connection_lost(None)
        if self.peer is not None:
            self.peer.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._closing

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _MemoryConnector(aiohttp.BaseConnector):
    def __init__(self, net: MemoryNet) -> None:
        super().__init__(force_close=True)
        self._net = net

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> ResponseHandler:
        server = self._net.servers.get(f"{req.host}:{req.port}")
        if server is None:
            raise aiohttp.ClientConnectionError(f"nothing listens at {req.host}:{req.port}")
        loop = asyncio.get_running_loop()
        client = ResponseHandler(loop)
        handler = server()
        to_server, to_client = _Pipe(loop, ("127.0.0.1", req.port)), _Pipe(loop, ("127.0.0.1", 1))
        to_server.peer, to_server.other = handler, to_client
        to_client.peer, to_client.other = client, to_server
        handler.connection_made(to_client)
        client.connection_made(to_server)
        return client


class MemoryNet:
    """Apps served at in-memory addresses; :meth:`session` reaches them."""

    def __init__(self) -> None:
        self.servers: dict[str, web.Server] = {}
        self._runners: dict[str, web.AppRunner] = {}
        self._ports = itertools.count(20_000)

    async def serve(self, app: web.Application, endpoint: str | None = None) -> str:
        """Start ``app`` (its startup and cleanup contexts run) at ``endpoint``
        (default: a fresh ``127.0.0.1:PORT``); returns the endpoint."""
        endpoint = endpoint or f"127.0.0.1:{next(self._ports)}"
        app.on_cleanup.append(self._forget(endpoint))  # a runner cleaned up stops serving
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        assert runner.server is not None
        self.servers[endpoint] = runner.server
        self._runners[endpoint] = runner
        return endpoint

    async def start_site(
        self, app: web.Application, *, host: str = "127.0.0.1", port: int = 0
    ) -> tuple[web.AppRunner, str]:
        """As :func:`node.service.start_site`, in memory: the runner and ``host:port``
        (port 0: a fresh one). Cleaning the runner up stops serving the endpoint."""
        endpoint = await self.serve(app, None if port == 0 else f"{host}:{port}")
        return self._runners[endpoint], endpoint

    def _forget(self, endpoint: str) -> Callable[[web.Application], Awaitable[None]]:
        async def forget(_: web.Application) -> None:
            self.servers.pop(endpoint, None)
            self._runners.pop(endpoint, None)

        return forget

    async def stop(self, endpoint: str) -> None:
        """Stop serving ``endpoint`` (later connections fail as a dead host's would)."""
        self.servers.pop(endpoint, None)
        runner = self._runners.pop(endpoint, None)
        if runner is not None:
            await runner.cleanup()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        async with aiohttp.ClientSession(connector=_MemoryConnector(self)) as session:
            yield session

    async def close(self) -> None:
        for endpoint in list(self._runners):
            await self.stop(endpoint)


@asynccontextmanager
async def memory_net() -> AsyncIterator[MemoryNet]:
    net = MemoryNet()
    try:
        yield net
    finally:
        await net.close()
