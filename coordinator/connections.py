"""How many connections the coordinator's HTTP server holds, per client address and in all
(issue 11 item 5: flooding).

Without a cap, one address opening a thousand connections that each send half a request
head holds a thousand descriptors for :data:`coordinator.config.IDLE_SECONDS` each and can
renew them; under a descriptor limit (``ulimit -n 256``) the coordinator then has none
left for honest nodes' declarations or for its own probes, and accepting stalls.

:class:`LimitedSite` is an ``aiohttp.web.TCPSite`` that books every accepted connection
under its client address, oldest first, and enforces two caps:

* ``per_client`` (default :data:`MAX_CONNECTIONS_PER_CLIENT`; 0: none): a new connection
  from an address already holding that many first closes that address's oldest *idle*
  connection, one waiting for a request head (a stalled half head, or an idle keep-alive
  connection: an honest client that had it simply connects again); if all of them are
  in the middle of a request, the new connection is closed at once instead.
* ``total`` (default from the descriptor limit, :func:`connection_budget`; 0: none): at
  that many connections in all, a new one closes the oldest idle connection of the
  address holding the most (else the oldest idle one of any address), or is closed itself.

Closing the oldest idle connection rather than refusing the newest keeps an honest
client working even when it shares its address with a flooder (as every node of a local
testbed shares 127.0.0.1): its new connection displaces a stalled one, and its request is
answered. A connection is idle when aiohttp's handler waits for a request head; aiohttp
exposes no public accessor for it, so :func:`_is_idle` reads the handler's ``_waiter``
(the future its keep-alive timer checks for the same purpose) and counts a handler
without one as busy, which only makes the cap refuse the newest connection instead.

The node has a per-client cap of its own (``node.service``); this code is not shared
with it because the node never imports the coordinator nor the coordinator the node, and
``protocol``, the layer below both, may import neither aiohttp nor asyncio (the
import-linter contracts in ``pyproject.toml``).
"""

from __future__ import annotations

import asyncio
import logging
import resource

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

#: Connections one client address may hold at once. Every node of a local testbed shares
#: 127.0.0.1: 200 node processes peaked at 328 connections to the coordinator (1.6 per
#: node, pooled ones kept idle for 15 s), in-process fleets at most their clients' pools
#: (256 + 128); 4096 leaves room for some 2,500 node processes. Beyond it the address's
#: oldest idle connection is closed (an honest client reconnects), so the cap bounds one
#: flooder among many addresses; what protects the descriptors is ``total``.
MAX_CONNECTIONS_PER_CLIENT = 4096
#: Descriptors kept out of the connection budget: outbound probes
#: (:data:`coordinator.probe.PROBE_CONCURRENCY`, 64 in flight) and complaint relays,
#: the database and its journal, logs, the listening socket and the interpreter's own.
RESERVED_DESCRIPTORS = 128
#: The listen backlog when descriptors are plentiful (aiohttp's default). asyncio accepts
#: up to a backlog of connections in one go before any is counted, so the backlog is
#: also how far the open descriptors can overshoot ``total`` for a moment.
BACKLOG = 128


def connection_budget(soft_limit: int | None = None) -> tuple[int, int]:
    """``(total, backlog)`` for a descriptor limit (default: this process's soft
    ``RLIMIT_NOFILE``): ``total`` connections held at once, ``backlog`` for ``listen``.

    ``total + backlog + RESERVED_DESCRIPTORS <= soft_limit`` whenever the limit allows
    at least 16 connections; an unlimited limit gives ``total = 0`` (no cap).
    """
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit < 0:
        return 0, BACKLOG
    budget = max(32, soft_limit - RESERVED_DESCRIPTORS)
    backlog = max(8, min(BACKLOG, budget // 2))
    return max(16, budget - backlog), backlog


def _is_idle(handler: RequestHandler) -> bool:
    """Whether aiohttp's handler waits for a request head (see the module docstring)."""
    waiter = getattr(handler, "_waiter", None)
    return isinstance(waiter, asyncio.Future) and not waiter.done()


class _Books:
    """The open connections, oldest first: in all and by client address."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client, self.total = per_client, total
        self.everyone: dict[_Counted, None] = {}
        self.by_client: dict[str, dict[_Counted, None]] = {}
        self.closed_for_room = 0  # connections closed by a cap (idle displaced or new refused)

    def admit(self, conn: _Counted) -> bool:
        """Book ``conn`` if the caps allow, after closing an idle connection if needed."""
        mine = self.by_client.get(conn.client, {})
        if self.per_client and len(mine) >= self.per_client:
            if not self._displace(mine):
                return False
        elif self.total and len(self.everyone) >= self.total:
            heaviest = max(self.by_client.values(), key=len)
            if not (self._displace(heaviest) or self._displace(self.everyone)):
                return False
        self.everyone[conn] = None
        self.by_client.setdefault(conn.client, {})[conn] = None
        return True

    def _displace(self, among: dict[_Counted, None]) -> bool:
        for old in among:  # oldest first
            if old.idle():
                old.drop()
                self.closed_for_room += 1
                return True
        self.closed_for_room += 1  # the caller refuses the new connection
        return False

    def forget(self, conn: _Counted) -> None:
        self.everyone.pop(conn, None)
        mine = self.by_client.get(conn.client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.by_client[conn.client]


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, booked in :class:`_Books` while open."""

    def __init__(self, inner: RequestHandler, books: _Books) -> None:
        self._inner, self._books = inner, books
        self._transport: asyncio.BaseTransport | None = None
        self.client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._books.admit(self):
            log.debug("connection from %s refused: no idle connection to close", self.client)
            transport.close()  # never handed to aiohttp: it holds no state for it
            return
        self._transport = transport
        self._inner.connection_made(transport)

    def idle(self) -> bool:
        return self._transport is not None and _is_idle(self._inner)

    def drop(self) -> None:
        """Close this idle connection to make room (unbooked now: its count frees at once)."""
        log.debug("closed an idle connection of %s to make room", self.client)
        self._books.forget(self)
        assert self._transport is not None
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._books.forget(self)
        self._inner.connection_lost(exc)

    # The rest only forwards, as node.service._PerClient does: not shared, see the module
    # docstring (no layer below both may import asyncio or aiohttp).
    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> None:
        self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class LimitedSite(web.TCPSite):
    """``web.TCPSite`` whose connections are capped per client address and in all.

    ``per_client``: connections one address may hold (0: no cap); ``total``: connections
    in all (None: from the descriptor limit when the site starts,
    :func:`connection_budget`; 0: no cap). ``open_connections`` and ``closed_for_room``
    (connections closed by a cap so far) are for monitoring and tests.
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 per_client: int = MAX_CONNECTIONS_PER_CLIENT,
                 total: int | None = None) -> None:
        if per_client < 0 or (total is not None and total < 0):
            raise ValueError("connection caps must be >= 0 (0: no cap)")
        budget, backlog = connection_budget()
        super().__init__(runner, host, port, backlog=backlog)
        self._books = _Books(per_client, budget if total is None else total)

    @property
    def total(self) -> int:
        return self._books.total

    @property
    def open_connections(self) -> int:
        return len(self._books.everyone)

    @property
    def closed_for_room(self) -> int:
        return self._books.closed_for_room

    @property
    def busy_connections(self) -> int:
        """Open connections in the middle of a request (a head received): those a cap
        never closes to make room."""
        return sum(1 for conn in self._books.everyone if not conn.idle())

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        books = self._books
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Counted(server(), books), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


__all__ = ["BACKLOG", "MAX_CONNECTIONS_PER_CLIENT", "RESERVED_DESCRIPTORS", "LimitedSite",
           "connection_budget"]
