"""Replay guard and challenge book: bounded, deterministic, refusals change no state."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from protocol.errors import InkindError
from protocol.guards import ChallengeBook, ReplayGuard


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


# --- ChallengeBook --------------------------------------------------------------------


def test_challenges_are_fresh_hex_and_usable_once() -> None:
    book = ChallengeBook(ttl=30, rng=counter_rng())
    first, second = book.issue(100), book.issue(100)
    assert first.value != second.value
    assert len(first.value) == 32 and first.expires == 130
    book.consume(first.value, 129)
    assert code(lambda: book.consume(first.value, 129)) == "replay"
    book.consume(second.value, 110)


def test_a_challenge_expires_at_its_expiry_time() -> None:
    book = ChallengeBook(ttl=30, rng=counter_rng())
    ch = book.issue(100)
    assert code(lambda: book.consume(ch.value, 130)) == "expired"
    assert code(lambda: book.consume(ch.value, 131)) == "bad_proof"  # gone for good


def test_an_unknown_challenge_is_a_bad_proof() -> None:
    book = ChallengeBook(rng=counter_rng())
    assert code(lambda: book.consume("00" * 16, 0)) == "bad_proof"


def test_the_book_is_bounded_and_pruning_frees_room() -> None:
    book = ChallengeBook(ttl=10, capacity=2, rng=counter_rng())
    a = book.issue(0)
    book.issue(0)
    assert code(lambda: book.issue(5)) == "capacity_exhausted"
    book.consume(a.value, 5)  # a used challenge frees its outstanding slot
    book.issue(9)
    assert code(lambda: book.issue(9)) == "capacity_exhausted"
    book.issue(10)  # everything issued at 0 expired at 10
    assert len(book) == 2  # the two issued at 9 and 10


def test_a_repeating_random_source_is_caught() -> None:
    book = ChallengeBook(rng=lambda n: b"\x00" * n)
    book.issue(0)
    with pytest.raises(RuntimeError):
        book.issue(0)
    with pytest.raises(ValueError):
        ChallengeBook(rng=lambda n: b"short").issue(0)


def test_the_default_random_source_works() -> None:
    book = ChallengeBook()
    assert book.issue(0).value != book.issue(0).value


def test_used_challenges_do_not_cap_the_sustained_rate() -> None:
    # capacity bounds outstanding challenges; used ones are forgotten oldest first, so a
    # host answering far more than capacity / ttl requests per second keeps working.
    import itertools

    from protocol import ChallengeBook
    from protocol.errors import BadProofError, ReplayError

    counter = itertools.count(1)
    book = ChallengeBook(ttl=30, capacity=4, rng=lambda n: next(counter).to_bytes(n, "big"))
    first = book.issue(1000)
    book.consume(first.value, 1000)
    for _ in range(50):
        c = book.issue(1000)
        book.consume(c.value, 1000)
    assert len(book) <= 4
    with pytest.raises(BadProofError):
        book.consume(first.value, 1000)  # forgotten, still refused
    last = book.issue(1000)
    book.consume(last.value, 1000)
    with pytest.raises(ReplayError):
        book.consume(last.value, 1000)
