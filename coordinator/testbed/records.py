"""What the launcher observed while it played: the records :mod:`.driver` fills and
:mod:`.report` reads (kept apart so that neither imports the other).

Epochs are numbered as the coordinator numbers them (from 0); the record of the audit
cut-off (one more epoch opened and closed after the last played one, so that the last
epoch's free riders are found) has ``cutoff`` set and no roaming.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .progress import Progress


@dataclass(slots=True, kw_only=True)
class AttemptResult:
    roamer: str
    location: int
    included: bool
    host: str | None
    reason: str  # granted, no_coverage, a refusal code, unreachable, timeout, not_running
    amount: int = 0
    latency_ms: float | None = None
    # The roamer is included but on probation (no credential of the epoch): ``included``
    # is then False, since it cannot be served as an included roamer.
    probation: bool = False


@dataclass(slots=True, kw_only=True)
class EpochRecord:
    index: int
    run: int
    mechanism: str
    epoch: int = -1
    declared: dict[str, int] = field(default_factory=dict)  # name -> declared θ
    declarations: int = 0
    q: list[int] = field(default_factory=list)
    included: list[str] = field(default_factory=list)
    # Included nodes the coordinator holds on probation: they owe and host, but got no
    # credential (coordinator README "Probation"), so they do not roam as included.
    probation: list[str] = field(default_factory=list)
    owed: dict[str, int] = field(default_factory=dict)  # contribution + debt
    debts: dict[str, int] = field(default_factory=dict)  # restitution charged (> 0 only)
    participants: dict[str, int] = field(default_factory=dict)  # name -> location
    expected_welfare: int = 0
    status: str = ""
    newly_excluded: list[str] = field(default_factory=list)
    commitments: int = 0
    expected_commitments: int = 0
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[AttemptResult] = field(default_factory=list)
    # The mystery shoppers' requests (protocol README section 7, step 8): asked like
    # roamers' but kept apart, so the service figures stay those of the roaming script.
    shopping: list[AttemptResult] = field(default_factory=list)
    evidence_sent: int = 0
    complaints: int = 0  # requests without a signed answer the roamers complained about
    faults: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    cutoff: bool = False
    unanswered: list[str] = field(default_factory=list)  # hosts that answered no probe
    down_at_probe: list[str] = field(default_factory=list)  # crashed or silent then


@dataclass(slots=True, kw_only=True)
class RunRecord:
    run: int
    mechanism: str
    epochs: list[EpochRecord] = field(default_factory=list)
    exclusions: list[dict[str, Any]] = field(default_factory=list)
    coordinator_restarts: int = 0
    startup_s: float = 0.0
    coordinator_start_s: float = 0.0
    nodes_start_s: float = 0.0
    wall_s: float = 0.0


@dataclass(slots=True, kw_only=True)
class Options:
    out: Path
    seed: int
    mode: str = "process"
    progress: Progress = field(default_factory=lambda: Progress(enabled=False))
    keep_run_dir: bool = True
    plots: bool = True
    epochs: int | None = None  # override the scenario's
    board: Any = None  # the live dashboard (dashboard.Board), if one follows the run
    state: Path | None = None  # keys, databases, logs (default: <out>/run)
    # Set by Ctrl-C or SIGTERM. The run's task is cancelled too, but a cancellation can be
    # swallowed on its way (asyncio.wait_for on Python 3.11 loses one that races the
    # awaited result), so the player also checks this between epochs.
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def run_root(self) -> Path:
        """Where each mechanism's run keeps its keys, databases and logs."""
        return self.state if self.state is not None else self.out / "run"


def digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as sorted-key JSON: the reproducibility digests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


