"""Replay guard, replay window and credential cache: bounded, refusals change no state."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import InkindError
from protocol.guards import CredentialCache, ReplayGuard, ReplayWindow


def code(fn: Callable[[], object]) -> str:
    with pytest.raises(InkindError) as excinfo:
        fn()
    return excinfo.value.code


def counter_rng() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


# --- ReplayGuard ----------------------------------------------------------------------


def test_replay_guard_refuses_a_second_use_of_a_nonce() -> None:
    guard = ReplayGuard(current_epoch=5)
    guard.check_and_record(5, "n1")
    assert guard.seen(5, "n1")
    assert code(lambda: guard.check_and_record(5, "n1")) == "replay"
    guard.check_and_record(4, "n1")  # nonces are per epoch


def test_replay_guard_refuses_epochs_outside_its_window() -> None:
    guard = ReplayGuard(current_epoch=5, window=2)
    assert code(lambda: guard.check_and_record(6, "n")) == "future_epoch"
    assert code(lambda: guard.check_and_record(3, "n")) == "stale_epoch"
    assert not guard.seen(6, "n") and not guard.seen(3, "n")


def test_advancing_forgets_old_epochs_and_never_goes_back() -> None:
    guard = ReplayGuard(current_epoch=5, window=2)
    guard.check_and_record(4, "a")
    guard.check_and_record(5, "b")
    guard.advance(6)
    assert not guard.seen(4, "a")
    assert guard.seen(5, "b")
    assert code(lambda: guard.check_and_record(4, "a")) == "stale_epoch"
    assert code(lambda: guard.check_and_record(5, "b")) == "replay"
    assert code(lambda: guard.advance(5)) == "stale_epoch"
    assert guard.current_epoch == 6


def test_replay_guard_fails_closed_when_full() -> None:
    guard = ReplayGuard(current_epoch=0, max_per_epoch=2)
    guard.check_and_record(0, "a")
    guard.check_and_record(0, "b")
    assert code(lambda: guard.check_and_record(0, "c")) == "capacity_exhausted"
    assert not guard.seen(0, "c")
    assert code(lambda: guard.check_and_record(0, "a")) == "replay"


def test_replay_guard_validates_its_arguments() -> None:
    assert code(lambda: ReplayGuard(window=0)) == "out_of_range"
    assert code(lambda: ReplayGuard().check_and_record(True, "x")) == "wrong_type"


# --- ReplayWindow -----------------------------------------------------------------------


def test_a_request_is_accepted_once_inside_the_skew_window() -> None:
    w = ReplayWindow(skew=60)
    w.check_and_record("alice", "n1", 1000, 1000)
    with pytest.raises(InkindError) as excinfo:
        w.check_and_record("alice", "n1", 1000, 1001)
    assert excinfo.value.code == "replay"
    w.check_and_record("bob", "n1", 1000, 1001)  # per requester: nobody blocks another
    w.check_and_record("alice", "n2", 1060, 1000)  # the window's edges are inside
    w.check_and_record("alice", "n3", 940, 1000)
    assert len(w) == 4


@pytest.mark.parametrize(("issued", "code"), [(939, "expired"), (1061, "not_yet_valid")])
def test_a_request_outside_the_window_is_refused_and_not_recorded(issued: int, code: str
                                                                  ) -> None:
    w = ReplayWindow(skew=60)
    with pytest.raises(InkindError) as excinfo:
        w.check_and_record("alice", "n", issued, 1000)
    assert excinfo.value.code == code
    assert len(w) == 0


def test_entries_are_forgotten_once_the_time_check_alone_refuses_them() -> None:
    w = ReplayWindow(skew=10)
    w.check_and_record("a", "n", 100, 100)
    w.prune(110)
    assert len(w) == 1  # still fresh at 110: a replay must still be caught
    with pytest.raises(InkindError):
        w.check_and_record("a", "n", 100, 110)
    w.prune(111)
    assert len(w) == 0
    with pytest.raises(InkindError) as excinfo:  # and the time check refuses it now
        w.check_and_record("a", "n", 100, 111)
    assert excinfo.value.code == "expired"


def test_a_full_window_shrinks_and_never_lets_a_replay_in() -> None:
    w = ReplayWindow(skew=60, capacity=3)
    for i, issued in enumerate((1000, 1001, 1002)):
        w.check_and_record("a", f"n{i}", issued, 1002)
    # Full: the oldest (issued 1000) is forgotten and everything issued at or before
    # 1000 is refused from now on, so its replay is still refused.
    w.check_and_record("a", "n3", 1002, 1002)
    assert len(w) == 3
    with pytest.raises(InkindError) as excinfo:
        w.check_and_record("a", "n0", 1000, 1002)
    assert excinfo.value.code == "expired"
    # A request that would itself be the first forgotten is refused, changing nothing.
    w2 = ReplayWindow(skew=60, capacity=1)
    w2.check_and_record("a", "x", 1000, 1000)
    with pytest.raises(InkindError):
        w2.check_and_record("a", "y", 999, 1000)
    with pytest.raises(InkindError) as excinfo:
        w2.check_and_record("a", "x", 1000, 1000)
    assert excinfo.value.code == "replay"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(-70, 70),
                          st.integers(0, 30)), max_size=60),
       st.integers(1, 8))
def test_no_pair_is_ever_accepted_twice_and_memory_stays_bounded(
    steps: list[tuple[int, int, int, int]], capacity: int
) -> None:
    # A request is (requester, nonce, issued): all three are signed, so only the
    # requester can make another request with the same nonce and another issued time.
    w = ReplayWindow(skew=60, capacity=capacity)
    accepted: set[tuple[str, str, int]] = set()
    now = 1000
    for who, nonce, offset, advance in steps:
        now += advance
        key = (f"r{who}", f"n{nonce}", now + offset)
        try:
            w.check_and_record(key[0], key[1], key[2], now)
        except InkindError:
            continue
        assert key not in accepted
        accepted.add(key)
        assert len(w) <= capacity


def test_the_window_validates_its_arguments() -> None:
    with pytest.raises(InkindError):
        ReplayWindow(skew=-1)
    with pytest.raises(InkindError):
        ReplayWindow(capacity=0)


# --- CredentialCache --------------------------------------------------------------------


def test_the_credential_cache_forgets_the_least_recently_used() -> None:
    cache: CredentialCache[int] = CredentialCache(capacity=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0
