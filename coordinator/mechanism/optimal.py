"""First best and the optimal (second-best) mechanism, with or without exclusion.

The second best maximises expected welfare (1) subject to incentive compatibility,
individual rationality and (weak) budget balance, which Lemma 1 and (14)-(16) reduce to
one constraint (3) for money or one per location (24) for payments in kind. By Lemma 3
(money) or Assumption 1 (in kind) it is found by maximising the Lagrangian (17)/(25)
pointwise: agent j of location k is included iff θ + λ_k g_k(θ) > 0 and

    Q_l = argmax_Q  Σ_k W_kl Σ_j π_kj (θ_kj + λ_k g_k(θ_kj)) / (1 + λ_l) · u_l(Q) − c_l(Q),

with the multipliers λ chosen so the constraints bind (complementary slackness).
Interim V comes from (8), interim payments from (12) with the lowest type's net
benefit zero, P(θ) = θ V(θ) − ∫_low^θ V (V = 0 below the exclusion
threshold), and the ex-post payment of an included agent
is P(θ)/E[π | θ] = P(θ) (π depends on the agent's own type only), as the paper's
Section 3 prescribes after (16). The first best is the same computation at λ = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import interpolate, optimize

from . import moments
from .declared import Resolver
from .distributions import TypeDistribution
from .market import Market, check_solvable
from .multipliers import kkt_multipliers
from .provision import Provision, provision_for
from .result import MechanismResult, Outcome
from .sums import DEFAULT_TOL, Group, LatticeLaw, SumLaw, sum_law, virtual_weight

FloatArray = npt.NDArray[np.float64]

TABLE_POINTS = 1025
LATTICE_TABLE_POINTS = 257
LAMBDA_XTOL = 1e-13
METHODS = ("auto", "moments", "moment-laws", "lattice", "relaxed")
# The vectorised search for the pooled multiplier scans t = λ/(1 + λ) on this grid in one
# pass: 65 points on [0, 0.5], then toward 1 as the scalar search widens its bracket
# (1 − (1 − t)/4 each step, until 1 − 1e-12).
T_GRID = np.concatenate([np.linspace(0.0, 0.5, 65), 1.0 - 0.5 * 0.25 ** np.arange(1, 20)])
# Grid points around the bracket through which the interpolating polynomial is drawn.
INTERPOLATION_POINTS = 8


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Expectations of the pointwise solution at one vector of multipliers λ."""

    lambdas: FloatArray
    welfare: float
    constraints: FloatArray  # one entry (money) or one per location (in kind)
    benefit_theta: FloatArray  # [k, l] = E[Σ_j π θ_kj u_l(Q_l)]
    benefit_g: FloatArray  # [k, l] = E[Σ_j π g(θ_kj) u_l(Q_l)]
    cost: FloatArray  # [l] = E[c_l(Q_l)]
    laws: tuple[SumLaw, ...]
    rel_error: float
    # [k, j]: V_k(θ) = Σ_j interim[k, j] w_k(θ)^j, from the vectorised moment method only.
    interim: FloatArray | None = None


def _groups(market: Market, lambdas: FloatArray, exclusion: bool, l: int) -> list[Group]:
    return [
        Group(loc.n, loc.dist, float(lambdas[k]),
              float(market.weights[k, l] / (1.0 + lambdas[l])), exclusion)
        for k, loc in enumerate(market.locations)
    ]


@dataclass(slots=True)
class Refinement:
    """What one solve carries from evaluation to evaluation: the lattice resolution
    reached so far (None: the default), so later evaluations start where earlier ones
    had to go to meet the tolerance, and the vectorised moment engine once built (it
    holds what depends only on the market)."""

    bins: int | None = None
    engine: moments.MomentEngine | None = None
    engine_checked: bool = False


def evaluate(market: Market, lambdas: FloatArray, *, exclusion: bool,
             provisions: list[Provision], method: str = "auto", tol: float = DEFAULT_TOL,
             refine: Refinement | None = None) -> Evaluation:
    """Expected welfare and budget constraints (3)/(24) of the λ-pointwise solution.

    Where the lattice method applies, its resolution is doubled until every quantity's
    relative error estimate is at most ``tol`` or the lattice cannot grow (MAX_FFT); the
    returned ``rel_error`` is the estimate reached, which the caller compares with
    ``tol``. ``refine`` carries the resolution between calls of one solve.
    """
    _check_method(method)
    refine = Refinement() if refine is None else refine
    engine = _engine(market, exclusion, provisions, method, refine)
    if engine is not None:
        return _from_batch(engine.evaluate(lambdas))
    while True:
        ev = _evaluate_once(market, lambdas, exclusion=exclusion, provisions=provisions,
                            method=method, bins=refine.bins)
        lattices = [law for law in ev.laws if isinstance(law, LatticeLaw)]
        if ev.rel_error <= tol or not lattices:
            return ev
        reached = min(law.bins for law in lattices)
        if refine.bins is not None and reached < refine.bins:
            return ev  # the lattice cannot grow further: report the estimate as it is
        refine.bins = 2 * reached


def _evaluate_once(market: Market, lambdas: FloatArray, *, exclusion: bool,
                   provisions: list[Provision], method: str,
                   bins: int | None) -> Evaluation:
    L = market.L
    n = market.sizes.astype(float)
    bt = np.zeros((L, L))
    bg = np.zeros((L, L))
    ec = np.zeros(L)
    laws = []
    for l in range(L):
        prov = provisions[l]
        law = sum_law(_groups(market, lambdas, exclusion, l), [prov.benefit, prov.cost],
                      "moments" if method == "moment-laws" else method, bins)
        laws.append(law)
        ec[l] = law.expect(prov.cost)
        for k in range(L):
            if market.weights[k, l] != 0.0:
                et, eg = law.tilted(prov.benefit, k)
                bt[k, l] = n[k] * et
                bg[k, l] = n[k] * eg
    W = market.weights
    welfare = float(np.sum(W * bt) - ec.sum())
    per_location = np.sum(W * bg, axis=1) - ec
    constraints = (per_location if market.payment == "in_kind"
                   else np.array([per_location.sum()]))
    return Evaluation(np.asarray(lambdas, dtype=float), welfare, constraints, bt, bg, ec,
                      tuple(laws), max(law.rel_error for law in laws))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


def _engine(market: Market, exclusion: bool, provisions: list[Provision], method: str,
            refine: Refinement) -> moments.MomentEngine | None:
    """The vectorised moment method where it applies and ``method`` allows it ("auto",
    "moments"); None sends the caller down the per-location laws ("moment-laws" forces
    them: the general path the vectorised one is checked against). Built once per solve
    (``refine`` carries it)."""
    if not refine.engine_checked:
        refine.engine_checked = True
        if method in ("auto", "moments") and moments.applies(market, exclusion=exclusion,
                                                             provisions=provisions):
            refine.engine = moments.MomentEngine(market, provisions)
    return refine.engine


def _from_batch(batch: moments.Batch, row: int = 0) -> Evaluation:
    return Evaluation(batch.lambdas[row], float(batch.welfare[row]), batch.constraints[row],
                      batch.benefit_theta[row], batch.benefit_g[row], batch.cost[row],
                      tuple(batch.law(row, l) for l in range(batch.cost.shape[1])), 0.0,
                      batch.interim[row])


def _solve_money(f: Any) -> tuple[float, str]:
    """Smallest λ ≥ 0 with constraint(λ) ≥ 0, binding when λ > 0 (Lemma 3)."""
    h0 = f(0.0)
    if h0 >= 0.0:
        return 0.0, SLACK
    # Search in t = λ/(1+λ) ∈ [0, 1): λ → ∞ is the revenue-maximising mechanism.
    t_hi = 0.5
    while f(t_hi / (1.0 - t_hi)) < 0.0:
        t_hi = 1.0 - (1.0 - t_hi) / 4.0
        if t_hi > 1.0 - 1e-12:
            return math.inf, INFEASIBLE
    t = optimize.brentq(lambda s: f(s / (1.0 - s)), 0.0, t_hi, xtol=LAMBDA_XTOL, maxiter=200)
    return t / (1.0 - t), BINDS


SLACK = "constraint slack at λ = 0: the first best is implementable"
INFEASIBLE = "no λ makes the constraint bind: only Q = 0 is feasible"
BINDS = "constraint binds"


def _solve_money_batched(h: Callable[[FloatArray], FloatArray],
                         check: Callable[[FloatArray], FloatArray]) -> tuple[float, str]:
    """:func:`_solve_money` for a constraint ``h`` evaluated on a vector of λ at once.

    One pass over :data:`T_GRID` brackets the smallest root in t = λ/(1+λ); the root of
    the polynomial through the INTERPOLATION_POINTS grid values around the bracket is
    accepted when a second pass (``check``, the same constraint, at t − δ, t, t + δ)
    finds h changing sign within δ = LAMBDA_XTOL/2 of it (the accuracy brentq
    guarantees the scalar search); otherwise brentq finishes on the bracket. h is
    smooth where θ₀ moves freely, so the check rarely fails.
    """
    lam = T_GRID / (1.0 - T_GRID)
    v = h(lam)
    if v[0] >= 0.0:
        return 0.0, SLACK
    up = np.flatnonzero(v >= 0.0)
    if not up.size:
        return math.inf, INFEASIBLE
    i = int(up[0])
    lo, hi = float(T_GRID[i - 1]), float(T_GRID[i])
    first = min(max(i - INTERPOLATION_POINTS // 2, 0), T_GRID.size - INTERPOLATION_POINTS)
    idx = slice(first, first + INTERPOLATION_POINTS)
    # The interpolating polynomial in x = (t − mid)/half, by its Vandermonde system.
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    x = (T_GRID[idx] - mid) / half
    c = np.linalg.solve(np.vander(x, increasing=True), v[idx])[::-1].tolist()

    def poly(t: float) -> float:
        y, z = 0.0, (t - mid) / half
        for a in c:
            y = y * z + a
        return y

    t = float(optimize.brentq(poly, lo, hi, xtol=1e-16, rtol=4 * np.finfo(float).eps))
    d = 0.5 * LAMBDA_XTOL
    pts = np.array([t - d, t, t + d])
    near = check(pts / (1.0 - pts))
    if not (near[0] < 0.0 <= near[2]):
        t = optimize.brentq(lambda s: float(h(np.array([s / (1.0 - s)]))[0]), lo, hi,
                            xtol=LAMBDA_XTOL, maxiter=200)
    return t / (1.0 - t), BINDS


def solve_lambdas(market: Market, *, exclusion: bool, provisions: list[Provision],
                  method: str = "auto", tol: float = DEFAULT_TOL,
                  refine: Refinement | None = None) -> tuple[FloatArray, bool, str]:
    """Multipliers λ (one, or one per location in kind) by complementary slackness."""
    _check_method(method)
    L = market.L
    refine = Refinement() if refine is None else refine
    engine = _engine(market, exclusion, provisions, method, refine)

    def values(lam_v: FloatArray) -> tuple[float, FloatArray]:
        if engine is not None:
            w, c = engine.values(lam_v)
            return float(w[0]), c[0]
        ev = evaluate(market, lam_v, exclusion=exclusion, provisions=provisions, method=method,
                      tol=tol, refine=refine)
        return ev.welfare, ev.constraints

    if engine is not None and not engine.general:
        # Every prior uniform: a pass costs about one evaluation whatever its length.
        # The check pass evaluates everything (the engine remembers it): its middle
        # row is the solution's evaluation when the check succeeds.
        lam, status = _solve_money_batched(
            lambda lams: engine.values(np.repeat(lams[:, None], L, axis=1))[1].sum(axis=1),
            lambda lams: engine.evaluate(np.repeat(lams[:, None], L, axis=1))
            .constraints.sum(axis=1))
    else:
        lam, status = _solve_money(lambda x: float(values(np.full(L, x))[1].sum()))
    if not math.isfinite(lam):
        return np.full(L, np.inf), False, status
    if market.payment == "money" or L == 1:
        return np.full(L, lam), True, status
    scale = max(1.0, abs(values(np.zeros(L))[0]))
    return kkt_multipliers(values, np.full(L, lam), scale)


@dataclass(frozen=True, slots=True)
class InterimTable:
    """V_k(θ) of (8) and P_k(θ) of (12) on [θ₀, high], interpolated."""

    theta0: float
    high: float
    V: Any  # callable spline
    P: Any

    def payment(self, theta: FloatArray) -> FloatArray:
        inside = theta > self.theta0
        out = np.zeros_like(theta)
        out[inside] = self.P(theta[inside])
        return out

    def value(self, theta: FloatArray) -> FloatArray:
        inside = theta > self.theta0
        out = np.zeros_like(theta)
        out[inside] = self.V(theta[inside])
        return out


def _piecewise_spline(grid: FloatArray, values: FloatArray,
                      sizes: list[int]) -> interpolate.PPoly:
    """One cubic spline per piece of ``grid`` (pieces of ``sizes`` points sharing their
    end points), joined into one piecewise polynomial."""
    xs: list[FloatArray] = []
    cs: list[FloatArray] = []
    start = 0
    for m in sizes:
        sl = slice(start, start + m)
        sp = interpolate.CubicSpline(grid[sl], values[sl])
        xs.append(sp.x if not xs else sp.x[1:])
        cs.append(sp.c)
        start += m - 1
    return interpolate.PPoly(np.hstack(cs), np.concatenate(xs))


def _polynomial_table(dist: TypeDistribution, lam: float, theta0: float,
                      d: FloatArray) -> InterimTable:
    """V (8) and P (12) in closed form for U[a, b] under the vectorised moment method:
    w(θ) = sθ − λb with s = 1 + 2λ, V(θ) = Σ_j d_j w(θ)^j, and
    P(θ) = θ V(θ) − ∫_{θ₀}^θ V = θ V(θ) − (D(w(θ)) − D(w(θ₀)))/s, D the antiderivative
    of Σ_j d_j w^j. Exact up to rounding: no table, no spline."""
    pp = np.polynomial.polynomial
    s = 1.0 + 2.0 * lam
    t = lam * dist.high
    D = np.concatenate([[0.0], d / np.arange(1, d.size + 1)])
    D0 = float(pp.polyval(s * theta0 - t, D))

    def V(theta: Any) -> Any:
        return pp.polyval(s * np.asarray(theta, dtype=float) - t, d)

    def P(theta: Any) -> Any:
        th = np.asarray(theta, dtype=float)
        w = s * th - t
        return th * pp.polyval(w, d) - (pp.polyval(w, D) - D0) / s

    return InterimTable(theta0, dist.high, V, P)


def interim_tables(market: Market, ev: Evaluation, *, exclusion: bool,
                   provisions: list[Provision], smooth: bool) -> list[InterimTable]:
    """Tabulate V_k (8) and P_k (12) for each home location k."""
    tables = []
    L = market.L
    for k, loc in enumerate(market.locations):
        grp_k = _groups(market, ev.lambdas, exclusion, 0)[k]
        t0 = grp_k.theta0
        if ev.interim is not None and loc.dist.spec.get("dist") == "uniform":
            tables.append(_polynomial_table(loc.dist, float(ev.lambdas[k]), t0,
                                            ev.interim[k]))
            continue
        lo = t0
        if not exclusion and not np.isfinite(virtual_weight(loc.dist, ev.lambdas[k], lo)):
            lo = float(loc.dist.ppf(1e-12))
        # The lattice law's E[φ(x + Z₋)] costs a pass over its support per point, so it
        # gets a coarser table; V is smooth there and the cubic spline's error is O(h⁴).
        points = TABLE_POINTS if ev.laws[0].method == "moments" else LATTICE_TABLE_POINTS
        # V is flat on every ironed interval and has kinks at its ends: the table is
        # split there so no spline piece straddles a kink.
        ironed = loc.dist.weight(float(ev.lambdas[k])).intervals.ravel()
        breaks = np.unique(np.concatenate([
            [lo, loc.dist.high], ironed[(ironed > lo) & (ironed < loc.dist.high)]]))
        pieces = [np.linspace(a, b, max(8, int(points * (b - a) / (loc.dist.high - lo))))
                  for a, b in zip(breaks[:-1], breaks[1:], strict=True)]
        grid = np.concatenate([pieces[0], *(p[1:] for p in pieces[1:])])
        w = virtual_weight(loc.dist, ev.lambdas[k], grid)
        V = np.zeros_like(grid)
        for l in range(L):
            if market.weights[k, l] == 0.0:
                continue
            x = market.weights[k, l] / (1.0 + ev.lambdas[l]) * w
            V += market.weights[k, l] * ev.laws[l].given(provisions[l].benefit, k, x)
        if smooth:
            Vs = _piecewise_spline(grid, V, [p.size for p in pieces])
            antider = Vs.antiderivative()
            tables.append(InterimTable(
                t0, loc.dist.high, Vs,
                lambda t, Vs=Vs, A=antider, lo=lo: t * Vs(t) - (A(t) - A(lo)),
            ))
        else:
            cum = np.concatenate([[0.0], np.cumsum(0.5 * (V[1:] + V[:-1]) * np.diff(grid))])
            tables.append(InterimTable(
                t0, loc.dist.high,
                lambda t, g=grid, v=V: np.interp(t, g, v),
                lambda t, g=grid, v=V, c=cum: t * np.interp(t, g, v) - np.interp(t, g, c),
            ))
    return tables


@dataclass(frozen=True)
class LagrangianMechanism:
    """A solved pointwise-Lagrangian mechanism (first or second best) that allocates."""

    market: Market
    result: MechanismResult
    lambdas: FloatArray
    exclusion: bool
    provisions: list[Provision]
    tables: list[InterimTable] = field(default_factory=list)
    pay_interim: bool = True
    evaluation: Evaluation | None = None
    # Solutions for other counts of declarants (the rule depends on n): see allocate.
    others: Resolver = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "others", Resolver(self._rebuild))

    def _rebuild(self, market: Market) -> LagrangianMechanism:
        if self.pay_interim:
            return second_best(market, exclusion=self.exclusion)
        return first_best(market)

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None) -> Outcome:
        """Inclusion, Q and payments for the declarants that came (:class:`Mechanism`);
        counts other than the spec's n_l are allocated by this mechanism solved for them."""
        return self.others.allocate(self.market, self.result, types, locations, self._fixed)

    def _fixed(self, theta: FloatArray) -> Outcome:
        """(17)/(25) pointwise for the spec's own population (θ validated, location order)."""
        m = self.market
        loc = m.agent_locations()
        lam = self.lambdas
        w = np.empty_like(theta)
        for k, L_k in enumerate(m.locations):
            sel = loc == k
            w[sel] = virtual_weight(L_k.dist, float(lam[k]), theta[sel])
        included = w > 0.0 if self.exclusion else np.ones(theta.shape, dtype=bool)
        sums = np.bincount(loc, weights=np.where(included, w, 0.0), minlength=m.L)
        a = (m.weights.T @ sums) / (1.0 + lam)
        Q = np.array([float(self.provisions[l].q(np.array([a[l]]))[0]) for l in range(m.L)])
        cost = np.array([float(np.asarray(m.locations[l].cost(m.locations[l].n, Q[l])))
                         for l in range(m.L)])
        pay = np.zeros_like(theta)
        if self.pay_interim:
            for k in range(m.L):
                sel = (loc == k) & included
                pay[sel] = self.tables[k].payment(theta[sel])
        else:
            # First best: no incentive payments; the cost is shared equally by the
            # included agents (per location in kind, pooled for money).
            if m.payment == "in_kind":
                cnt = np.bincount(loc, weights=included.astype(float), minlength=m.L)
                share = np.divide(cost, cnt, out=np.zeros_like(cost), where=cnt > 0)
                pay = np.where(included, share[loc], 0.0)
            else:
                total = float(included.sum())
                pay = np.where(included, cost.sum() / total if total else 0.0, 0.0)
        return Outcome(included=included, Q=Q, payments=pay, location=loc, cost=cost,
                       result=self.result)


def _mechanism(market: Market, name: str, lambdas: FloatArray, ok: bool, status: str,
               exclusion: bool, provisions: list[Provision], method: str,
               pay_interim: bool, tol: float = DEFAULT_TOL,
               refine: Refinement | None = None) -> LagrangianMechanism:
    ev = evaluate(market, lambdas, exclusion=exclusion, provisions=provisions, method=method,
                  tol=tol, refine=refine)
    if ev.rel_error > tol:
        # An answer whose error estimate exceeds the tolerance asked for is not a success,
        # however plausible it looks.
        ok = False
        status = (f"{status}; relative error estimate {ev.rel_error:.2g} exceeds the "
                  f"tolerance {tol:.2g} (the lattice cannot be refined further)")
    thresholds = np.array([
        _groups(market, lambdas, exclusion, 0)[k].theta0 for k in range(market.L)])
    tables: list[InterimTable] = []
    details: dict[str, Any] = {
        "method": ",".join(sorted({law.method for law in ev.laws})),
        "relative_error_estimate": ev.rel_error,
        "tolerance": tol,
        "constraint_values": ev.constraints,
        "expected_cost": ev.cost,
        "payment": market.payment,
        "exclusion": exclusion,
    }
    if pay_interim:
        tables = interim_tables(market, ev, exclusion=exclusion, provisions=provisions,
                                smooth=market.levels is None)
        # (14): expected payments Σ_k n_k E[P_k(θ)] must equal E[Σ π g u] per location.
        revenue = np.array([
            loc.n * loc.dist.expect(tables[k].payment, tables[k].theta0)
            for k, loc in enumerate(market.locations)])
        details["expected_payments"] = revenue
        details["revenue_identity_gap"] = float(
            np.max(np.abs(revenue - np.sum(market.weights * ev.benefit_g, axis=1))))
    result = MechanismResult(
        mechanism=name, success=ok, status=status, welfare=ev.welfare, welfare_se=0.0,
        lambdas=lambdas, thresholds=thresholds, details=details)
    return LagrangianMechanism(market, result, lambdas, exclusion, provisions, tables,
                               pay_interim, ev)


def first_best(market: Market, *, method: str = "auto",
               tol: float = DEFAULT_TOL) -> LagrangianMechanism:
    """Complete information: Q_l maximises Σ θ u − c pointwise (λ = 0, no constraint).

    ``tol``: relative tolerance on the quadrature's error estimate (see :func:`evaluate`);
    a result whose estimate exceeds it has ``success=False`` and says so in ``status``.
    """
    _check_tol(tol)
    provisions = [provision_for(loc, market) for loc in market.locations]
    return _mechanism(market, "first_best", np.zeros(market.L), True,
                      "complete information (no incentive constraint)", True, provisions,
                      method, pay_interim=False, tol=tol)


def _check_tol(tol: float) -> None:
    if not (isinstance(tol, (int, float)) and 1e-13 <= tol <= 0.1):
        raise ValueError(f"tol must be a relative tolerance in [1e-13, 0.1], got {tol!r}")


def second_best(market: Market, *, exclusion: bool | None = None,
                method: str = "auto", tol: float = DEFAULT_TOL) -> LagrangianMechanism:
    """The optimal mechanism: maximise (1) subject to (3) or (24) via (17)/(25).

    Irregular priors are ironed (:class:`~coordinator.mechanism.distributions.VirtualWeight`).
    Raises :class:`~coordinator.mechanism.market.UnsupportedMarketError` before solving
    for a market it cannot handle (:func:`~coordinator.mechanism.market.check_solvable`).
    ``tol``: relative tolerance on the quadrature's error estimate (see :func:`evaluate`);
    a result whose estimate exceeds it has ``success=False`` and says so in ``status``.
    ``method``: one of :data:`METHODS`. "auto" takes the vectorised moment method
    (:mod:`~coordinator.mechanism.moments`, closed forms for uniform priors) where it is
    exact, otherwise the cheapest exact per-location law (moments or lattice);
    "moment-laws" forces the per-location moment laws (the general path, same numbers
    to rounding), "lattice" the lattice.
    """
    _check_tol(tol)
    excl = market.exclusion if exclusion is None else exclusion
    name = "optimal" if excl else "optimal_no_exclusion"
    check_solvable(market, "optimal", exclusion=excl)
    provisions = [provision_for(loc, market) for loc in market.locations]
    refine = Refinement()
    lambdas, ok, status = solve_lambdas(market, exclusion=excl, provisions=provisions,
                                        method=method, tol=tol, refine=refine)
    if not np.all(np.isfinite(lambdas)):
        return LagrangianMechanism(market, MechanismResult(
            mechanism=name, success=False, status=status, welfare=0.0), lambdas, excl,
            provisions)
    return _mechanism(market, name, lambdas, ok, status, excl, provisions, method,
                      pay_interim=True, tol=tol, refine=refine)
