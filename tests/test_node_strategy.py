"""Strategies: what is declared, and whether the contribution is opened and committed."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.strategy import FreeRide, Misreport, Truthful, parse_strategy
from protocol import MICRO
from protocol.errors import OutOfRangeError


def test_truthful_declares_theta_and_delivers() -> None:
    s = parse_strategy("truthful")
    assert isinstance(s, Truthful)
    assert s.declare(420_000) == 420_000
    assert s.opens_contribution and s.commits


def test_misreport_by_factor_and_fixed_value() -> None:
    half = parse_strategy("misreport:0.5")
    assert isinstance(half, Misreport) and half.factor == Fraction(1, 2)
    assert half.declare(420_001) == 210_000  # floor
    assert parse_strategy("misreport:3").declare(600_000) == MICRO  # clamped
    fixed = parse_strategy("misreport:=0.2")
    assert fixed.declare(900_000) == 200_000
    assert fixed.opens_contribution and fixed.commits


def test_free_ride_declares_truthfully_but_opens_nothing() -> None:
    quiet = parse_strategy("free-ride")
    liar = parse_strategy("free-ride:commit")
    assert isinstance(quiet, FreeRide) and isinstance(liar, FreeRide)
    assert quiet.declare(300_000) == liar.declare(300_000) == 300_000
    assert not quiet.opens_contribution and not liar.opens_contribution
    assert not quiet.commits and liar.commits


@pytest.mark.parametrize(
    "text",
    ["", "honest", "misreport", "misreport:x", "misreport:-1", "misreport:=2", "free-ride:x"],
)
def test_unknown_strategies_are_refused(text: str) -> None:
    with pytest.raises(OutOfRangeError):
        parse_strategy(text)


@given(theta=st.integers(0, MICRO), factor=st.fractions(min_value=0, max_value=10))
def test_every_declaration_is_a_valid_theta(theta: int, factor: Fraction) -> None:
    for s in (Truthful(), Misreport(factor=factor), FreeRide()):
        assert 0 <= s.declare(theta) <= MICRO
