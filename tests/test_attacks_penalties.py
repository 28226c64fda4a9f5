"""Graded penalties against free-riding patterns (issue 11 item 4): whatever the pattern
(every epoch it is let in, every other, every third, at random, once and then honest), a
free rider is out at least ``base_epochs`` epochs per offence, repeat offences at each
readmission are excluded ever longer, one offence is forgotten, and the record of any
pattern stays one standing per node."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.penalty import PenaltyPolicy, Standing, forgotten, sentence

POLICY = PenaltyPolicy()
HORIZON = 300


def play(wants_to_ride: set[int]) -> tuple[list[int], list[int], Standing | None]:
    """The epochs it rode (included and offending), the exclusion lengths, and its last
    standing (None once forgotten)."""
    standing: Standing | None = None
    rode: list[int] = []
    lengths: list[int] = []
    for e in range(HORIZON):
        if standing is not None and standing.excludes(e):
            continue
        if standing is not None and forgotten(POLICY, standing, e):
            standing = None
        if e in wants_to_ride:
            rode.append(e)
            standing = sentence(POLICY, standing, "n", e)
            lengths.append(standing.last_epoch - standing.first_epoch + 1)
    return rode, lengths, standing


def test_riding_at_every_readmission_is_excluded_ever_longer() -> None:
    rode, lengths, _ = play(set(range(HORIZON)))
    assert lengths == sorted(lengths) and lengths[0] == POLICY.base_epochs
    assert lengths[-1] == POLICY.max_epochs
    assert len(rode) <= 10  # 2 + 4 + 8 + 16 + 32 + 64 + 64 + ... over 300 epochs


def test_every_other_and_every_third_epoch_never_reach_their_rate() -> None:
    for k in (2, 3, 4):
        rode, lengths, _ = play(set(range(0, HORIZON, k)))
        assert len(rode) < HORIZON / k / 4, (k, len(rode))
        # Forgiveness decays over the clean epochs between rides, but never below where
        # the second offence put it: the exclusions only get long.
        assert min(lengths[1:]) >= 2 * POLICY.base_epochs


def test_once_and_then_honest_is_forgotten() -> None:
    rode, lengths, standing = play({5})
    assert rode == [5] and lengths == [POLICY.base_epochs] and standing is None


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, HORIZON - 1)))
def test_no_pattern_rides_more_than_one_epoch_in_base_plus_one(wants: set[int]) -> None:
    rode, lengths, _ = play(wants)
    assert all(n >= POLICY.base_epochs for n in lengths)
    # Each ride is followed by at least base_epochs out (or the horizon ends).
    for a, b in zip(rode, rode[1:], strict=False):
        assert b - a > POLICY.base_epochs
    assert len(rode) <= HORIZON // (POLICY.base_epochs + 1) + 1
