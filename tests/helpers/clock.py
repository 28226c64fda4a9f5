"""A clock the test moves: nothing in the tests waits on real time."""

from __future__ import annotations

#: The tests' "now", integer Unix seconds (2023-11-14).
NOW = 1_700_000_000


class FakeClock:
    """Integer Unix seconds set by the test: ``clock.now = ...`` or ``clock.advance(s)``;
    ``clock()`` reads it (what the code under test is given as its clock)."""

    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> int:
        self.now += seconds
        return self.now
