"""The testbed's report: ``report.json``, ``report.md`` and PNG plots.

Per epoch and location: the planned Q_l and coverage f_l = min(1, Q_l / area_l); the
realised service rate of included roamers (grants / attempts, an attempt being one
scripted point, covered or not) with a Wilson 95% interval; attempts, grants and
refusals of included and excluded roamers by reason; contributions owed, opened
(delivered) and used; the budget (cost c_l(n_l, Q_l) against payments or contributions);
realised against expected welfare; the decision latency of access requests.

Checks (``summary.checks``), the invariants the integration tests assert:

* ``excluded_never_granted``: no roamer outside the epoch's allocation, nor one included
  on probation (no credential: coordinator README "Probation"), was ever granted;
* ``service_consistent``: where every covering host delivered what it owes and answered,
  f_l lies in the 99.9% Wilson interval of the included roamers' service rate (with ≥ 20
  attempts; 99.9% rather than 95% because a run checks dozens of location-epochs).
  Location-epochs where honest hosts ran out of what they opened (demand above the
  contribution: ``capacity_exhausted``) are counted as capacity-limited, not checked;
* ``budget_balanced``: both mechanisms balance the budget in expectation (ex ante), not
  for every type profile (the posted fee's Q and fees are fixed, so few included nodes
  mean a deficit). The stated tolerance: the realised surplus (payments or contributions
  owed minus cost; per location in kind, pooled in money) must not lie in the lower
  0.1% tail of the surplus the same mechanism yields over 2000 type profiles drawn from
  the priors (the report gives that tail probability and the distribution's mean).
  Posted-fee epochs in which some node did not take part (excluded as a free rider,
  crashed, silent) are reported but not checked: the posted terms assume every node of
  the spec takes part, so the missing contributions are a deficit the mechanism never
  planned for (``balanced: null``);
* ``free_riders_excluded``: every node detected free-riding in epoch e (for any reason,
  ``unreachable`` included) is outside the allocation of epoch e + 1;
* ``unreachable_detected``: the coordinator's probes (run by the driver through
  ``POST /v1/admin/probe`` after the audit reports) match the faults: every host that
  was crashed or silent at that moment and owed something in epoch e is detected in e
  with reason ``unreachable`` (so it is out of e + 1 by the check above), and no host
  that was running failed every probe. Epochs whose cut-off was not played are skipped.

Realised welfare is Σ over included nodes of θ_i Σ_l W[home_i, l] u_l(Q_l) − Σ_l
c_l(n_l, Q_l) with the true θ: what the allocation planned, comparable with the
mechanism's expectation. "Delivered" replaces Q_l by Q_l · min(1, rate_l / f_l), the size
the included roamers actually got, and sums only over the included nodes that held a
credential: a node on probation (coordinator README "Probation") owes its contribution
but is not served, and the benefit the allocation planned for it is reported apart
(``welfare_probation``), so realised − delivered shows what probation and undelivered
service cost. The expected welfare is the mechanism's own
(ex ante, over the priors) figure from the allocation.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from protocol import from_micro

from . import checks
from .checks import Verdict
from .records import EpochRecord, Options, RunRecord, digest
from .scenario import Scenario, population, resolve_faults, roaming_script
from .schema import validate_report

#: Confidence of the interval plotted and tabulated for a service rate.
CI_REPORTED = 0.95
#: Confidence of the interval the service check judges by: 99.9% rather than 95% because
#: a run checks dozens of location-epochs, so 95% would fail honest runs routinely.
CI_CHECKED = 0.999
MIN_ATTEMPTS_CHECKED = 20


def wilson(successes: int, n: int, confidence: float = CI_REPORTED) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion (``successes`` of ``n``), or None
    when there was no trial."""
    if n <= 0:
        return None
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation between order statistics), None if empty."""
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else None


def latency(xs: Sequence[float]) -> dict[str, Any]:
    p50, p99 = percentile(xs, 50), percentile(xs, 99)
    return {"n": len(xs), "p50": None if p50 is None else round(p50, 3),
            "p99": None if p99 is None else round(p99, 3)}


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def _counts(reasons: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(reasons).items()))


#: One colour per access outcome, the same in every plot and on the dashboard: what a
#: reader learns in one figure holds in the next. Outcomes not listed take a colour from
#: REASON_SPARE chosen by a hash of their name (stable across runs).
REASON_COLOURS = {
    "granted": "#2ca02c", "no_coverage": "#c7c7c7", "capacity_exhausted": "#ff7f0e",
    "not_included": "#d62728", "unknown_key": "#9467bd", "revoked": "#8c564b",
    "timeout": "#7f7f7f", "unreachable": "#17becf", "not_running": "#e0e0e0",
    "stale_epoch": "#bcbd22", "future_epoch": "#dbdb8d", "expired": "#ff9896",
    "bad_proof": "#e377c2", "replay": "#f7b6d2", "malformed": "#393b79",
}
REASON_SPARE = ("#1f77b4", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94",
                "#9edae5", "#637939", "#8c6d31", "#843c39")


def reason_colour(reason: str) -> str:
    """The colour of an access outcome (``granted`` or a refusal's reason code)."""
    if reason in REASON_COLOURS:
        return REASON_COLOURS[reason]
    return REASON_SPARE[int(hashlib.sha256(reason.encode()).hexdigest(), 16)
                        % len(REASON_SPARE)]


BUDGET_DRAWS = 2000
BUDGET_TAIL = 0.001


class ReportContext:
    """What every epoch's figures are computed against: the scenario's market and plans,
    and the mechanism's outcomes over type profiles (drawn once per size, cached)."""

    def __init__(self, scenario: Scenario, seed: int, epochs: int | None = None) -> None:
        self.scenario = scenario
        self.seed = seed
        self.market = scenario.market()
        self.plans = {p.name: p for p in population(scenario, seed, epochs)}
        self._mc: dict[tuple[str, tuple[int, ...]], tuple[Any, Any]] = {}

    def profiles(self, mechanism: str, sizes: tuple[int, ...]) -> tuple[Any, Any]:
        """The mechanism's ex-post budget surplus and welfare over BUDGET_DRAWS type
        profiles drawn from the priors, for ``sizes`` agents per location: (surplus array
        of shape (draws, L) in kind or (draws, 1) in money, welfare array (draws,))."""
        key = (mechanism, sizes)
        if key not in self._mc:
            from coordinator.mechanism import solve
            from coordinator.mechanism.audit import realised_welfare

            from .scenario import _rng

            present = [l for l, k in enumerate(sizes) if k > 0]
            m = self.market
            sub = m.replace(locations=tuple(m.locations[l] for l in present),
                            weights=m.weights[np.ix_(present, present)]
                            ).with_sizes([sizes[l] for l in present])
            mech = solve(sub, mechanism)
            rng = _rng(self.seed, "budget", mechanism, *sizes)
            surplus = np.zeros((BUDGET_DRAWS, len(sizes) if m.payment == "in_kind" else 1))
            welfare = np.zeros(BUDGET_DRAWS)
            for k in range(BUDGET_DRAWS):
                t = sub.sample_types(rng)
                a = mech.allocate(t)
                s = a.budget_surplus()
                if m.payment == "in_kind":
                    surplus[k, present] = s
                else:
                    surplus[k, 0] = float(s.sum())
                welfare[k] = realised_welfare(sub, t, a)
            self._mc[key] = (surplus, welfare)
        return self._mc[key]


def epoch_report(ctx: ReportContext, run: RunRecord, rec: EpochRecord) -> dict[str, Any]:
    sc, plans, market = ctx.scenario, ctx.plans, ctx.market
    L = len(sc.locations)
    # An exclusion lasts excluded_epoch … excluded_until (graded, coordinator/penalty.py).
    excluded_now = {x["node"] for x in run.exclusions
                    if x["excluded_epoch"] <= rec.epoch <= x.get("excluded_until",
                                                                 x["excluded_epoch"])}
    participants = [n for n in rec.declared if n not in excluded_now]
    included = set(rec.included)
    on_probation = set(rec.probation)
    q = [from_micro(x) for x in rec.q] if rec.q else [0.0] * L
    # The sizes the mechanism was solved for: posted-fee terms are posted (binding) from
    # the spec's n; the optimal mechanism is solved for the participants at close.
    if rec.mechanism == "posted_fee":
        sizes = tuple(loc.nodes for loc in sc.locations)
    else:
        sizes = tuple(sum(1 for n in participants if plans[n].location == l) for l in range(L))
    locs: list[dict[str, Any]] = []
    total_cost = total_paid = 0.0
    rates: list[float | None] = []
    for l, loc in enumerate(sc.locations):
        mine = [a for a in rec.attempts if a.location == l and a.reason != "not_running"]
        inc = [a for a in mine if a.included]
        exc = [a for a in mine if not a.included and not a.probation]
        prob = [a for a in mine if a.probation]
        g_inc = sum(a.reason == "granted" for a in inc)
        g_exc = sum(a.reason == "granted" for a in exc)
        f = min(1.0, q[l] / loc.area)
        rate = g_inc / len(inc) if inc else None
        rates.append(rate)
        ci = wilson(g_inc, len(inc))
        hosts = sorted((n for n in included if plans[n].location == l),
                       key=lambda n: plans[n].index)
        owed = {n: rec.owed.get(n, 0) for n in hosts}
        total_owed = sum(owed.values())
        delivering = 0.0
        opened = used = 0
        for n in hosts:
            st = rec.hosts.get(n)
            op = int(st.get("opened", 0)) if st else 0
            opened += op
            used += int(st.get("granted_total", 0)) if st else 0
            ok = st is not None and op > 0 and (sc.payment == "money" or op >= owed[n])
            weight = owed[n] / total_owed if total_owed > 0 else 1 / len(hosts)
            delivering += weight if ok else 0.0
        n_l = sizes[l]
        cost = float(market.locations[l].cost(n_l, q[l])) if n_l > 0 and q[l] > 0 else 0.0
        # Restitution of earlier free riding is no payment of this epoch's mechanism: the
        # budget judges the contributions alone and the debts charged are listed apart.
        restitution = from_micro(sum(rec.debts.get(n, 0) for n in hosts))
        paid = from_micro(total_owed) - restitution
        total_cost += cost
        total_paid += paid
        lat = [a.latency_ms for a in mine if a.latency_ms is not None]
        locs.append({
            "name": loc.name,
            "nodes": sum(1 for p in plans.values() if p.location == l),
            "declared": sum(1 for n in rec.declared if plans[n].location == l),
            "included": len(hosts),
            "Q_planned": _r(q[l]),
            "coverage_planned": _r(f),
            "service_rate_included": _r(rate),
            "service_rate_ci95": None if ci is None else [_r(ci[0]), _r(ci[1])],
            "service_rate_expected_delivered": _r(f * delivering),
            "attempts_included": len(inc),
            "grants_included": g_inc,
            "refusals_included": _counts(a.reason for a in inc if a.reason != "granted"),
            "attempts_excluded": len(exc),
            "grants_excluded": g_exc,
            "refusals_excluded": _counts(a.reason for a in exc if a.reason != "granted"),
            "probation": sum(1 for n in hosts if n in on_probation),
            "attempts_probation": len(prob),
            "grants_probation": sum(a.reason == "granted" for a in prob),
            "refusals_probation": _counts(a.reason for a in prob if a.reason != "granted"),
            "contributions_owed": _r(paid),
            "contributions_opened": _r(from_micro(opened)),
            "contributions_used": _r(from_micro(used)),
            "hosts_delivering_share": _r(delivering),
            "cost": _r(cost),
            "payments": _r(paid),
            "restitution_charged": _r(restitution),
            "budget_surplus": _r(paid - cost),
            "latency_ms": latency(lat),
        })
    # Welfare: true types of included nodes, planned and delivered sizes.
    W = market.weights
    q_del = []
    for l, loc in enumerate(sc.locations):
        f = min(1.0, q[l] / loc.area)
        rate = rates[l]
        q_del.append(q[l] if rate is None or f <= 0 else q[l] * min(1.0, rate / f))

    def benefit(sizes: list[float], nodes: Iterable[str]) -> float:
        u = [float(market.locations[l].utility(max(0.0, sizes[l]))) for l in range(L)]
        return float(sum(from_micro(plans[n].theta_at(rec.epoch))
                         * sum(W[plans[n].location, l] * u[l] for l in range(L))
                         for n in nodes))

    def welfare(sizes: list[float], nodes: Iterable[str] = included) -> float:
        return benefit(sizes, nodes) - total_cost

    tol = (len(included) + 1) * 1e-6  # contributions are rounded up to micro-units
    observed = ([loc_["budget_surplus"] or 0.0 for loc_ in locs] if sc.payment == "in_kind"
                else [total_paid - total_cost])
    tails: list[float | None] = [None] * len(observed)
    means: list[float | None] = [None] * len(observed)
    w_sd: float | None = None
    w_mc: float | None = None
    if any(sizes):
        sur, wel = ctx.profiles(rec.mechanism, sizes)
        w_sd = float(wel.std())
        w_mc = float(wel.mean())
        for j, obs in enumerate(observed):
            col = sur[:, j]
            # add-one estimate of P(surplus <= observed) under the priors
            tails[j] = (float((col <= obs + tol).sum()) + 1) / (len(col) + 1)
            means[j] = float(col.mean())
    if sc.payment == "in_kind":
        for loc_, tail, mu in zip(locs, tails, means, strict=True):
            loc_["budget_surplus_expected"] = _r(mu)
            loc_["budget_tail_probability"] = _r(tail)
    balanced: bool | None = all(t is None or t >= BUDGET_TAIL for t in tails)
    full = all(sum(1 for n in participants if plans[n].location == l) == loc.nodes
               for l, loc in enumerate(sc.locations))
    if rec.mechanism == "posted_fee" and not full:
        # The posted terms (Q*, fees) were set for every node of the spec taking part;
        # with free riders excluded or nodes down, the deficit is not the mechanism's.
        balanced = None
    lat_all = [a.latency_ms for a in rec.attempts if a.latency_ms is not None]
    return {
        "index": rec.index,
        "run": rec.run,
        "mechanism": rec.mechanism,
        "epoch": rec.epoch,
        "declarations": rec.declarations,
        "participants": len(participants),
        "included": len(rec.included),
        "status": rec.status,
        "locations": locs,
        "budget": {
            "payment": sc.payment,
            "rule": "balanced in expectation; tolerance: P(surplus <= observed) under the "
                    "priors (the mechanism's own ex-post surplus over 2000 type profiles; per "
                    "location in kind, pooled in money) is at least 0.001",
            "tail_probability": [_r(x) for x in tails],
            "surplus_expected": [_r(x) for x in means],
            "cost": _r(total_cost),
            "payments": _r(total_paid),
            "surplus": _r(total_paid - total_cost),
            "balanced": balanced,
        },
        "welfare_expected": _r(from_micro(rec.expected_welfare)),
        "welfare_sd": _r(w_sd),
        "welfare_realised": _r(welfare(q)),
        # Delivered: only the roamers that could be served (nodes on probation hold no
        # credential); what the allocation planned for those is welfare_probation.
        "welfare_delivered": _r(welfare(q_del, included - on_probation)),
        "welfare_probation": _r(benefit(q, on_probation)),
        "probation_nodes": sorted(on_probation),
        "welfare_profiles_mean": _r(w_mc),
        "welfare_z": _r(_z(welfare(q), from_micro(rec.expected_welfare), w_sd)),
        "excluded_at_close": rec.newly_excluded,
        "excluded_nodes": sorted(excluded_now),
        "free_riders_detected": sorted(
            x["node"] for x in run.exclusions if x["detected_epoch"] == rec.epoch),
        "commitments": {"expected": rec.expected_commitments, "received": rec.commitments},
        "evidence_reported": rec.evidence_sent,
        "probes_unanswered": rec.unanswered,
        "shopping": {
            "requests": len(rec.shopping),
            "granted": sum(a.reason == "granted" for a in rec.shopping),
            "unanswered": sum(a.reason in ("unreachable", "timeout") for a in rec.shopping)},
        "down_at_probe": rec.down_at_probe,
        "latency_ms": latency(lat_all),
        "faults": rec.faults,
        "warnings": rec.warnings,
        "durations_s": {k: round(v, 3) for k, v in rec.durations.items()},
    }


def build_report(scenario: Scenario, options: Options, runs: list[RunRecord], *,
                 wall_s: float, interrupted: bool = False) -> dict[str, Any]:
    """The report of ``runs`` as report.json holds it: a :class:`.schema.Report`, validated
    (ReportError if the code built something else), as plain JSON values."""
    n_epochs = options.epochs or scenario.epochs
    ctx = ReportContext(scenario, options.seed, n_epochs)
    epochs: list[dict[str, Any]] = []
    for run in runs:
        for rec in run.epochs:
            if not rec.cutoff:
                epochs.append(epoch_report(ctx, run, rec))
    grants_excluded = sum(loc["grants_excluded"] + loc["grants_probation"]
                          for e in epochs for loc in e["locations"])
    detections = [
        {"node": x["node"], "epoch": x["detected_epoch"], "excluded_epoch": x["excluded_epoch"],
         "reason": x["reason"], "mechanism": run.mechanism}
        for run in runs for x in run.exclusions]
    verdict = Verdict(checks=(
        checks.excluded_never_granted(epochs),
        checks.service_consistent(
            epochs, min_attempts=MIN_ATTEMPTS_CHECKED,
            interval=lambda k, n: wilson(k, n, CI_CHECKED) or (0.0, 1.0)),
        checks.budget_balanced(epochs),
        checks.free_riders_caught(runs, ctx.plans),
        checks.free_riders_excluded(runs),
        checks.honest_never_penalised(runs, ctx.plans),
        checks.unreachable_detected(runs),
    ), about=scenario.about, interrupted=interrupted)
    lat_all: list[float] = [a.latency_ms for run in runs for r in run.epochs for a in r.attempts
                            if a.latency_ms is not None]
    by_mech: dict[str, Any] = {}
    for run in runs:
        es = [e for e in epochs if e["run"] == run.run]
        sds = [e["welfare_sd"] for e in es if e["welfare_sd"] is not None]
        # The sd of one epoch's welfare over type profiles (root mean square over the
        # epochs, whose mechanisms may be solved for different sizes).
        sd = math.sqrt(sum(x * x for x in sds) / len(sds)) if sds else None
        # The sd of the mean over the epochs. Types drawn once are replayed every epoch:
        # the epochs' mean is over one type profile and spreads as one epoch does. Types
        # redrawn every epoch make the epochs independent profiles: the sd of their mean
        # is sqrt(Σ sd_e²) / E.
        redraw = scenario.types == "redraw"
        profiles = len(es) if redraw else min(1, len(es))
        sd_mean = (None if sd is None else
                   math.sqrt(sum(x * x for x in sds)) / len(sds) if redraw else sd)
        by_mech[run.mechanism] = {
            "epochs": len(es),
            "welfare_expected_mean": _r(_mean([e["welfare_expected"] for e in es])),
            "welfare_realised_mean": _r(_mean([e["welfare_realised"] for e in es])),
            "welfare_delivered_mean": _r(_mean([e["welfare_delivered"] for e in es])),
            "welfare_sd": _r(sd),
            "type_profiles": profiles,
            "welfare_sd_of_mean": _r(sd_mean),
            "welfare_z": _r(_z(_mean([e["welfare_realised"] for e in es]),
                               _mean([e["welfare_expected"] for e in es]), sd_mean)),
            "cutoff_epoch": next((r.epoch for r in run.epochs if r.cutoff), None),
            "included_mean": _r(_mean([e["included"] for e in es])),
            "budget_surplus_mean": _r(_mean([e["budget"]["surplus"] for e in es])),
            "startup_s": round(run.startup_s, 3),
            "wall_s": round(run.wall_s, 3),
            "coordinator_restarts": run.coordinator_restarts,
        }
    plans = list(ctx.plans.values())
    script = roaming_script(scenario, plans, options.seed, n_epochs)
    repro = {
        "declarations": digest([[r.run, r.epoch, r.declared] for run in runs for r in run.epochs]),
        "allocations": digest([[r.run, r.epoch, r.q, r.included, r.owed]
                               for run in runs for r in run.epochs]),
        "roaming_script": digest([[(a.roamer, a.location, a.trip, a.u, a.v) for a in ep]
                                  for ep in script]),
        # (per-epoch types only when redrawn, so fixed-type digests stay as they were)
        "nodes": digest([(p.name, p.theta, p.strategy, p.seed.hex(), *p.thetas[1:])
                         for p in plans]),
    }
    summary = {
        "grants_to_excluded": grants_excluded,
        "free_riders_detected": detections,
        "free_riders": {
            "nodes": sorted({d["node"] for d in detections}),
            "offences": len(detections),
            "by_reason": _counts(d["reason"] for d in detections),
        },
        "attempts": sum(loc["attempts_included"] + loc["attempts_excluded"]
                        + loc["attempts_probation"] for e in epochs for loc in e["locations"]),
        "grants": sum(loc["grants_included"] + loc["grants_excluded"] + loc["grants_probation"]
                      for e in epochs for loc in e["locations"]),
        "latency_ms": latency(lat_all),
        "by_mechanism": by_mech,
        "checks": [c.as_dict() for c in verdict.checks],
        "checks_about": list(verdict.about),
        "checks_missing": list(verdict.missing),
        "ok": verdict.ok,
        "verdict": verdict.summary(),
    }
    # Validated against the typed report (schema.py) before anyone reads or writes it.
    return validate_report({
        "scenario": {
            "name": scenario.name, "path": scenario.path, "description": scenario.description,
            "kind": scenario.kind, "payment": scenario.payment,
            "mechanisms": list(scenario.mechanisms), "epochs": n_epochs,
            "types": scenario.types,
            "nodes": scenario.n_nodes,
            "locations": [{"name": loc.name, "nodes": loc.nodes, "area": loc.area}
                          for loc in scenario.locations],
            "strategies": dict(sorted(Counter(p.strategy for p in plans).items())),
            "faults": [f"{f.kind} at epoch {f.epoch} ({f.when})"
                       + (f" of {', '.join(f.nodes)}" if f.nodes else "")
                       + (f" until {f.until}" if f.until is not None else "")
                       for f in resolve_faults(scenario, options.seed)],
        },
        "seed": options.seed,
        "mode": options.mode,
        "interrupted": interrupted,
        "wall_s": round(wall_s, 3),
        "startup_s": [round(run.startup_s, 3) for run in runs],
        "epochs": epochs,
        "summary": summary,
        "reproducibility": repro,
        "unit": "quantities in units of the resource kind (money units for money payments); "
                "latency in milliseconds",
    }).model_dump(mode="json")


def _z(realised: float | None, expected: float | None, sd: float | None) -> float | None:
    """(realised − expected) / sd: how unusual the realisation is under the priors."""
    if realised is None or expected is None or sd is None or sd <= 0:
        return None
    return (realised - expected) / sd


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


# --- writing -----------------------------------------------------------------------------


#: The plots write_plots makes (a run without plots removes an earlier run's).
PLOTS = ("service.png", "access.png", "welfare_budget.png")


def write_report(report: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """report.json, report.md and (``plots``) the PNG plots into ``out``; the paths
    written. Plots of an earlier run in ``out`` are removed first, so the directory
    never shows plots of another run beside this report."""
    out.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:
        (out / name).unlink(missing_ok=True)
    written = [out / "report.json", out / "report.md"]
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    pngs = write_plots(report, out) if plots and report["epochs"] else []
    report_files = [p.name for p in pngs]
    (out / "report.md").write_text(markdown(report, report_files))
    return written + pngs


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _reasons(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "–"


def markdown(report: dict[str, Any], pngs: list[str]) -> str:
    sc, s = report["scenario"], report["summary"]
    lines = [
        f"# Testbed report: {sc['name']}",
        "",
        sc["description"] or "",
        "",
        f"- scenario `{sc['path']}`, seed {report['seed']}, nodes as `{report['mode']}`; "
        f"{sc['nodes']} nodes in {len(sc['locations'])} locations, kind `{sc['kind']}`, "
        f"payment `{sc['payment']}`, mechanism(s) {', '.join(sc['mechanisms'])}, "
        f"{sc['epochs']} epochs, types "
        + ("redrawn every epoch" if sc.get("types") == "redraw" else "drawn once"),
        f"- strategies: {', '.join(f'{k} {v}' for k, v in sc['strategies'].items())}",
        f"- faults: {'; '.join(sc['faults']) or 'none'}",
        f"- wall time {report['wall_s']:.1f} s (start-up "
        f"{', '.join(f'{x:.1f}' for x in report['startup_s'])} s)"
        + ("; **interrupted**" if report["interrupted"] else ""),
        "",
        "## Checks",
        "",
        f"**{s['verdict']}**; the scenario is about: {', '.join(s['checks_about'])}.",
        "",
    ]
    for c in s["checks"]:
        lines.append(f"- {c['name']} ({c['title']}): {checks.verdict_text(c)}")
        lines += [f"  - {f}" for f in c["failures"]]
    fr = s["free_riders"]
    lines += ["", "## Free riders detected", ""]
    if s["free_riders_detected"]:
        lines += [f"{len(fr['nodes'])} nodes caught in {fr['offences']} offences ("
                  + ", ".join(f"{v} {k}" for k, v in fr["by_reason"].items())
                  + "); an offence is one node caught in one epoch.", ""]
        lines += ["| node | detected in epoch | excluded from | reason | mechanism |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {d['node']} | {d['epoch']} | {d['excluded_epoch']} | {d['reason']} | "
                  f"{d['mechanism']} |" for d in s["free_riders_detected"]]
    else:
        lines.append("none")
    lat = s["latency_ms"]
    lines += ["", f"Access-decision latency (POST of the access request, {lat['n']} requests): "
              f"p50 {_fmt(lat['p50'])} ms, p99 {_fmt(lat['p99'])} ms.", ""]
    lines += ["## Per mechanism", "",
              "Welfare in the spec's units, means over the epochs. sd: of one epoch's "
              "welfare over type profiles drawn from the priors; sd of mean: of the mean "
              "over the epochs (types "
              + ("redrawn every epoch: the epochs are independent profiles, sd / √epochs"
                 if sc.get("types") == "redraw" else
                 "drawn once and replayed: one profile, so the sd itself")
              + "); z = (realised − expected) / sd of mean says how far this run's types "
              "lie from the mean (|z| < 2: within noise).", "",
              "| mechanism | epochs | cut-off epoch | included (mean) | expected welfare | sd | "
              "profiles | sd of mean | realised | z | delivered | budget surplus |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m, b in s["by_mechanism"].items():
        lines.append(f"| {m} | {b['epochs']} | {_fmt(b['cutoff_epoch'])} | "
                     f"{_fmt(b['included_mean'], 1)} | {_fmt(b['welfare_expected_mean'])} | "
                     f"{_fmt(b['welfare_sd'])} | {b['type_profiles']} | "
                     f"{_fmt(b['welfare_sd_of_mean'])} | {_fmt(b['welfare_realised_mean'])} | "
                     f"{_fmt(b['welfare_z'], 2)} | {_fmt(b['welfare_delivered_mean'])} | "
                     f"{_fmt(b['budget_surplus_mean'])} |")
    lines += ["", "The cut-off epoch is opened and closed after the last played epoch and "
              "not played: its close ends the last epoch's audit, so free riders of that "
              "epoch are found too.", ""]
    lines += ["", "## Epochs", "",
              "Q in the spec's units; coverage f = min(1, Q/area); service = grants/attempts "
              "of included roamers [95% CI]; contributions in units of the kind (money: money "
              "units); latency p50/p99 in ms.", ""]
    for e in report["epochs"]:
        b = e["budget"]
        lines += [
            f"### {e['mechanism']}, epoch {e['epoch']}",
            "",
            f"{e['included']} of {e['declarations']} declarants included; welfare expected "
            f"{_fmt(e['welfare_expected'])} (sd over type profiles {_fmt(e['welfare_sd'])}), "
            f"realised {_fmt(e['welfare_realised'])} (z {_fmt(e['welfare_z'], 2)}), delivered "
            f"{_fmt(e['welfare_delivered'])}; budget: payments {_fmt(b['payments'])} vs cost "
            f"{_fmt(b['cost'])} (surplus {_fmt(b['surplus'])}, within tolerance: "
            f"{_fmt(b['balanced'])}); commitments "
            f"{e['commitments']['received']}/{e['commitments']['expected']}; latency p50 "
            f"{_fmt(e['latency_ms']['p50'])} / p99 {_fmt(e['latency_ms']['p99'])} ms.",
        ]
        if e["excluded_nodes"]:
            lines.append(f"Excluded as free riders: {', '.join(e['excluded_nodes'])}.")
        if e["free_riders_detected"]:
            lines.append(f"Free riding detected here (excluded next epoch): "
                         f"{', '.join(e['free_riders_detected'])}.")
        if e["faults"]:
            lines.append(f"Faults: {'; '.join(e['faults'])}.")
        if e.get("probes_unanswered"):
            lines.append(f"Answered no coordinator probe: {', '.join(e['probes_unanswered'])}.")
        if e["warnings"]:
            lines.append(f"Warnings: {'; '.join(e['warnings'])}.")
        lines += ["", "| location | incl. | Q | coverage | service incl. [95% CI] | attempts incl. "
                  "| refusals incl. | attempts / grants excl. | refusals excl. | owed | opened | "
                  "used | surplus | latency |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
                  "| --- |"]
        for loc in e["locations"]:
            ci = loc["service_rate_ci95"]
            cis = "–" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
            lines.append(
                f"| {loc['name']} | {loc['included']}/{loc['nodes']} | {_fmt(loc['Q_planned'])} "
                f"| {_fmt(loc['coverage_planned'])} | {_fmt(loc['service_rate_included'])} {cis} "
                f"| {loc['attempts_included']} | {_reasons(loc['refusals_included'])} | "
                f"{loc['attempts_excluded']} / {loc['grants_excluded']} | "
                f"{_reasons(loc['refusals_excluded'])} | {_fmt(loc['contributions_owed'])} | "
                f"{_fmt(loc['contributions_opened'])} | {_fmt(loc['contributions_used'])} | "
                f"{_fmt(loc['budget_surplus'])} | {_fmt(loc['latency_ms']['p50'], 1)}/"
                f"{_fmt(loc['latency_ms']['p99'], 1)} |")
        lines.append("")
    if pngs:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    rp = report["reproducibility"]
    lines += ["## Reproducibility", "",
              "SHA-256 of what the seed decides (equal on every run of this scenario and seed):",
              ""] + [f"- {k}: `{v}`" for k, v in rp.items()] + [""]
    return "\n".join(lines)


#: Mechanism colours: dark, and none of REASON_COLOURS / REASON_SPARE, so a line's colour
#: never reads as an access outcome of the bar chart.
MECHANISM_COLOURS = {"posted_fee": "#08519c", "optimal": "#252525"}
#: The legends show line styles in this neutral grey; the colour is the mechanism, named
#: in its colour under its epochs.
_KEY = "#777777"


def _legend(ax: Any, entries: Sequence[tuple[str, dict[str, Any]]], **kw: Any) -> None:
    """A legend of line styles: (label, Line2D or Patch keywords; ``patch`` for a band)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=_KEY, label=label, **{k: v for k, v in style.items() if k != "patch"})
               if style.get("patch") else Line2D([], [], color=_KEY, label=label, **style)
               for label, style in entries]
    ax.legend(handles=handles, fontsize=6, **kw)


def _positions(epochs: Sequence[dict[str, Any]]) -> tuple[list[float], list[str]]:
    """x positions of the epochs: one per epoch, a gap between mechanisms (so no line
    joins two mechanisms), and the epochs' numbers as tick labels."""
    xs: list[float] = []
    labels: list[str] = []
    x = 0.0
    for k, e in enumerate(epochs):
        if k and e["run"] != epochs[k - 1]["run"]:
            x += 1.0
        xs.append(x)
        labels.append(str(e["epoch"]))
        x += 1.0
    return xs, labels


def _runs(epochs: Sequence[dict[str, Any]], xs: Sequence[float]
          ) -> list[tuple[str, list[float], list[dict[str, Any]]]]:
    """(mechanism, x positions, epochs) of each run: each is drawn as its own line."""
    out: list[tuple[str, list[float], list[dict[str, Any]]]] = []
    for x, e in zip(xs, epochs, strict=True):
        if not out or out[-1][2][0]["run"] != e["run"]:
            out.append((e["mechanism"], [], []))
        out[-1][1].append(x)
        out[-1][2].append(e)
    return out


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """service.png, access.png and welfare_budget.png: labelled axes with units, one
    colour per access outcome in every plot (:func:`reason_colour`), one line per
    mechanism (never joined across mechanisms), bands for what is expected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = report["epochs"]
    names = [loc["name"] for loc in report["scenario"]["locations"]]
    xs, labels = _positions(epochs)
    runs = _runs(epochs, xs)
    written: list[Path] = []

    def ticks(ax: Any) -> None:
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
        for mech, rx, _ in runs:  # name each mechanism's group of epochs under its ticks
            ax.annotate(mech, xy=((rx[0] + rx[-1]) / 2, 0), xycoords=("data", "axes fraction"),
                        xytext=(0, -30), textcoords="offset points", ha="center", va="top",
                        fontsize=8, color=MECHANISM_COLOURS.get(mech, "#444444"))

    # 1. Planned coverage against the realised service of included roamers.
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False,
                             sharey=True)
    for l, name in enumerate(names):
        ax = axes[0][l]
        for mech, rx, es in runs:
            colour = MECHANISM_COLOURS.get(mech, "#444444")
            f = [e["locations"][l]["coverage_planned"] for e in es]
            n = [e["locations"][l]["attempts_included"] for e in es]
            lo = [max(0.0, p - 1.96 * math.sqrt(p * (1 - p) / k)) if k else p
                  for p, k in zip(f, n, strict=True)]
            hi = [min(1.0, p + 1.96 * math.sqrt(p * (1 - p) / k)) if k else p
                  for p, k in zip(f, n, strict=True)]
            ax.plot(rx, f, "--", color=colour)
            ax.fill_between(rx, lo, hi, color=colour, alpha=0.15, linewidth=0)
            for x, e in zip(rx, es, strict=True):
                loc = e["locations"][l]
                r, ci = loc["service_rate_included"], loc["service_rate_ci95"]
                if r is None or ci is None:
                    continue
                ax.errorbar([x], [r], yerr=[[r - ci[0]], [ci[1] - r]], fmt="o", color=colour,
                            capsize=3)
        ax.set_title(f"location {name}")
        ticks(ax)
        ax.set_ylim(-0.02, 1.05)
        if l == 0:
            ax.set_ylabel("service rate of included roamers\n(grants / attempts, fraction)")
            _legend(ax, [("planned f = min(1, Q/area)", {"linestyle": "--"}),
                         ("95% range of the rate if served at f", {"patch": True, "alpha": 0.3}),
                         ("realised rate (95% CI)", {"marker": "o", "linestyle": ""})],
                    loc="upper left")
    fig.tight_layout()
    written.append(_save(fig, out / "service.png", plt))

    # 2. Access outcomes by reason, included vs excluded roamers: one colour per reason.
    per: dict[str, list[Counter[str]]] = {"included": [], "excluded": []}
    for who, counters in per.items():
        for e in epochs:
            c: Counter[str] = Counter()
            for loc in e["locations"]:
                c["granted"] += loc[f"grants_{who}"]
                c.update(loc[f"refusals_{who}"])
            counters.append(c)
    reasons = sorted({r for cs in per.values() for c in cs for r, v in c.items() if v},
                     key=lambda r: (r != "granted", r))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), squeeze=False, sharey=True)
    for k, (who, counters) in enumerate(per.items()):
        ax = axes[0][k]
        bottom = [0] * len(epochs)
        for r in reasons:
            vals = [c.get(r, 0) for c in counters]
            ax.bar(xs, vals, bottom=bottom, label=r, color=reason_colour(r), width=0.8)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title(f"access attempts of {who} roamers, by outcome")
        ticks(ax)
        if k == 0:
            ax.set_ylabel("access attempts (count)")
    if reasons:
        handles, names_ = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, names_, fontsize=7, loc="upper right", title="outcome")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    written.append(_save(fig, out / "access.png", plt))

    # 3. Welfare against its expectation (bands: ± 1 and ± 2 sd over type profiles; the
    # outer one is what the report calls "within noise", |z| < 2) and budget.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.0), squeeze=False)
    ax = axes[0][0]
    for mech, rx, es in runs:
        colour = MECHANISM_COLOURS.get(mech, "#444444")
        exp = [e["welfare_expected"] for e in es]
        sd = [e.get("welfare_sd") or 0.0 for e in es]
        ax.plot(rx, exp, "--", color=colour)
        for k, alpha in ((2, 0.08), (1, 0.16)):
            ax.fill_between(rx, [m - k * s_ for m, s_ in zip(exp, sd, strict=True)],
                            [m + k * s_ for m, s_ in zip(exp, sd, strict=True)],
                            color=colour, alpha=alpha, linewidth=0)
        ax.plot(rx, [e["welfare_realised"] for e in es], "o-", color=colour)
        ax.plot(rx, [e["welfare_delivered"] for e in es], "^:", color=colour)
    ax.set_title("social welfare")
    ax.set_ylabel("welfare (spec units)")
    ticks(ax)
    _legend(ax, [("expected (the mechanism's, ex ante)", {"linestyle": "--"}),
                 ("± 1 sd over type profiles", {"patch": True, "alpha": 0.35}),
                 ("± 2 sd: within noise (|z| < 2)", {"patch": True, "alpha": 0.15}),
                 ("realised (true types, planned Q)", {"marker": "o"}),
                 ("delivered (Q actually served)", {"marker": "^", "linestyle": ":"})],
            loc="best")
    ax = axes[0][1]
    for mech, rx, es in runs:
        colour = MECHANISM_COLOURS.get(mech, "#444444")
        ax.plot(rx, [e["budget"]["cost"] for e in es], "s--", color=colour)
        ax.plot(rx, [e["budget"]["payments"] for e in es], "o-", color=colour)
    ax.set_title("budget")
    unit = "money units" if report["scenario"]["payment"] == "money" else "resource units"
    ax.set_ylabel(f"cost and payments ({unit})")
    top = max([e["budget"]["cost"] or 0.0 for e in epochs]
              + [e["budget"]["payments"] or 0.0 for e in epochs] + [1e-9])
    ax.set_ylim(0, top * 1.45)  # from zero (a 2% gap looks like one), room for the legend
    ticks(ax)
    _legend(ax, [("cost Σ c_l(n_l, Q_l)", {"marker": "s", "linestyle": "--"}),
                 ("payments / contributions owed", {"marker": "o"})], loc="upper right")
    fig.tight_layout()
    written.append(_save(fig, out / "welfare_budget.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
