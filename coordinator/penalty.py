"""Graded exclusion: how long a free rider stays out, from a decaying record of offences.

Enforcement (:mod:`coordinator.enforcement`) says who free-rode in epoch e; this module
says for how long they are excluded. Each node that ever offended has a
:class:`Standing`: a score that adds 1 per epoch in which it was caught (several reasons
in one epoch are one offence) and halves every ``half_life`` epochs it spends readmitted
after its last exclusion ends (HTCondor decays accumulated usage by a half-life; private
trackers escalate from warning to long bans). A node caught with score s (after adding
this offence) is excluded for

    L(s) = min(max_epochs, ceil(base_epochs · growth^(s − 1)))

epochs: e + 1 … e + L(s). Serving an exclusion does not count as good behaviour: the
score only decays over epochs after the exclusion ended, so a node caught at every
readmission is out for 2, 4, 8, 16 … epochs with the defaults, never every other epoch.

Why free riding does not pay (README "Graded exclusion"): one offence saves a node at
most the contribution C it owed in that epoch and costs it L · (B − C) over the epochs it
is out, B being the benefit of the service it would have had. It pays only if
B / C < 1 + 1 / L, i.e. for L = base_epochs = 2 only for a node whose benefit is within
50% of its contribution, less each time it is caught again.

History stays bounded: one :class:`Standing` per node (forgotten once its score has
decayed below :data:`FORGET_BELOW` and it is no longer excluded) and the offences of the
last ``history_epochs`` epochs; nothing reads every exclusion ever recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.enforcement import Exclusion

#: A standing whose decayed score is below this, and which excludes nothing any more,
#: is forgotten (it could no longer lengthen an exclusion by more than a rounding).
FORGET_BELOW = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class PenaltyPolicy:
    """The exclusion schedule (coordinator configuration; CLI ``--penalty-*``).

    ``base_epochs``: exclusion after a first offence (≥ 1); ``growth``: factor per unit of
    score (≥ 1); ``half_life``: readmitted epochs for the score to halve (> 0);
    ``max_epochs``: longest exclusion; ``history_epochs``: how long offences stay listed
    (``/v1/status``) after their exclusion ended.
    """

    base_epochs: int = 2
    growth: float = 2.0
    half_life: float = 8.0
    max_epochs: int = 64
    history_epochs: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.base_epochs <= self.max_epochs:
            raise ValueError("base_epochs must be in [1, max_epochs]")
        if not self.max_epochs <= 100_000:
            raise ValueError("max_epochs must be at most 100000")
        if not (math.isfinite(self.growth) and 1.0 <= self.growth <= 100.0):
            raise ValueError("growth must be in [1, 100]")
        if not (math.isfinite(self.half_life) and 0.0 < self.half_life <= 1e6):
            raise ValueError("half_life must be in (0, 1e6] epochs")
        if not 0 <= self.history_epochs <= 100_000:
            raise ValueError("history_epochs must be in [0, 100000]")

    def length(self, score: float) -> int:
        """L(s) in epochs for a score s ≥ 1 (this offence included)."""
        raw = self.base_epochs * math.pow(self.growth, max(score - 1.0, 0.0))
        # 1e-9: a score that is an integer up to rounding gives the integer length.
        return min(self.max_epochs, max(1, math.ceil(raw - 1e-9)))

    def decayed(self, standing: Standing, epoch: int) -> float:
        """``standing``'s score as of ``epoch``: halved per ``half_life`` epochs since its
        exclusion ended (no decay while excluded)."""
        clean = max(0, epoch - (standing.last_epoch + 1))
        return standing.score * math.pow(2.0, -clean / self.half_life)


@dataclass(frozen=True, slots=True, kw_only=True)
class Standing:
    """A node's record: ``score`` after its last offence (detected in ``detected_epoch``),
    excluded from ``first_epoch`` through ``last_epoch``; ``offences`` ever counted."""

    node_id: str
    score: float
    detected_epoch: int
    first_epoch: int
    last_epoch: int
    offences: int

    def excludes(self, epoch: int) -> bool:
        return self.first_epoch <= epoch <= self.last_epoch


def sentence(policy: PenaltyPolicy, previous: Standing | None, node_id: str,
             detected_epoch: int) -> Standing:
    """The standing of ``node_id`` caught free-riding in ``detected_epoch``.

    Idempotent: a standing that already counts ``detected_epoch`` is returned unchanged.
    """
    if previous is not None and previous.detected_epoch >= detected_epoch:
        return previous
    score = 1.0 + (0.0 if previous is None else policy.decayed(previous, detected_epoch))
    length = policy.length(score)
    return Standing(node_id=node_id, score=score, detected_epoch=detected_epoch,
                    first_epoch=detected_epoch + 1, last_epoch=detected_epoch + length,
                    offences=1 + (0 if previous is None else previous.offences))


def forgotten(policy: PenaltyPolicy, standing: Standing, epoch: int) -> bool:
    """Whether ``standing`` can be dropped at ``epoch``: it excludes nothing from
    ``epoch`` on and its score has decayed below :data:`FORGET_BELOW`."""
    return standing.last_epoch < epoch and policy.decayed(standing, epoch) < FORGET_BELOW


@dataclass(frozen=True, slots=True, kw_only=True)
class Sanction:
    """An offence found at an audit cut-off and the last epoch it keeps the node out
    (``offence.excluded_epoch`` … ``last_epoch``): what ``/v1/status`` lists."""

    offence: Exclusion
    last_epoch: int
