"""Bounded, sans-I/O state for refusing replays and remembering verified credentials.

* :class:`ReplayGuard` (coordinator side) remembers the nonces of authentic messages for
  the current epoch and the ``window - 1`` epochs before it; older epochs are forgotten
  and refused as ``stale_epoch``, so memory is bounded by ``window * max_per_epoch``.
* :class:`ReplayWindow` (host side) refuses a second access request with the same
  (requester, nonce) while its ``issued`` time is inside the clock-skew window; memory
  is bounded by the accepted rate times the window.
* :class:`CredentialCache` (host side) remembers credentials whose coordinator signature
  verified, by digest, so each is verified once.

Time is always an argument ``now`` in integer Unix seconds. No class is
thread-safe: each belongs to one event loop or is guarded by its owner's lock. This module
deliberately does not verify signatures: feed it only messages that already passed
:mod:`protocol.verify`, or an attacker could fill it with forged nonces.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Generic, TypeVar

from protocol.errors import (
    CapacityExhaustedError,
    ExpiredError,
    FutureEpochError,
    NotYetValidError,
    ReplayError,
    StaleEpochError,
)
from protocol.fields import MAX_CLOCK_SKEW, check_epoch, check_int, check_time

V = TypeVar("V")


class ReplayGuard:
    """Nonces seen per epoch, for the ``window`` most recent epochs up to the current one."""

    __slots__ = ("_current", "_max_per_epoch", "_seen", "_window")

    def __init__(
        self, *, current_epoch: int = 0, window: int = 2, max_per_epoch: int = 1_000_000
    ) -> None:
        self._current = check_epoch("current_epoch", current_epoch)
        self._window = check_int("window", window, 1, 1_000)
        self._max_per_epoch = check_int("max_per_epoch", max_per_epoch, 1, 1 << 40)
        self._seen: dict[int, set[str]] = {}

    @property
    def current_epoch(self) -> int:
        return self._current

    def advance(self, epoch: int) -> None:
        """Make ``epoch`` current and forget epochs that fell out of the window.

        Going backwards is refused (``stale_epoch``): it would re-open forgotten epochs.
        """
        check_epoch("epoch", epoch)
        if epoch < self._current:
            raise StaleEpochError(f"cannot move back from epoch {self._current} to {epoch}")
        self._current = epoch
        oldest = epoch - self._window + 1
        for old in [e for e in self._seen if e < oldest]:
            del self._seen[old]

    def seen(self, epoch: int, nonce: str) -> bool:
        """True iff ``nonce`` was recorded for ``epoch`` (and the epoch is still remembered)."""
        return nonce in self._seen.get(epoch, ())

    def check_and_record(self, epoch: int, nonce: str) -> None:
        """Record ``nonce`` for ``epoch``, or raise without changing any state.

        Raises ``future_epoch`` beyond the current epoch, ``stale_epoch`` before the
        window, ``replay`` for a nonce already seen, ``capacity_exhausted`` when the
        epoch's table is full (fail closed rather than forget).
        """
        check_epoch("epoch", epoch)
        if epoch > self._current:
            raise FutureEpochError(f"epoch {epoch} is after current epoch {self._current}")
        if epoch <= self._current - self._window:
            raise StaleEpochError(f"epoch {epoch} is outside the replay window")
        nonces = self._seen.get(epoch, set())
        if nonce in nonces:
            raise ReplayError(f"nonce already used in epoch {epoch}")
        if len(nonces) >= self._max_per_epoch:
            raise CapacityExhaustedError(f"replay table for epoch {epoch} is full")
        nonces.add(nonce)
        self._seen[epoch] = nonces


class ReplayWindow:
    """Host-side replay refusal for requests bound to a time window (README section 6).

    A request carries its requester's ``issued`` time and a random nonce. It is fresh iff
    ``now - skew <= issued <= now + skew``; a fresh request is accepted once per
    (requester, nonce). A pair is remembered only while its request could still be fresh
    (until ``issued + skew < now``): after that the time check alone refuses it, so memory
    is bounded by (accepted requests per second) x (2 x skew) entries, at most
    ``capacity`` (about 300 bytes each: the default 100 000 is some 30 MB at most, and
    holds 800 accepted requests per second over a 2 x 60 s window before the window
    starts to shrink). When the table is full the oldest entry is forgotten and every request
    issued at or before that entry's time is refused from then on (``expired``): under a
    flood the window shrinks, it never forgets early enough to let a replay in.

    A request's ``issued`` is signed with its nonce, so once a pair is forgotten only the
    requester itself can send the nonce again (with a later ``issued``): that is a new
    request, not a replay. Feed it only requests whose signature verified (else anyone
    could fill it), and only after every other check passed (a refused request leaves no
    trace).
    """

    __slots__ = ("_capacity", "_floor", "_heap", "_seen", "_skew")

    def __init__(self, *, skew: int = MAX_CLOCK_SKEW, capacity: int = 100_000) -> None:
        self._skew = check_int("skew", skew, 0, 24 * 3600)
        self._capacity = check_int("capacity", capacity, 1, 1 << 30)
        self._seen: set[tuple[str, str]] = set()
        self._heap: list[tuple[int, str, str]] = []  # (issued, requester, nonce)
        self._floor = -1  # requests issued at or before it are refused

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def skew(self) -> int:
        return self._skew

    def check_fresh(self, issued: int, now: int) -> None:
        """Raise ``expired`` / ``not_yet_valid`` unless ``issued`` is inside the window."""
        check_time("now", now)
        if issued < now - self._skew or issued <= self._floor:
            raise ExpiredError(f"request issued at {issued}, too old at {now}")
        if issued > now + self._skew:
            raise NotYetValidError(f"request issued at {issued}, in the future at {now}")

    def check_and_record(self, requester: str, nonce: str, issued: int, now: int) -> None:
        """Accept a request once, or raise (``expired``, ``not_yet_valid``, ``replay``)
        without changing any state."""
        self.check_fresh(issued, now)
        key = (requester, nonce)
        if key in self._seen:
            raise ReplayError("request already seen (same requester and nonce)")
        self.prune(now)
        if len(self._seen) >= self._capacity:
            if self._heap[0][0] >= issued:  # it would be the first forgotten
                raise ExpiredError(f"request issued at {issued}: replay table turned over")
            old_issued, old_requester, old_nonce = heapq.heappop(self._heap)
            self._seen.discard((old_requester, old_nonce))
            self._floor = max(self._floor, old_issued)
        self._seen.add(key)
        heapq.heappush(self._heap, (issued, requester, nonce))

    def prune(self, now: int) -> None:
        """Forget every pair whose request can no longer be fresh."""
        while self._heap and self._heap[0][0] < now - self._skew:
            _, requester, nonce = heapq.heappop(self._heap)
            self._seen.discard((requester, nonce))


class CredentialCache(Generic[V]):
    """Verified credentials by digest, least recently used forgotten first.

    A host verifies a credential's coordinator signature once and then finds it by the
    digest the requester signs (README section 7), so a roamer's later requests cost one
    verification, not two. Only verified credentials enter (so the table holds at most
    what the coordinator issued); forgetting one only costs its re-verification.
    """

    __slots__ = ("_capacity", "_items")

    def __init__(self, *, capacity: int = 1 << 16) -> None:
        self._capacity = check_int("capacity", capacity, 1, 1 << 30)
        self._items: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, digest: str) -> V | None:
        item = self._items.get(digest)
        if item is not None:
            self._items.move_to_end(digest)
        return item

    def put(self, digest: str, item: V) -> None:
        self._items[digest] = item
        self._items.move_to_end(digest)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
