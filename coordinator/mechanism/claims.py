"""The source documents' claims, each beside what the engine computes (a table of rows).

Each :class:`Row` names a printed figure (or a claimed property), where it is printed,
the document's value, the engine's value, the tolerance it is judged by and whether
they agree. Nothing is copied: every ``computed`` value comes from a solver. This module
draws nothing (``scripts/reproduce.py`` prints and plots the rows).

Asymptotic claims (a formula "+ O(1)" or "+ o(1)") are checked twice: per n against
the formula with the remainder dropped (loose absolute tolerance, stated), and by
fitting a n² + b n + c + d/n + e/n² to the engine's values at n = 1000…16000 and
comparing coefficients (tight tolerance).

Every figure is judged under the convention it was computed in: the slides' equal-
contribution schemes count participants as X ~ Bin(n, p) (the prior count), so their
rows are judged with ``convention="slides"`` and the engine's Bayes-consistent value
(X = 1 + Bin(n − 1, p)) is shown beside them (:class:`Alternative`).

A row that disagrees says why (:data:`WHY`), and the reason is itself checked where it
can be: a typo row recomputes the corrected formula, an upper-bound row checks that the
engine is below the document and that the relaxation reproduces it, a convention row
shows the other convention agreeing. A disagreement whose reason does not check out is
``"unexplained"``: a possible engine bug.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import optimize

from . import bridge, grid
from . import equal_contribution as ec
from .market import market_from_dict, slides_market
from .optimal import evaluate, first_best, second_best
from .posted_fee import posted_fee
from .provision import provision_for

SLIDES = "slides (000)"
EC_SRC = f"{SLIDES} 'Simple Equal Contribution Schemes'"
NS = (2, 5, 10, 100, 1000)
"""Numbers of agents at which every per-n figure is checked."""
FIT_NS = (1000, 2000, 4000, 8000, 16000)
"""Numbers of agents whose exact values determine the second best's five expansion
coefficients."""
EC_FIT_NS = (250, 500, 1000, 2000, 4000)
"""The same for the equal-contribution schemes (slower per n; their remainder after
e/n² is O(1/n³) or exponentially small, far below the tolerance at n ≥ 250)."""

Record = dict[tuple[str, int], float]
"""Expected welfare (money units) by (mechanism label, n), filled as rows are computed
so that a caller can plot them without recomputing."""

ToleranceKind = Literal["relative", "absolute", "printed", "property"]
Why = Literal["", "typo", "upper bound", "convention", "weak inequality", "engine error",
              "unexplained"]
WHY: dict[str, str] = {
    "typo": "the document's number has a typo; the corrected reading agrees",
    "upper bound": "the document's formula is the value of a relaxation, an upper bound",
    "convention": "the figure holds under the other participant-count convention",
    "weak inequality": "the claimed strict inequality holds only with equality somewhere",
    "engine error": "the gap is within the engine's own error estimate for this result",
    "unexplained": "no reason found: a possible engine error",
}


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How a row is judged: ``kind`` and ``value`` (a number) and a short ``text``.

    relative: |doc − computed| ≤ value · max(|doc|, |computed|); absolute: ≤ value;
    printed: ≤ value, half a unit of the last printed digit; property: the claimed
    property holds (1) or not (0), exactly.
    """

    kind: ToleranceKind
    value: float
    text: str


def _relative(tol: float) -> Tolerance:
    return Tolerance("relative", tol, f"rel {tol:.0e}")


def _absolute(tol: float) -> Tolerance:
    return Tolerance("absolute", tol, f"abs {tol:.2g}")


PROPERTY = Tolerance("property", 0.0, "holds?")


def _within(doc: float, comp: float, tol: Tolerance) -> bool:
    if not (math.isfinite(doc) and math.isfinite(comp)):
        return False
    gap = abs(doc - comp)
    if tol.kind == "relative":
        return gap <= tol.value * max(abs(doc), abs(comp), 1e-300)
    return gap <= tol.value


@dataclass(frozen=True, slots=True)
class Alternative:
    """The same figure computed under another convention."""

    convention: str
    computed: float
    agrees: bool


@dataclass(frozen=True, slots=True)
class Row:
    """One claim. ``why`` is "" when it agrees, else a key of :data:`WHY`; ``note`` gives
    the evidence. ``convention`` is the participant-count convention of ``computed``
    (None where it does not apply)."""

    figure: str
    source: str
    document_value: float
    computed: float
    agrees: bool
    tolerance: Tolerance
    n: int | None = None
    why: Why = ""
    note: str = ""
    convention: str | None = None
    alternatives: tuple[Alternative, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: Python bools, ints and floats; a non-finite float becomes None."""
        def num(x: float) -> float | None:
            x = float(x)
            return x if math.isfinite(x) else None

        return {
            "figure": self.figure,
            "source": self.source,
            "n": None if self.n is None else int(self.n),
            "document_value": num(self.document_value),
            "computed": num(self.computed),
            "agrees": bool(self.agrees),
            "tolerance": {"kind": self.tolerance.kind, "value": num(self.tolerance.value),
                          "text": self.tolerance.text},
            "why": self.why,
            "why_meaning": WHY.get(self.why, ""),
            "note": self.note,
            "convention": self.convention,
            "alternatives": [{"convention": a.convention, "computed": num(a.computed),
                              "agrees": bool(a.agrees)} for a in self.alternatives],
        }


def _row(figure: str, source: str, doc: float, comp: float, tol: Tolerance, *,
         n: int | None = None, why: Why = "unexplained", explained: bool = True,
         note: str = "", convention: str | None = None,
         alternatives: tuple[Alternative, ...] = ()) -> Row:
    """A row; ``why`` applies only if it disagrees, and only if ``explained`` (the
    reason's own check) holds, else the disagreement is "unexplained"."""
    agrees = _within(doc, comp, tol)
    reason: Why = "" if agrees else (why if explained else "unexplained")
    return Row(figure, source, float(doc), float(comp), agrees, tol, n, reason, note,
               convention, alternatives)


def _printed(figure: str, source: str, doc: float, comp: float, digits: int) -> Row:
    """A number printed to ``digits`` decimals agrees if it is the rounded value."""
    half = 0.5 * 10.0 ** (-digits) * (1 + 1e-9)
    return _row(figure, source, doc, comp,
                Tolerance("printed", half, f"±{half:.1g} (print)"))


def _fit(ns: tuple[int, ...], f: Callable[[int], float]) -> np.ndarray:
    """Coefficients (a, b, c, d, e) of a n² + b n + c + d/n + e/n² through f at ns."""
    A = np.array([[n * n, n, 1.0, 1.0 / n, 1.0 / n**2] for n in ns])
    return np.linalg.solve(A, np.array([f(n) for n in ns]))


def relaxed_no_exclusion_welfare(n: int) -> float:
    """The no-exclusion value if Q(θ) ignored Q ≥ 0 (the slides' formula; evidence).

    λ is re-solved under the relaxation so that the comparison is like with like.
    """
    m = slides_market(n, exclusion=False)
    provs = [provision_for(loc, m) for loc in m.locations]

    def con(t: float) -> float:
        lam = t / (1 - t)
        return float(evaluate(m, np.array([lam]), exclusion=False, provisions=provs,
                              method="relaxed").constraints[0])

    t = optimize.brentq(con, 0.0, 1 - 1e-9, xtol=1e-14)
    lam = t / (1 - t)
    return evaluate(m, np.array([lam]), exclusion=False, provisions=provs,
                    method="relaxed").welfare


def no_exclusion_welfare(n: int) -> float:
    """Expected welfare of the optimal mechanism without exclusion, slides' example."""
    return second_best(slides_market(n), exclusion=False).result.welfare


def rows(*, include_fits: bool = True, progress: Callable[[str], None] | None = None,
         record: Record | None = None,
         no_exclusion: Callable[[int], float] = no_exclusion_welfare) -> Iterator[Row]:
    """Every claim of the documents, in document order. ``include_fits=False`` skips the
    expansion fits; ``record`` (if given) receives every mechanism's welfare at each n of
    :data:`NS`; ``no_exclusion`` gives :func:`no_exclusion_welfare` (the slowest figure:
    a caller may compute it elsewhere, in parallel)."""
    say = progress or (lambda _msg: None)
    rec: Record = {} if record is None else record
    sb_cache: dict[int, float] = {}
    for n in NS:
        say(f"slides' example, n = {n}")
        yield from _slides_rows(n, sb_cache, rec, no_exclusion)
        yield from _equal_rows(n, rec)
    if include_fits:
        say(f"fitting the second best's expansion at n = {FIT_NS[0]}..{FIT_NS[-1]}")
        yield from _second_best_fits(sb_cache)
        say(f"fitting the equal-contribution expansions at n = {EC_FIT_NS[0]}.."
            f"{EC_FIT_NS[-1]}")
        yield from _equal_fits()
    say("bridge")
    yield from _bridge_rows()
    say("grid computing")
    yield from _grid_rows()


SB_B = 7 / 384
"""The second best's n-coefficient as the engine's fit gives it (rows below check it)."""


def _slides_rows(n: int, sb_cache: dict[int, float], rec: Record,
                 no_exclusion: Callable[[int], float]) -> Iterator[Row]:
    src = f"{SLIDES} 'Numerical Example'"
    m = slides_market(n)
    fb = first_best(m).result.welfare
    yield _row("first-best welfare n²/36 + n/108", f"{SLIDES} 'Example'",
               n * n / 36 + n / 108, fb, _relative(1e-6), n=n)
    sb = second_best(m).result.welfare
    sb_cache[n] = sb
    lead = 3 * n * n / 128
    corrected = lead + SB_B * n - 1 / 162
    tol = _absolute(0.05)
    yield _row("second-best welfare 3n²/128 + 7n/348 − 1/162 + o(1)", src,
               lead + 7 * n / 348 - 1 / 162, sb, tol, n=n, why="typo",
               explained=_within(corrected, sb, tol),
               note=f"7/348 for 7/384: 3n²/128 + 7n/384 − 1/162 = {corrected:.6f}")
    tol = _absolute(0.5)
    yield _row("second-best welfare 3n²/128 + 7n/148 + O(1)", f"{SLIDES} 'Example'",
               lead + 7 * n / 148, sb, tol, n=n, why="typo",
               explained=_within(lead + SB_B * n, sb, tol),
               note=f"7/148 for 7/384: 3n²/128 + 7n/384 = {lead + SB_B * n:.6f}")
    ne = no_exclusion(n)
    rec["first best", n], rec["second best", n] = fb, sb
    rec["second best, no exclusion", n] = ne
    relaxed = relaxed_no_exclusion_welfare(n)
    printed = n * (np.sqrt(1 + 3 * n) - 1) / 27
    yield _row("second-best welfare without exclusion n(√(1+3n) − 1)/27",
               f"{SLIDES} 'What if exclusions are not allowed?'", printed, ne,
               _relative(1e-6), n=n, why="upper bound",
               explained=ne < printed and _within(printed, relaxed, _relative(1e-9)),
               note=f"the formula is the relaxation that ignores Q ≥ 0 (= {relaxed:.9g}, "
                    "next row); with Q ≥ 0 the optimum is lower")
    yield _row("relaxed no-exclusion value (Q allowed to follow a negative weight)",
               "evidence for the row above", printed, relaxed, _relative(1e-9), n=n)
    pf = posted_fee(m)
    rec["posted fee", n] = pf.result.welfare
    assert pf.result.Q is not None and pf.result.fees is not None
    yield _row("posted-fee welfare Φ*_n = 3n²/128", src, lead, pf.result.welfare,
               _relative(1e-9), n=n)
    yield _row("posted-fee size Q* = n²/64", src, n * n / 64, float(pf.result.Q[0]),
               _relative(1e-9), n=n)
    yield _row("posted fee φ* = n/48", src, n / 48, float(pf.result.fees[0]),
               _relative(1e-9), n=n)
    ratio = sb / pf.result.welfare
    fixed = 1 + SB_B / (3 / 128) / n
    tol = _absolute(0.05 / n)
    yield _row("Φ_n/Φ*_n = 1 + 0.858/n + o(1/n)", src, 1 + 0.858 / n, ratio, tol, n=n,
               why="typo", explained=abs(fixed - ratio) < abs(1 + 0.858 / n - ratio),
               note=f"0.858 = (7/348)/(3/128); with 7/384 the coefficient is 0.7778: "
                    f"1 + 0.7778/n = {fixed:.6f}"
                    + ("" if _within(fixed, ratio, tol) else
                       f", still {abs(fixed - ratio):.3g} off at n = {n} (the o(1/n) "
                       "remainder), but closer"))


def _economy(n: int, convention: ec.Convention) -> ec.Economy:
    loc = slides_market(n).locations[0]
    return ec.Economy(loc.dist, n, loc.utility, loc.cost, convention=convention)


_SCHEMES: dict[str, Callable[[ec.Economy], Any]] = {
    "post Q": ec.post_size_share_cost,
    "post φ": ec.post_fee_build_largest,
}


def _equal_rows(n: int, rec: Record) -> Iterator[Row]:
    """Per-n rows, judged under the slides' convention, the engine's beside them."""
    printed = {"post Q": (3 * n * n / 128 - n / 384, "3n²/128 − n/384 + O(1)"),
               "post φ": (3 * n * n / 128 + 7 * n / 1536, "3n²/128 + 7n/1536 + O(1)")}
    tol = _absolute(0.5)
    for scheme, fn in _SCHEMES.items():
        doc, formula = printed[scheme]
        slides = float(fn(_economy(n, "slides")).result.welfare)
        bayes = float(fn(_economy(n, "bayes")).result.welfare)
        rec[f"equal share, {scheme} (slides' count)", n] = slides
        rec[f"equal share, {scheme} (Bayes count)", n] = bayes
        yield _row(f"equal contribution, {scheme}: {formula}", EC_SRC, doc, slides, tol,
                   n=n, convention="slides",
                   alternatives=(Alternative("bayes", bayes, _within(doc, bayes, tol)),))
    w = ec.post_fee_and_size(_economy(n, "bayes")).result.welfare
    rec["equal share, post φ and Q", n] = w
    yield _row("equal contribution, post φ and Q: 3n²/128", EC_SRC, 3 * n * n / 128, w,
               _relative(1e-6), n=n, note="no X in its rule: the same in both conventions")


def _second_best_fits(sb_cache: dict[int, float]) -> Iterator[Row]:
    a, b, c, _, _ = _fit(FIT_NS, lambda n: sb_cache.get(n) or
                         second_best(slides_market(n)).result.welfare)
    src = f"{SLIDES} 'Numerical Example'"
    tol = _relative(1e-4)
    yield _row("second best: n² coefficient 3/128", src, 3 / 128, a, _relative(1e-6))
    yield _row("second best: n coefficient 7/348", src, 7 / 348, b, tol, why="typo",
               explained=_within(7 / 384, b, tol),
               note=f"the fit gives {b:.8f} = 7/384 = {7 / 384:.8f}: digits transposed")
    yield _row("second best: n coefficient 7/148", f"{SLIDES} 'Example'", 7 / 148, b, tol,
               why="typo", explained=_within(7 / 384, b, tol),
               note=f"the fit gives {b:.8f} = 7/384 (slide 'Example'; later slides 7/348)")
    yield _row("second best: n coefficient 7/384 (corrected reading)", "engine", 7 / 384, b,
               tol)
    yield _row("second best: constant −1/162", src, -1 / 162, c, _relative(1e-3))
    yield _row("Φ_n/Φ*_n − 1 ≈ 0.858/n: coefficient", src, 0.858, b / (3 / 128),
               _relative(1e-3), why="typo",
               explained=_within((7 / 384) / (3 / 128), b / (3 / 128), _relative(1e-3)),
               note="(7/348)/(3/128) = 0.858; (7/384)/(3/128) = 0.7778")


def _equal_fits() -> Iterator[Row]:
    def coefficient(scheme: str, convention: ec.Convention) -> float:
        fn = _SCHEMES[scheme]
        return float(_fit(EC_FIT_NS,
                          lambda n: float(fn(_economy(n, convention)).result.welfare))[1])

    tol = _relative(1e-3)
    for scheme, printed, text, bayes_value, bayes_text in (
        ("post Q", -1 / 384, "−1/384", 0.0, "0"),
        ("post φ", 7 / 1536, "7/1536", 9 / 1536, "9/1536"),
    ):
        slides = coefficient(scheme, "slides")
        bayes = coefficient(scheme, "bayes")
        yield _row(f"equal contribution, {scheme}: n coefficient {text}", EC_SRC, printed,
                   slides, tol, convention="slides",
                   alternatives=(Alternative("bayes", bayes, _within(printed, bayes, tol)),),
                   note=f"counting himself (Bayes) the coefficient is {bayes_text} "
                        f"(fit {bayes:.3g})")
        yield _row(f"equal contribution, {scheme}: n coefficient {bayes_text} when a "
                   "participant counts himself", "engine", bayes_value, bayes,
                   _absolute(1e-9) if bayes_value == 0.0 else tol, convention="bayes")


def _bridge_rows() -> Iterator[Row]:
    src = f"{SLIDES} 'Optimal mechanism design for the bridge'"
    fb = bridge.first_best()
    sb = bridge.second_best()
    yield _row("bridge first-best welfare 1/6", src, 1 / 6, fb.welfare, _relative(1e-9), n=2)
    yield _row("bridge second-best welfare 9/64", src, 9 / 64, sb.welfare, _relative(1e-9),
               n=2)
    yield _row("bridge second best builds iff θ1 + θ2 ≥ 1.25", src, 1.25, sb.t,
               _relative(1e-9), n=2)
    yield _row("bridge fixed fee ½ welfare 1/8", f"{SLIDES} 'An fixed-fee design'", 1 / 8,
               bridge.fixed_fee_welfare(), _relative(1e-9), n=2)
    yield from _bridge_engine_rows(src)
    claims = {
        "a": [("ex_post_budget_balance", False, "not ex-post budget balanced")],
        "b": [("ex_post_budget_balance", True, "ex-post budget balance p1 + p2 = 1{build}")],
        "c": [("nonnegative_payments", True, "p1 ≥ 0"),
              ("zero_payment_if_not_built", True, "p1 = 0 when not built"),
              ("ex_post_ir_if_built", True, "θ1 − p1 ≥ 0 when built (ex-post IR)")],
    }
    reports = bridge.slide_rule_reports()
    for rule, items in claims.items():
        rep = reports[rule]
        for attr, claimed, text in items:
            chk = getattr(rep, attr)
            yield _row(f"bridge rule ({rule}): {text}", src, float(claimed),
                       float(chk.holds), PROPERTY, n=2,
                       note=f"worst violation {chk.violation:.3g} at {chk.at}")
        if rule == "c":
            strict = rep.ex_post_ir_if_built
            yield _row("bridge rule (c): θ1 − p1 > 0 strictly when built", src, 1.0,
                       float(strict.extreme > 1e-12), PROPERTY, n=2, why="weak inequality",
                       explained=strict.holds and abs(strict.extreme) <= 1e-12,
                       note=f"min of θ1 − p1 over built profiles is {strict.extreme:.3g} at "
                            f"{strict.at}: it holds only weakly")
        ic = rep.interim_ic
        yield _row(f"bridge rule ({rule}): interim incentive compatible", src, 1.0,
                   float(ic.holds), PROPERTY, n=2,
                   note=f"worst gain from misreporting {ic.violation:.3g}")


def _bridge_engine_rows(src: str) -> Iterator[Row]:
    """The bridge again, through the general engine (a market with sizes {0, 1}): the
    slides' λ = 1/2, threshold 1/4 and welfare 9/64, judged to six digits."""
    m = market_from_dict({
        "market": {"payment": "money", "exclusion": True, "levels": [0, 1]},
        "locations": [{"name": "bridge", "n": 2, "type": {"dist": "uniform"},
                       "utility": {"kind": "power", "A": 1.0, "alpha": 1.0},
                       "cost": {"kind": "power", "B": 1.0, "beta": 1.0}}]})
    r = second_best(m).result
    err = float(r.details.get("relative_error_estimate", 0.0))
    assert r.lambdas is not None and r.thresholds is not None
    tol = _relative(1e-6)
    for figure, doc, comp in (
        ("bridge via the general engine (sizes {0, 1}): λ = 1/2", 0.5, float(r.lambdas[0])),
        ("bridge via the general engine: exclusion threshold 1/4", 0.25,
         float(r.thresholds[0])),
        ("bridge via the general engine: second-best welfare 9/64", 9 / 64, r.welfare),
    ):
        yield _row(figure, src, doc, comp, tol, n=2, why="engine error",
                   explained=not r.success or abs(doc - comp) <= err * abs(doc),
                   note=f"{r.status}; the engine reports a relative error estimate of {err:.2g} "
                        f"({r.details.get('method', '?')} method); the gap is "
                        f"{abs(doc - comp) / abs(doc):.2g} relative")


def _grid_rows() -> Iterator[Row]:
    src = f"{SLIDES} 'The solution' / 'The optimal tariffs'"
    g = grid.solve_grid_tariff()
    cf = grid.sqrt_tariff_closed_form()
    yield _printed("grid: exclusion threshold t* = 0.1586", src, 0.1586, g.threshold, 4)
    yield _printed("grid: welfare per agent 0.1161", src, 0.1161, g.welfare, 4)
    yield _printed("grid: central planner's welfare 0.125", src, 0.125, g.first_best_welfare, 3)
    # x1(a) = c0 + c1 a − c2 log a above t*: least squares on the engine's own x1.
    a = np.linspace(g.threshold + 0.05, 1.0, 200)
    basis = np.stack([np.ones_like(a), a, -np.log(a)], axis=1)
    c0, c1, c2 = np.linalg.lstsq(basis, g.x1(a), rcond=None)[0]
    # y(p) = c + c e^{−r2 p} − 2c e^{−r1 p}: the α = 1/2 closed form (one scalar root),
    # checked against the general engine's numerically inverted tariff below.
    prices = np.linspace(0.0, g.p_max, 101)
    gap = float(np.max(np.abs(g.y_of_p(prices) - cf.y_coef * (
        1 + np.exp(-cf.rate2 * prices) - 2 * np.exp(-cf.rate1 * prices)))))
    yield _row("grid: y(p) of the engine equals the closed form's curve (max gap)", "engine",
               0.0, gap, _absolute(1e-9), note="101 prices on [0, p_max]")
    for name, doc, comp, d in [
        ("grid: x1(a) constant −0.2677", -0.2677, c0, 4),
        ("grid: x1(a) coefficient of a 0.5942", 0.5942, c1, 4),
        ("grid: x1(a) coefficient of −log a 0.0942", 0.0942, c2, 4),
        ("grid: y(p) constant 0.3531", 0.3531, cf.y_coef, 4),
        ("grid: y(p) fast rate 21.23", 21.23, cf.rate2, 2),
        ("grid: y(p) slow coefficient 0.7062", 0.7062, 2 * cf.y_coef, 4),
        ("grid: y(p) slow rate 10.61", 10.61, cf.rate1, 2),
        ("grid: largest price p_max 0.1735", 0.1735, g.p_max, 4),
    ]:
        yield _printed(name, src, doc, float(comp), d)
