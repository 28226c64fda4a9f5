"""Fixtures shared by every test module; the helpers they build on are ``tests/helpers``.

Test modules import helpers as ``helpers.*`` (pytest puts ``tests/`` on ``sys.path`` in
its default ``prepend`` import mode) and never import one another.

* ``clock``: a :class:`~helpers.node.FakeClock` at :data:`~helpers.node.NOW`; the test
  moves time (``clock.now = ...``), nothing sleeps.
* ``net``: an in-memory network (:class:`~helpers.memnet.MemoryNet`) on which real aiohttp
  apps (the coordinator's, nodes') are served and reached without sockets.

Tests marked ``slow`` are left out of the default run (``addopts``); ``.ci/run`` runs all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from helpers.clock import FakeClock
from helpers.memnet import MemoryNet, memory_net


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def net() -> AsyncIterator[MemoryNet]:
    async with memory_net() as memnet:
        yield memnet
