"""The testbed report's shape: ``report.json`` as validated, typed records.

:func:`.report.build_report` builds the report and validates it into :class:`Report`
before anything is written, so a field the code forgets, misspells or fills with the
wrong type fails the run (and its tests) instead of reaching a reader; readers of a
``report.json`` from disk (``scripts/dashboard.py``) go through :func:`load_report`, so
a file that is not a testbed report is refused with the field at fault named.

Every record forbids unknown fields and non-finite numbers (JSON has no NaN). Units:
quantities in units of the resource kind (money units with money payments), welfare in
the market spec's units, times in seconds, latency in milliseconds; epochs numbered as
the coordinator numbers them, from 0. ``None`` (JSON ``null``) means "not measured"
(no attempt, no type profile to compare with), never zero.

The JSON shape is the one the report always had (README "The report"); fields are only
ever added.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.kinds import KINDS

from .checks import CHECK_NAMES

__all__ = ["Report", "ReportError", "load_report", "validate_report"]

_Record = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
Count = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0)]
Mechanism = Literal["posted_fee", "optimal"]  # protocol.messages.MECHANISMS (a test holds it)


class ReportError(ValueError):
    """A file or value that is not a testbed report (the message names the field)."""


class Latency(BaseModel):
    """Access-decision latency (one POST of the access request), milliseconds."""

    model_config = _Record
    n: Count
    p50: Annotated[float, Field(ge=0.0)] | None
    p99: Annotated[float, Field(ge=0.0)] | None


class ScenarioLocation(BaseModel):
    model_config = _Record
    name: str
    nodes: Count
    area: Annotated[float, Field(gt=0.0)]


class ScenarioInfo(BaseModel):
    """What was played: the scenario as the run saw it (``--epochs``, ``--types`` applied)."""

    model_config = _Record
    name: str
    path: str
    description: str
    kind: str
    payment: Literal["money", "in_kind"]
    mechanisms: list[Mechanism] = Field(min_length=1)
    epochs: Annotated[int, Field(ge=1)]
    types: Literal["fixed", "redraw"] = "fixed"
    nodes: Count
    locations: list[ScenarioLocation] = Field(min_length=1)
    strategies: dict[str, Count]  # spelling -> how many nodes play it
    faults: list[str]

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"kind {v!r} is not one of {list(KINDS)}")
        return v


class LocationFigures(BaseModel):
    """One location in one epoch (units: the kind's; rates: fractions of attempts)."""

    model_config = _Record
    name: str
    nodes: Count
    declared: Count
    included: Count
    Q_planned: float | None
    coverage_planned: Fraction | None  # f = min(1, Q / area)
    service_rate_included: Fraction | None
    service_rate_ci95: tuple[Fraction | None, Fraction | None] | None
    service_rate_expected_delivered: Fraction | None
    attempts_included: Count
    grants_included: Count
    refusals_included: dict[str, Count]  # reason -> attempts (no_coverage included)
    attempts_excluded: Count
    grants_excluded: Count
    refusals_excluded: dict[str, Count]
    # included nodes on probation (no credential): hosts of l, and their own attempts
    probation: Count = 0
    attempts_probation: Count = 0
    grants_probation: Count = 0
    refusals_probation: dict[str, Count] = Field(default_factory=dict)
    contributions_owed: float | None
    contributions_opened: float | None
    contributions_used: float | None
    hosts_delivering_share: Fraction | None
    cost: float | None
    payments: float | None
    restitution_charged: float | None
    budget_surplus: float | None
    latency_ms: Latency
    # in kind only (one budget per location); null with money payments
    budget_surplus_expected: float | None = None
    budget_tail_probability: Fraction | None = None


class Budget(BaseModel):
    """The epoch's budget: cost Σ c_l(n_l, Q_l) against payments or contributions owed;
    ``balanced`` is null when the epoch is not judged (a posted-fee epoch with nodes
    missing)."""

    model_config = _Record
    payment: Literal["money", "in_kind"]
    rule: str
    tail_probability: list[Fraction | None]  # per location in kind, one pooled in money
    surplus_expected: list[float | None]
    cost: float | None
    payments: float | None
    surplus: float | None
    balanced: bool | None


class Commitments(BaseModel):
    model_config = _Record
    expected: Count
    received: Count


class Shopping(BaseModel):
    """The mystery shoppers' requests of an epoch: asked, granted, and left without any
    answer (unreachable or timed out: each complained about)."""

    model_config = _Record
    requests: Count
    granted: Count
    unanswered: Count


class EpochFigures(BaseModel):
    """One played epoch of one mechanism's run (the audit cut-off is not played and has
    no record here)."""

    model_config = _Record
    index: Count  # position in the run
    run: Count  # which mechanism's run (0, 1, ...)
    mechanism: Mechanism
    epoch: int  # the coordinator's number
    declarations: Count
    participants: Count
    included: Count
    status: str
    locations: list[LocationFigures]
    budget: Budget
    welfare_expected: float | None  # the mechanism's ex-ante figure (spec units)
    welfare_sd: Annotated[float, Field(ge=0.0)] | None  # over type profiles
    welfare_realised: float | None  # true types of the included, planned Q
    welfare_delivered: float | None  # Q scaled by the service delivered, nodes served
    # benefit the allocation planned for included nodes on probation (not served)
    welfare_probation: float | None = None
    probation_nodes: list[str] = Field(default_factory=list)
    welfare_profiles_mean: float | None
    welfare_z: float | None
    excluded_at_close: list[str]
    excluded_nodes: list[str]
    free_riders_detected: list[str]
    commitments: Commitments
    evidence_reported: Count
    probes_unanswered: list[str]
    shopping: Shopping | None = None
    down_at_probe: list[str]
    latency_ms: Latency
    faults: list[str]
    warnings: list[str]
    durations_s: dict[str, Seconds]


class Detection(BaseModel):
    """One offence: ``node`` caught in ``epoch``, out from ``excluded_epoch``."""

    model_config = _Record
    node: str
    epoch: int
    excluded_epoch: int
    reason: str
    mechanism: Mechanism


class FreeRiders(BaseModel):
    model_config = _Record
    nodes: list[str]
    offences: Count  # one node caught in one epoch
    by_reason: dict[str, Count]


class MechanismSummary(BaseModel):
    """Means over one mechanism's played epochs; z = (realised − expected) /
    ``welfare_sd_of_mean`` (one profile with fixed types, ``epochs`` with redrawn ones)."""

    model_config = _Record
    epochs: Count
    welfare_expected_mean: float | None
    welfare_realised_mean: float | None
    welfare_delivered_mean: float | None
    welfare_sd: Annotated[float, Field(ge=0.0)] | None
    type_profiles: Count
    welfare_sd_of_mean: Annotated[float, Field(ge=0.0)] | None
    welfare_z: float | None
    cutoff_epoch: int | None
    included_mean: float | None
    budget_surplus_mean: float | None
    startup_s: Seconds
    wall_s: Seconds
    coordinator_restarts: Count


class CheckRecord(BaseModel):
    """One check's verdict (:class:`.checks.Check`): ``checked`` of ``of`` ``unit``."""

    model_config = _Record
    name: str
    status: Literal["ok", "failed", "not_checked"]
    checked: Count
    of: Count
    unit: str
    why: str
    title: str
    failures: list[str]

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in CHECK_NAMES:
            raise ValueError(f"check {v!r} is not one of {list(CHECK_NAMES)}")
        return v


class Summary(BaseModel):
    model_config = _Record
    grants_to_excluded: Count
    free_riders_detected: list[Detection]
    free_riders: FreeRiders
    attempts: Count
    grants: Count
    latency_ms: Latency
    by_mechanism: dict[Mechanism, MechanismSummary]
    checks: list[CheckRecord]
    checks_about: list[str]
    checks_missing: list[str]
    ok: bool
    verdict: str


class Reproducibility(BaseModel):
    """SHA-256 (hex) of what the seed decides: equal on every run of a scenario and seed."""

    model_config = _Record
    declarations: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    allocations: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    roaming_script: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    nodes: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Report(BaseModel):
    """``report.json``."""

    model_config = _Record
    scenario: ScenarioInfo
    seed: Annotated[int, Field(ge=0)]
    mode: Literal["process", "exec", "inproc"]
    interrupted: bool
    wall_s: Seconds
    startup_s: list[Seconds]  # per mechanism's run
    epochs: list[EpochFigures]
    summary: Summary
    reproducibility: Reproducibility
    unit: str


def _explain(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'the report'}: {e['msg']}"
             for e in errs[:5]]
    more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return "; ".join(parts) + more


def validate_report(data: object) -> Report:
    """``data`` (a parsed report.json or a freshly built report) as a :class:`Report`;
    ReportError naming the first fields at fault."""
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        raise ReportError(f"not a testbed report: {_explain(exc)}") from None


def validate_epoch(data: object) -> EpochFigures:
    """One epoch's figures (what the live dashboard is shown) as :class:`EpochFigures`."""
    try:
        return EpochFigures.model_validate(data)
    except ValidationError as exc:
        raise ReportError(f"not a testbed epoch: {_explain(exc)}") from None


#: report.json files larger than this are refused unread (a 1000-epoch run is ~10 MB).
MAX_REPORT_BYTES = 256 << 20


def load_report(path: str | Path) -> Report:
    """Read and validate a ``report.json`` (ReportError if it is not one)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_REPORT_BYTES:
            raise ReportError(f"{p}: larger than {MAX_REPORT_BYTES} bytes")
        data = json.loads(p.read_bytes())
    except OSError as exc:
        raise ReportError(f"{p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportError(f"{p}: not JSON: {exc}") from None
    try:
        return validate_report(data)
    except ReportError as exc:
        raise ReportError(f"{p}: {exc}") from None
