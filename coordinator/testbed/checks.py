"""The invariants a testbed run is judged by, each saying what it checked.

A check is ``ok`` only when it looked at something and found nothing wrong; when there
was nothing to look at (no excluded roamer asked a host, no location-epoch had enough
attempts, no free rider was ever included) it is ``not_checked`` with the reason, which
is not a pass. A scenario names the checks it is about (``[scenario] checks``); a run in
which one of those was not checked fails like a run in which a check failed, and so
does a run that checked nothing at all.

Every check reads only the observed records (:mod:`.records`), the per-epoch figures of
:mod:`.report` and the scenario's plans (who plays which strategy); none replays the
mechanism.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .records import RunRecord

if TYPE_CHECKING:
    from .scenario import NodePlan

Status = Literal["ok", "failed", "not_checked"]

#: Every check, in the order the report lists them, with what it asserts.
TITLES: dict[str, str] = {
    "excluded_never_granted": "no roamer outside the epoch's allocation, or on probation in "
                              "it, was granted",
    "service_consistent": "included roamers are served at the planned coverage (99.9% "
                          "Wilson interval; capacity-limited location-epochs: not above it)",
    "budget_balanced": "realised budget surplus not in the lower 0.1% tail of the "
                       "mechanism's own ex-post surplus under the priors",
    "free_riders_caught": "every included free rider is detected in the epoch it cheats",
    "free_riders_excluded": "every node detected in epoch e is outside the allocation of e + 1",
    "honest_never_penalised": "no included host that ran honestly and answered probes was "
                              "detected",
    "unreachable_detected": "hosts down while they owed something are detected unreachable, "
                            "and no running host failed every probe",
}
CHECK_NAMES = tuple(TITLES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One check's verdict: ``checked`` of ``of`` items (``unit``) were judged."""

    name: str
    status: Status
    checked: int
    of: int
    unit: str
    why: str = ""
    failures: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return TITLES[self.name]

    def verdict(self) -> str:
        return verdict_text(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "checked": self.checked,
                "of": self.of, "unit": self.unit, "why": self.why, "title": self.title,
                "failures": list(self.failures)}


def verdict_text(c: Mapping[str, Any]) -> str:
    """A check's record (:meth:`Check.as_dict`, as in report.json) in words:
    ``ok (12 of 12 location-epochs)``, ``FAILED (...)`` or ``not checked: why``."""
    if c["status"] == "not_checked":
        return f"not checked: {c['why']}"
    word = "ok" if c["status"] == "ok" else "FAILED"
    extra = f"; {c['why']}" if c["why"] else ""
    return f"{word} ({c['checked']} of {c['of']} {c['unit']}{extra})"


def _make(name: str, unit: str, checked: int, of: int, failures: list[str], *,
          why_not: str, note: str = "") -> Check:
    if failures:
        status: Status = "failed"
    elif checked == 0:
        status = "not_checked"
    else:
        status = "ok"
    why = why_not if status == "not_checked" else note
    return Check(name=name, status=status, checked=checked, of=of, unit=unit, why=why,
                 failures=tuple(failures))


def _skips(reasons: Iterable[str]) -> str:
    c = Counter(reasons)
    return ", ".join(f"{n} {r}" for r, n in sorted(c.items(), key=lambda kv: -kv[1]))


def excluded_never_granted(epochs: Sequence[Mapping[str, Any]]) -> Check:
    asked = of = 0
    failures = []
    for e in epochs:
        for loc in e["locations"]:
            # A roamer on probation holds no credential of the epoch either.
            for who in ("excluded", "probation"):
                n = loc.get(f"attempts_{who}", 0)
                of += n
                asked += n - loc.get(f"refusals_{who}", {}).get("no_coverage", 0)
                if loc.get(f"grants_{who}", 0):
                    failures.append(f"{e['mechanism']} epoch {e['epoch']} {loc['name']}: "
                                    f"{loc[f'grants_{who}']} grants to {who} roamers")
    return _make("excluded_never_granted", "requests of roamers without a credential",
                 asked, of,
                 failures, why_not="no excluded roamer asked a host",
                 note=f"{of - asked} stood where nobody covers" if of > asked else "")


def service_consistent(epochs: Sequence[Mapping[str, Any]], *, min_attempts: int,
                       interval: Any) -> Check:
    """``interval(successes, n)`` -> (low, high): the check's confidence interval."""
    checked = of = 0
    skipped: list[str] = []
    limited = 0
    failures = []
    for e in epochs:
        for loc in e["locations"]:
            of += 1
            n = loc["attempts_included"]
            ref = loc["refusals_included"]
            if n < min_attempts:
                skipped.append(f"with fewer than {min_attempts} attempts")
                continue
            if loc["hosts_delivering_share"] != 1.0:
                skipped.append("where a covering host did not deliver")
                continue
            if "timeout" in ref or "unreachable" in ref:
                skipped.append("where a covering host was down")
                continue
            f = loc["coverage_planned"]
            lo, hi = interval(loc["grants_included"], n)
            where = f"{e['mechanism']} epoch {e['epoch']} {loc['name']}"
            checked += 1
            if "capacity_exhausted" in ref:
                # Hosts that opened what they owe and ran out: demand, not a fault; the
                # service may fall short of f but never exceed what was planned.
                limited += 1
                if lo > f + 1e-9:
                    failures.append(f"{where}: rate {loc['service_rate_included']} above "
                                    f"planned {f} though capacity-limited")
            elif not lo - 1e-9 <= f <= hi + 1e-9:
                failures.append(f"{where}: rate {loc['service_rate_included']} vs planned {f}")
    notes = []
    if limited:
        notes.append(f"{limited} capacity-limited")
    if skipped:
        notes.append(f"skipped: {_skips(skipped)}")
    why_not = ("no location-epoch " + (f"had {min_attempts} attempts by included roamers"
                                       if not skipped or all("fewer" in s for s in skipped)
                                       else f"could be judged ({_skips(skipped)})"))
    if of == 0:
        why_not = "no epoch was played"
    return _make("service_consistent", "location-epochs", checked, of, failures,
                 why_not=why_not, note="; ".join(notes))


def budget_balanced(epochs: Sequence[Mapping[str, Any]]) -> Check:
    judged = [e for e in epochs if e["budget"]["balanced"] is not None]
    failures = [f"{e['mechanism']} epoch {e['epoch']}: surplus {e['budget']['surplus']}, "
                f"tail probability {e['budget']['tail_probability']}"
                for e in judged if not e["budget"]["balanced"]]
    skipped = len(epochs) - len(judged)
    return _make("budget_balanced", "epochs", len(judged), len(epochs), failures,
                 why_not=("no epoch was played" if not epochs else
                          "every epoch had posted-fee terms with nodes missing"),
                 note=(f"{skipped} posted-fee epochs with nodes missing not judged"
                       if skipped else ""))


def _closed_epochs(run: RunRecord) -> set[int]:
    """Played epochs whose audit was closed (the next epoch's close was played)."""
    cut = {r.epoch for r in run.epochs}
    return {r.epoch for r in run.epochs if not r.cutoff and r.epoch + 1 in cut}


def free_riders_caught(runs: Sequence[RunRecord], plans: Mapping[str, NodePlan]) -> Check:
    checked = 0
    failures = []
    riders = sorted(n for n, p in plans.items() if p.strategy.startswith("free-ride"))
    for run in runs:
        closed = _closed_epochs(run)
        found = {(x["node"], x["detected_epoch"]) for x in run.exclusions}
        for r in run.epochs:
            if r.epoch not in closed:
                continue
            for n in riders:
                if n in r.included and r.owed.get(n, 0) > 0 and n not in r.down_at_probe:
                    checked += 1
                    if (n, r.epoch) not in found:
                        failures.append(f"{run.mechanism} epoch {r.epoch}: free rider {n} "
                                        "included and owing but not detected")
    why_not = ("the scenario has no free riders" if not riders
               else "no free rider was ever included owing something")
    return _make("free_riders_caught", "included free-rider epochs", checked, checked,
                 failures, why_not=why_not)


def free_riders_excluded(runs: Sequence[RunRecord]) -> Check:
    checked = of = 0
    failures = []
    for run in runs:
        by_epoch = {r.epoch: set(r.included) for r in run.epochs}
        for x in run.exclusions:
            of += 1
            inc = by_epoch.get(x["excluded_epoch"])
            if inc is None:
                continue
            checked += 1
            if x["node"] in inc:
                failures.append(f"{x['node']} detected in {x['detected_epoch']} but included "
                                f"in {x['excluded_epoch']}")
    return _make("free_riders_excluded", "detections", checked, of, failures,
                 why_not="nobody was detected" if of == 0
                 else "no detection's next epoch was played")


def honest_never_penalised(runs: Sequence[RunRecord], plans: Mapping[str, NodePlan]) -> Check:
    """No included host that played honestly (truthful or misreport: both deliver) and
    was up when probed is ever detected: the audit acts only on evidence against the
    accused, never on what others did."""
    checked = 0
    failures = []
    honest = {n for n, p in plans.items() if not p.strategy.startswith("free-ride")}
    for run in runs:
        closed = _closed_epochs(run)
        found = {(x["node"], x["detected_epoch"]): x["reason"] for x in run.exclusions}
        for r in run.epochs:
            if r.epoch not in closed:
                continue
            for n in sorted(honest & set(r.included) - set(r.down_at_probe)):
                checked += 1
                if (n, r.epoch) in found:
                    failures.append(f"honest host {n} detected in epoch {r.epoch} "
                                    f"({found[(n, r.epoch)]})")
    return _make("honest_never_penalised", "honest host-epochs", checked, checked, failures,
                 why_not="no honest host was included in an epoch whose audit closed")


def unreachable_detected(runs: Sequence[RunRecord]) -> Check:
    checked = 0
    failures = []
    for run in runs:
        closed = _closed_epochs(run)
        found = {(x["node"], x["detected_epoch"]) for x in run.exclusions
                 if x["reason"] == "unreachable"}
        for r in run.epochs:
            if r.epoch not in closed:
                continue
            down = set(r.down_at_probe)
            for n in sorted(down):
                if r.owed.get(n, 0) > 0:
                    checked += 1
                    if (n, r.epoch) not in found:
                        failures.append(f"{n} was down when probed in epoch {r.epoch} (owing "
                                        f"{r.owed[n]}) but not detected unreachable")
            for n in r.unanswered:
                if n not in down:
                    failures.append(f"{n} was running but answered no probe in epoch "
                                    f"{r.epoch}")
    return _make("unreachable_detected", "hosts down while owing", checked, checked, failures,
                 why_not="no host was down while it owed something")


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """All checks of a run and the scenario's claim on them."""

    checks: tuple[Check, ...]
    about: tuple[str, ...]  # the checks the scenario is about: each must be checked
    interrupted: bool = False
    missing: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        by = {c.name: c for c in self.checks}
        object.__setattr__(self, "missing", tuple(
            n for n in self.about if by[n].status == "not_checked"))

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "failed")

    @property
    def nothing_checked(self) -> bool:
        return all(c.status == "not_checked" for c in self.checks)

    @property
    def ok(self) -> bool:
        """No check failed, something was checked, and every check the scenario is about
        was checked."""
        return not (self.failed or self.missing or self.interrupted or self.nothing_checked)

    def summary(self) -> str:
        n = Counter(c.status for c in self.checks)
        head = (f"{n['ok']} ok, {n['failed']} failed, {n['not_checked']} not checked")
        if self.failed:
            return f"FAILED ({head}): " + ", ".join(c.name for c in self.failed)
        if self.missing:
            return (f"FAILED ({head}): the scenario is about {', '.join(self.missing)}, "
                    "which the run did not check")
        if self.nothing_checked:
            return f"FAILED ({head}): the run checked nothing"
        if self.interrupted:
            return f"INCOMPLETE ({head}): the run was interrupted"
        return f"all hold ({head})"
