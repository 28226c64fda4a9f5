"""Wiring one node in a running event loop: host, service, clients and agent.

:func:`start_node` builds a node from a :class:`NodeSpec` and an identity, binds its
service (port 0: an ephemeral port) and returns a :class:`RunningNode` whose agent the
caller drives: ``await node.agent.run(stop)`` for the real loop, or
``await node.agent.run_epoch_step()`` step by step. :class:`NodeSpec` is defined in
:mod:`node.agent` (the agent is built from it) and importable from here. Many nodes may
share one event loop and one :class:`aiohttp.ClientSession`; this is what the
``inkind-node`` command and an in-process testbed both use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from node.agent import Agent, NodeSpec
from node.client import CoordinatorClient, PeerClient, SharedDocuments
from node.files import FileStore
from node.host import Host
from node.service import make_app, start_site
from protocol import Identity

__all__ = ["NodeSpec", "RunningNode", "Serve", "start_node", "wall_clock"]


#: Binds an app: ``await serve(app, host=..., port=...)`` -> (runner, ``host:port``).
Serve = Callable[..., Awaitable[tuple[web.AppRunner, str]]]


def wall_clock() -> int:
    """Integer Unix seconds (the clock of a real node)."""
    return int(time.time())


@dataclass(slots=True, kw_only=True)
class RunningNode:
    spec: NodeSpec
    identity: Identity
    host: Host
    agent: Agent
    runner: web.AppRunner
    bound: str  # host:port the service listens on
    endpoint: str  # host:port registered with the coordinator

    @property
    def url(self) -> str:
        return f"http://{self.bound}"

    def info(self) -> dict[str, object]:
        """The JSON line ``inkind-node`` prints once it listens."""
        return {
            "node_id": self.identity.node_id,
            "public_key": self.identity.public_key,
            "url": self.url,
            "endpoint": self.endpoint,
            "location": self.spec.location,
            "kind": self.spec.kind,
            "strategy": self.spec.strategy.name,
        }

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_node(
    spec: NodeSpec,
    identity: Identity,
    session: aiohttp.ClientSession,
    *,
    clock: Callable[[], int] = wall_clock,
    serve: Serve = start_site,
    documents: SharedDocuments | None = None,
) -> RunningNode:
    """Build and bind one node (its agent is not started: the caller drives it).

    ``serve(app, host=, port=)`` binds the node's service and returns its runner and
    ``host:port`` (default :func:`node.service.start_site`, TCP; tests pass an in-memory
    network's). ``clock`` is every part's clock (integer Unix seconds). ``documents``:
    the epoch documents shared with the other nodes of this process (default: its own).
    """
    files = FileStore(spec.files_dir)
    if spec.files_dir:
        await asyncio.to_thread(files.scan)
    host = Host(
        identity,
        kind=spec.kind,
        location=spec.location,
        coordinator_key=spec.coordinator_key,
        files=files,
        session_seconds=spec.session_seconds,
        max_skew=spec.max_skew,
    )
    runner, bound = await serve(make_app(host, clock=clock), host=spec.host, port=spec.port)
    endpoint = spec.advertise or bound
    coordinator = CoordinatorClient(
        session,
        spec.coordinator,
        coordinator_key=spec.coordinator_key,
        trust_on_first_use=spec.coordinator_key is None,
        documents=documents,
    )
    agent = Agent(
        spec,
        identity=identity,
        host=host,
        coordinator=coordinator,
        peers=PeerClient(session),
        clock=clock,
        endpoint=endpoint,
    )
    return RunningNode(
        spec=spec,
        identity=identity,
        host=host,
        agent=agent,
        runner=runner,
        bound=bound,
        endpoint=endpoint,
    )
