"""Bounded, sans-I/O state for refusing replays: a nonce guard and a challenge book.

* :class:`ReplayGuard` (coordinator side) remembers the nonces of authentic messages for
  the current epoch and the ``window - 1`` epochs before it; older epochs are forgotten
  and refused as ``stale_epoch``, so memory is bounded by ``window * max_per_epoch``.
* :class:`ChallengeBook` (host side) issues fresh random challenges that expire ``ttl``
  seconds after issue and can be consumed once; a used challenge is remembered until it
  would have expired, so a replay is reported as ``replay`` rather than as unknown.

Time is always an argument ``now`` in integer Unix seconds; randomness is a function
passed in (``os.urandom`` by default), so tests are deterministic. Neither class is
thread-safe: each belongs to one event loop or is guarded by its owner's lock. This module
deliberately does not verify signatures: feed it only messages that already passed
:mod:`protocol.verify`, or an attacker could fill it with forged nonces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from protocol.errors import (
    BadProofError,
    CapacityExhaustedError,
    ExpiredError,
    FutureEpochError,
    ReplayError,
    StaleEpochError,
)
from protocol.fields import NONCE_BYTES, check_epoch, check_int, check_time


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """A challenge as issued: send ``value`` (and ``expires``) to the requester."""

    value: str
    expires: int


class ChallengeBook:
    """Host-side single-use challenges with expiry, at most ``capacity`` remembered."""

    __slots__ = ("_capacity", "_open", "_rng", "_ttl", "_used")

    def __init__(
        self,
        *,
        ttl: int = 30,
        capacity: int = 10_000,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._ttl = check_int("ttl", ttl, 1, 24 * 3600)
        self._capacity = check_int("capacity", capacity, 1, 1 << 30)
        self._rng = rng
        self._open: dict[str, int] = {}  # challenge -> expiry, not yet used
        self._used: dict[str, int] = {}  # challenge -> expiry, used once already

    def __len__(self) -> int:
        """Number of challenges remembered (outstanding or used, not yet pruned)."""
        return len(self._open) + len(self._used)

    def issue(self, now: int) -> Challenge:
        """A fresh challenge valid while ``now < expires``; ``capacity_exhausted`` if full.

        Only outstanding (unused) challenges count against ``capacity``: used ones are
        kept just to answer a replay with ``replay`` and are forgotten oldest first, so a
        host's sustained rate is not capped at capacity / ttl. A forgotten used challenge
        is still refused (``bad_proof``: unknown).
        """
        check_time("now", now)
        if len(self._open) >= self._capacity:
            self.prune(now)
            if len(self._open) >= self._capacity:
                # Refuse rather than evict: evicting would let a flood void honest challenges.
                raise CapacityExhaustedError("too many outstanding challenges")
        for _ in range(3):
            raw = self._rng(NONCE_BYTES)
            if not isinstance(raw, bytes) or len(raw) != NONCE_BYTES:
                raise ValueError(f"rng must return {NONCE_BYTES} bytes")
            value = raw.hex()
            if value not in self._open and value not in self._used:
                expires = now + self._ttl
                self._open[value] = expires
                return Challenge(value=value, expires=expires)
        raise RuntimeError("random source keeps repeating itself")

    def consume(self, challenge: str, now: int) -> None:
        """Use ``challenge`` once, or raise ``replay``, ``expired`` or ``bad_proof`` (unknown)."""
        check_time("now", now)
        if challenge in self._used:
            raise ReplayError("challenge already used")
        expires = self._open.pop(challenge, None)
        if expires is None:
            raise BadProofError("challenge was not issued by this host (or was pruned)")
        if now >= expires:
            raise ExpiredError("challenge expired")
        self._used[challenge] = expires
        if len(self._used) > self._capacity:
            # dicts keep insertion order: drop the oldest used challenge.
            del self._used[next(iter(self._used))]

    def prune(self, now: int) -> None:
        """Forget every challenge whose expiry is at or before ``now``."""
        check_time("now", now)
        for table in (self._open, self._used):
            for value in [v for v, exp in table.items() if exp <= now]:
                del table[value]
