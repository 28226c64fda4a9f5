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

Restitution: a standing also carries the node's ``debt``, what it owed and did not
deliver in the epoch it was caught (micro-units of its own location's resource in kind,
money units with money; :func:`coordinator.enforcement.shortfall`). The next allocation
that includes the node charges it contribution + debt (``Allocation.debts``); the debt is
cleared only when the audit of that epoch finds no offence, and a short delivery is a new
offence whose shortfall (including the unpaid debt) is the new debt. Time alone never
reduces a debt: forgiveness decays the score, not what is owed.

Why free riding does not pay (README "Graded exclusion"): one offence saves a node at
most the contribution C it owed in that epoch; it then costs L · (B − C) over the L
epochs it is out (B the benefit of the service it would have had), and C again as debt
when it is readmitted. Its net gain against truthful play is C − L(B − C) − C =
−L(B − C) ≤ 0 for every included node (B ≥ C, individual rationality), whatever the
offence pattern: each withheld amount is paid back before the node is served again
without paying it. (A node that never returns never repays, but never gains service
again either.)

History stays bounded: one :class:`Standing` per node (forgotten once its score has
decayed below :data:`FORGET_BELOW`, it is no longer excluded and it owes no debt, so a
node that never returns keeps its one row only while it owes something: at most one row
per registered node) and the offences of the last ``history_epochs`` epochs; nothing
reads every exclusion ever recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    excluded from ``first_epoch`` through ``last_epoch``; ``offences`` ever counted;
    ``debt`` what it withheld and has not repaid yet (micro-units, ≥ 0)."""

    node_id: str
    score: float
    detected_epoch: int
    first_epoch: int
    last_epoch: int
    offences: int
    debt: int = 0

    def __post_init__(self) -> None:
        if self.debt < 0:
            raise ValueError("a debt is never negative")

    def excludes(self, epoch: int) -> bool:
        return self.first_epoch <= epoch <= self.last_epoch


def sentence(policy: PenaltyPolicy, previous: Standing | None, node_id: str,
             detected_epoch: int, *, debt: int = 0) -> Standing:
    """The standing of ``node_id`` caught free-riding in ``detected_epoch``, owing
    ``debt`` from then on: its shortfall in that epoch
    (:func:`coordinator.enforcement.shortfall`), which includes any earlier debt, since
    an allocation charges an included node all of its debt.

    Idempotent: a standing that already counts ``detected_epoch`` is returned unchanged.
    """
    if debt < 0:
        raise ValueError("a debt is never negative")
    if previous is not None and previous.detected_epoch >= detected_epoch:
        return previous
    score = 1.0 + (0.0 if previous is None else policy.decayed(previous, detected_epoch))
    length = policy.length(score)
    return Standing(node_id=node_id, score=score, detected_epoch=detected_epoch,
                    first_epoch=detected_epoch + 1, last_epoch=detected_epoch + length,
                    offences=1 + (0 if previous is None else previous.offences), debt=debt)


def repaid(standing: Standing) -> Standing:
    """``standing`` once the audit found its debt delivered in full (score unchanged)."""
    return replace(standing, debt=0)


def forgotten(policy: PenaltyPolicy, standing: Standing, epoch: int) -> bool:
    """Whether ``standing`` can be dropped at ``epoch``: it excludes nothing from
    ``epoch`` on, its score has decayed below :data:`FORGET_BELOW` and it owes nothing
    (a debt is never forgotten)."""
    return (standing.debt == 0 and standing.last_epoch < epoch
            and policy.decayed(standing, epoch) < FORGET_BELOW)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sanction:
    """An offence found at an audit cut-off and the last epoch it keeps the node out
    (``offence.excluded_epoch`` … ``last_epoch``): what ``/v1/status`` lists."""

    offence: Exclusion
    last_epoch: int
