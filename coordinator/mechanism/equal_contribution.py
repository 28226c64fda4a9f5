"""Simple "equal contribution" schemes (slides "Simple 'Equal Contribution' Schemes").

One location, n agents with i.i.d. types θ ~ F (a :class:`TypeDistribution`), a
nonrivalrous, excludable good of size Q giving a participant of type θ the benefit
θ u(Q), at cost c(n, Q). Every participant pays the same. Three schemes:

(a) :func:`post_size_share_cost` — post Q, share the cost equally among participants.
    A type θ joins iff θ u(Q) ≥ c(n, Q) E[1/X], X = 1 + Bin(n − 1, 1 − F(θ*)) the number
    of participants counting himself; θ* is the smallest fixed point. Slides:
    SW = 3n²/128 − n/384 + O(1) for u = ⅔√Q, c = Q, U[0, 1].
(b) :func:`post_fee_build_largest` — post a fee φ and build Q = c⁻¹(Xφ). A type θ joins
    iff θ E[u(c⁻¹(Xφ))] ≥ φ, X = 1 + Bin(n − 1, p). Slides: 3n²/128 + 7n/1536 + O(1).
(c) :func:`post_fee_and_size` — post φ and Q; θ joins iff θ u(Q) ≥ φ; expected fees
    cover the cost. Slides: exactly 3n²/128 with Q* = n²/64, φ* = n/48.

Computed here (tests/test_mechanism_equal_contribution.py pins the evidence): (c) is
3n²/128 exactly; (a) is (2/9) n² θ(1 − θ)³/(1 − θ^n) at its best θ, i.e. 3n²/128 up to a
relative 4^-n, so its n-coefficient is 0, not −1/384; (b)'s n-coefficient is 9/1536,
not 7/1536.

All expectations are exact: binomial sums with ``scipy.stats.binom`` pmf vectors, the
closed form E[1/(1 + Bin(n − 1, p))] = (1 − (1 − p)^n)/(n p), and the Gauss–Legendre rule
of :class:`TypeDistribution` for ∫_θ* θ dF. Fixed points by Brent's root finder, the
posted Q or φ by a geometric scan refined with bounded Brent. No Monte Carlo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

from .declared import one_location
from .distributions import TypeDistribution
from .result import FloatArray, MechanismResult, Outcome

UtilityFn = Callable[[FloatArray], FloatArray]
"""u(Q), vectorised."""
CostFn = Callable[[int, FloatArray], FloatArray]
"""c(n, Q) (or its inverse in Q), vectorised in the second argument."""

_EPS = float(np.finfo(float).eps)


def slides_utility(Q: npt.ArrayLike) -> FloatArray:
    """The slides' example utility u(Q) = ⅔ √Q."""
    return np.asarray((2.0 / 3.0) * np.sqrt(np.asarray(Q, dtype=float)), dtype=float)


def slides_cost(n: int, Q: npt.ArrayLike) -> FloatArray:
    """The slides' example cost c(n, Q) = Q."""
    return np.asarray(Q, dtype=float) * 1.0


def slides_cost_inverse(n: int, y: npt.ArrayLike) -> FloatArray:
    """Inverse in Q of :func:`slides_cost`."""
    return np.asarray(y, dtype=float) * 1.0


@dataclass(frozen=True, slots=True)
class Economy:
    """n agents with types i.i.d. ``dist`` at one location, utility u, cost c(n, ·).

    ``c_inv`` is c(n, ·)⁻¹ (only scheme (b) needs it); when None it is found by
    vectorised bisection, assuming c(n, ·) increasing.
    """

    dist: TypeDistribution
    n: int
    u: UtilityFn
    c: CostFn
    c_inv: CostFn | None = None

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n}")

    def utility(self, Q: float) -> float:
        return float(np.asarray(self.u(np.asarray(Q, dtype=float))))

    def cost(self, Q: float) -> float:
        return float(np.asarray(self.c(self.n, np.asarray(Q, dtype=float))))

    def tail_mean(self, theta: float) -> float:
        """∫_θ^high η dF(η)."""
        return self.dist.expect(lambda x: x, lo=theta)

    def size_for(self, y: npt.ArrayLike) -> FloatArray:
        """c⁻¹(y): the largest Q with c(n, Q) ≤ y (0 where y ≤ c(n, 0))."""
        y = np.asarray(y, dtype=float)
        if self.c_inv is not None:
            return np.asarray(self.c_inv(self.n, y), dtype=float)
        return _inverse_cost(self, y)


def slides_economy(n: int) -> Economy:
    """The slides' example: U[0, 1] types, u = ⅔√Q, c = Q."""
    return Economy(TypeDistribution.uniform(), n, slides_utility, slides_cost,
                   slides_cost_inverse)


def _inverse_cost(e: Economy, y: FloatArray) -> FloatArray:
    def c(q: FloatArray) -> FloatArray:
        return np.asarray(e.c(e.n, q), dtype=float)

    flat = y.ravel()
    lo = np.zeros(flat.shape)
    hi = np.ones(flat.shape)
    for _ in range(2100):
        short = c(hi) < flat
        if not np.any(short):
            break
        hi = np.where(short, 2.0 * hi, hi)
    for _ in range(2100):
        mid = 0.5 * (lo + hi)
        below = c(mid) <= flat
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
        if np.all(hi - lo <= 2 * _EPS * hi):
            break
    out = np.where(c(np.zeros(flat.shape)) >= flat, 0.0, lo)
    return out.reshape(y.shape)


# -- exact binomial quantities -------------------------------------------------------


def expected_inverse_count(n: int, p: npt.ArrayLike) -> FloatArray:
    """E[1/X], X = 1 + Bin(n − 1, p): (1 − (1 − p)^n)/(n p), and 1 at p = 0."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = -np.expm1(n * np.log1p(-p)) / (n * p)
    return np.where(p > 0.0, val, 1.0)


def prob_some(n: int, p: npt.ArrayLike) -> FloatArray:
    """P(Bin(n, p) ≥ 1) = 1 − (1 − p)^n."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore"):
        return np.asarray(-np.expm1(n * np.log1p(-p)), dtype=float)


def _binom_rows(n: int, p: FloatArray) -> FloatArray:
    """pmf of Bin(n, p_r) at k = 0..n, one row per p_r.

    p below 1e-300 is taken as 0 (scipy's pmf overflows near the smallest normal float;
    the change in any pmf value is below n·1e-300).
    """
    k = np.arange(n + 1)
    p = np.asarray(p, dtype=float)
    p = np.where(p < 1e-300, 0.0, p)
    return np.asarray(stats.binom.pmf(k[None, :], n, p[:, None]))


# -- numerical helpers --------------------------------------------------------------------


def _smallest_root(
    D: Callable[[FloatArray], FloatArray], low: float, high: float, grids: tuple[int, ...]
) -> float:
    """Smallest θ in [low, high] where D changes sign from − to + (low if D(low) ≥ 0,
    high if D < 0 on every grid tried: nobody participates).

    The grids are tried in turn (a finer one only if a coarser one found no sign change);
    the bracketing grid cell is then solved by Brent's method to full precision.
    """
    for grid in grids:
        xs = np.linspace(low, high, grid)
        ds = D(xs)
        if ds[0] >= 0.0:
            return low
        hit = np.flatnonzero(ds >= 0.0)
        if hit.size == 0:
            continue
        k = int(hit[0])
        root = optimize.brentq(lambda x: float(D(np.array([x]))[0]), xs[k - 1], xs[k],
                               xtol=1e-15 * max(1.0, abs(high)), rtol=4 * _EPS)
        return float(root)
    return high


@dataclass(frozen=True, slots=True)
class _Max:
    x: float
    value: float
    success: bool


def _maximize(
    f: Callable[[float], float],
    lo: float,
    hi: float,
    *,
    log: bool = True,
    points: int = 33,
    expand: int = 40,
) -> _Max:
    """Maximise a (locally unimodal) f: scan a grid, refine with bounded Brent.

    On a geometric grid (``log``) the window slides when the best point is at an edge.
    """
    for _ in range(expand + 1):
        xs = np.geomspace(lo, hi, points) if log else np.linspace(lo, hi, points)
        fs = np.array([f(float(x)) for x in xs])
        fs = np.where(np.isnan(fs), -np.inf, fs)
        k = int(np.argmax(fs))
        if not log or 0 < k < points - 1:
            break
        ratio = hi / lo
        if k == 0:
            lo, hi = lo / ratio ** 0.75, float(xs[2])
        else:
            lo, hi = float(xs[-3]), hi * ratio ** 0.75
    else:
        return _Max(float(xs[k]), float(fs[k]), False)
    if not np.isfinite(fs[k]):
        return _Max(float(xs[k]), float(fs[k]), False)
    a = float(xs[max(k - 1, 0)])
    b = float(xs[min(k + 1, points - 1)])
    res = optimize.minimize_scalar(
        lambda x: -f(float(x)), bounds=(a, b), method="bounded",
        options={"xatol": 1e-14 * max(abs(a), abs(b)), "maxiter": 1000})
    x, val = float(res.x), -float(res.fun)
    if fs[k] > val:
        x, val = float(xs[k]), float(fs[k])
    return _Max(x, val, bool(res.success))


def reference_size(e: Economy) -> float:
    """argmax_Q n E[θ] u(Q) − c(n, Q): the scale around which posted sizes are sought."""
    mean = e.dist.mean()
    best = _maximize(lambda q: e.n * mean * e.utility(q) - e.cost(q), 1e-6, 1e6)
    return best.x


# -- (a) post a size, share the cost equally ------------------------------------------------


def post_size_threshold(e: Economy, Q: float) -> float:
    """Smallest fixed point θ* = c(n, Q) E[1/X] / u(Q), X = 1 + Bin(n − 1, 1 − F(θ*))."""
    uq, cq = e.utility(Q), e.cost(Q)

    def D(theta: FloatArray) -> FloatArray:
        return theta * uq - cq * expected_inverse_count(e.n, e.dist.sf(theta))

    return _smallest_root(D, e.dist.low, e.dist.high, (2049,))


def post_size_welfare(e: Economy, Q: float) -> float:
    """SW(Q) = n u(Q) ∫_θ* θ dF − c(n, Q) P(Bin(n, p) ≥ 1), p = 1 − F(θ*)."""
    theta = post_size_threshold(e, Q)
    p = float(e.dist.sf(theta))
    return e.n * e.utility(Q) * e.tail_mean(theta) - e.cost(Q) * float(prob_some(e.n, p))


@dataclass(frozen=True, slots=True)
class PostSizeShareCost:
    """Scheme (a): Q posted; participants (θ ≥ θ*) share c(n, Q) equally; nothing is
    built, and nobody pays, if nobody participates."""

    economy: Economy
    Q: float
    theta_star: float
    result: MechanismResult

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None) -> Outcome:
        e = self.economy
        theta = one_location(types, locations, e.n, e.dist.low, e.dist.high)
        inc = theta >= self.theta_star
        x = int(inc.sum())
        cq = e.cost(self.Q) if x else 0.0
        return Outcome(
            included=inc,
            Q=np.array([self.Q if x else 0.0]),
            payments=np.where(inc, cq / max(x, 1), 0.0),
            location=np.zeros(theta.shape[0], dtype=np.int64),
            cost=np.array([cq]),
            result=self.result,
        )


def post_size_share_cost(e: Economy, *, Q: float | None = None) -> PostSizeShareCost:
    """Slides "Simple 'Equal Contribution' Schemes", first bullet: post Q, share cost.

    With ``Q=None`` the size maximising :func:`post_size_welfare` is chosen.
    """
    ok = True
    if Q is None:
        q_ref = reference_size(e)
        best = _maximize(lambda q: post_size_welfare(e, q), 1e-3 * q_ref, 4.0 * q_ref)
        Q, ok = best.x, best.success
    theta = post_size_threshold(e, Q)
    p = float(e.dist.sf(theta))
    share = e.cost(Q) * float(expected_inverse_count(e.n, p))
    welfare = post_size_welfare(e, Q)
    return PostSizeShareCost(e, float(Q), theta, MechanismResult(
        mechanism="equal_share_post_size",
        success=ok,
        status="optimised" if ok else "size search did not converge",
        welfare=welfare,
        thresholds=np.array([theta]),
        Q=np.array([float(Q)]),
        fees=np.array([share]),
        details={"n": e.n, "prob_participate": p, "expected_participants": e.n * p,
                 "prob_build": float(prob_some(e.n, p)),
                 "fee_meaning": "expected cost share c(n,Q) E[1/X] of a participant"},
    ))


# -- (b) post a fee, build the largest facility the fees pay for ------------------------------


def _fee_values(e: Economy, phi: float) -> FloatArray:
    """v_k = u(c⁻¹(k φ)) for k = 0..n."""
    return np.asarray(e.u(e.size_for(phi * np.arange(e.n + 1))), dtype=float)


def _fee_expected_utility(e: Economy, v: FloatArray, p: FloatArray) -> FloatArray:
    """U(p) = E[u(c⁻¹((1 + B) φ))], B ~ Bin(n − 1, p), for each p (rows chunked)."""
    p = np.atleast_1d(np.asarray(p, dtype=float))
    out = np.empty(p.shape)
    step = max(1, 2_000_000 // e.n)
    for s in range(0, p.size, step):
        out[s:s + step] = _binom_rows(e.n - 1, p[s:s + step]) @ v[1:]
    return out


def post_fee_threshold(e: Economy, phi: float) -> float:
    """Smallest fixed point θ* = φ / E[u(c⁻¹(Xφ))], X = 1 + Bin(n − 1, 1 − F(θ*))."""
    v = _fee_values(e, phi)

    def D(theta: FloatArray) -> FloatArray:
        return theta * _fee_expected_utility(e, v, e.dist.sf(theta)) - phi

    return _smallest_root(D, e.dist.low, e.dist.high, (17, 129))


def post_fee_welfare(e: Economy, phi: float) -> float:
    """SW(φ) = E[θ | θ ≥ θ*] E[X u(c⁻¹(Xφ))] − φ E[X], X ~ Bin(n, p), p = 1 − F(θ*).

    Given X, the participants' types are i.i.d. F conditioned on θ ≥ θ*, so the total
    benefit is E[θ | θ ≥ θ*] X u(Q(X)); the cost c(n, Q(X)) = X φ is exactly the fees.
    Using E[X v_X] = n p E[v_{1+B}], B ~ Bin(n − 1, p), this is n (∫_θ* θ dF U(p) − φ p).
    """
    theta = post_fee_threshold(e, phi)
    p = float(e.dist.sf(theta))
    if p <= 0.0:
        return 0.0
    U = float(_fee_expected_utility(e, _fee_values(e, phi), np.array([p]))[0])
    return e.n * (e.tail_mean(theta) * U - phi * p)


@dataclass(frozen=True, slots=True)
class PostFeeBuildLargest:
    """Scheme (b): fee φ posted; participants (θ ≥ θ*) pay φ; Q = c⁻¹(X φ)."""

    economy: Economy
    phi: float
    theta_star: float
    result: MechanismResult

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None) -> Outcome:
        e = self.economy
        theta = one_location(types, locations, e.n, e.dist.low, e.dist.high)
        inc = theta >= self.theta_star
        x = int(inc.sum())
        Q = float(e.size_for(np.array([x * self.phi]))[0]) if x else 0.0
        return Outcome(
            included=inc,
            Q=np.array([Q]),
            payments=np.where(inc, self.phi, 0.0),
            location=np.zeros(theta.shape[0], dtype=np.int64),
            cost=np.array([e.cost(Q) if x else 0.0]),
            result=self.result,
        )


def post_fee_build_largest(e: Economy, *, phi: float | None = None) -> PostFeeBuildLargest:
    """Slides "Simple 'Equal Contribution' Schemes", second bullet: post φ, build c⁻¹(Xφ).

    With ``phi=None`` the fee maximising :func:`post_fee_welfare` is chosen.
    """
    ok = True
    if phi is None:
        phi_ref = e.cost(reference_size(e)) / e.n
        best = _maximize(lambda f: post_fee_welfare(e, f), 1e-3 * phi_ref, 4.0 * phi_ref)
        phi, ok = best.x, best.success
    theta = post_fee_threshold(e, phi)
    p = float(e.dist.sf(theta))
    pmf = _binom_rows(e.n, np.array([p]))[0]
    expected_Q = float(pmf @ e.size_for(phi * np.arange(e.n + 1)))
    return PostFeeBuildLargest(e, float(phi), theta, MechanismResult(
        mechanism="equal_share_post_fee",
        success=ok,
        status="optimised" if ok else "fee search did not converge",
        welfare=post_fee_welfare(e, phi),
        thresholds=np.array([theta]),
        Q=np.array([expected_Q]),
        fees=np.array([float(phi)]),
        details={"n": e.n, "prob_participate": p, "expected_participants": e.n * p,
                 "prob_build": float(prob_some(e.n, p)),
                 "Q_meaning": "expected size E[c⁻¹(Xφ)], X ~ Bin(n, p)"},
    ))


# -- (c) post a fee and a size ---------------------------------------------------------------


def _best_size_given_threshold(e: Economy, theta: float, q_ref: float) -> tuple[float, float]:
    """max_Q n u(Q) ∫_θ η dF − c(n, Q) s.t. n (1 − F(θ)) θ u(Q) ≥ c(n, Q) → (Q, SW).

    The objective is concave and the feasible set an interval (u concave, c convex), so
    the optimum is the unconstrained maximiser, or the nearest end of the interval.
    """
    m = e.tail_mean(theta)
    k = e.n * float(e.dist.sf(theta)) * theta

    def sw(q: float) -> float:
        return e.n * m * e.utility(q) - e.cost(q)

    def slack(q: float) -> float:
        return k * e.utility(q) - e.cost(q)

    if k <= 0.0:
        return (0.0, sw(0.0)) if slack(0.0) >= 0.0 else (0.0, -np.inf)
    free = _maximize(sw, 1e-3 * q_ref, 4.0 * q_ref)
    if slack(free.x) >= 0.0:
        return free.x, free.value
    feas = _maximize(slack, 1e-3 * q_ref, 4.0 * q_ref)
    if feas.value < 0.0:
        return (0.0, sw(0.0)) if slack(0.0) >= 0.0 else (0.0, -np.inf)
    a, b = sorted((feas.x, free.x))
    q = float(optimize.brentq(slack, a, b, xtol=1e-300, rtol=4 * _EPS))
    return q, sw(q)


@dataclass(frozen=True, slots=True)
class PostFeeAndSize:
    """Scheme (c): Q and φ posted; participants (θ u(Q) ≥ φ) pay φ; Q is always built."""

    economy: Economy
    Q: float
    phi: float
    theta_star: float
    result: MechanismResult

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None) -> Outcome:
        e = self.economy
        theta = one_location(types, locations, e.n, e.dist.low, e.dist.high)
        inc = theta >= self.theta_star
        return Outcome(
            included=inc,
            Q=np.array([self.Q]),
            payments=np.where(inc, self.phi, 0.0),
            location=np.zeros(theta.shape[0], dtype=np.int64),
            cost=np.array([e.cost(self.Q)]),
            result=self.result,
        )


def post_fee_and_size(
    e: Economy, *, phi: float | None = None, Q: float | None = None
) -> PostFeeAndSize:
    """Slides "Simple 'Equal Contribution' Schemes", third bullet (problem P* of Theorem 1).

    maximise n u(Q) ∫_θ* θ dF − c(n, Q) subject to n (1 − F(θ*)) φ ≥ c(n, Q), θ* u(Q) = φ,
    over θ* (outer bounded Brent) and Q (inner, concave). Slides' example: 3n²/128,
    Q* = n²/64, φ* = n/48, θ* = 1/4. Give both ``phi`` and ``Q`` to evaluate a fixed pair.
    """
    ok = True
    if (phi is None) != (Q is None):
        raise ValueError("give both phi and Q, or neither")
    if phi is None or Q is None:
        q_ref = reference_size(e)
        best = _maximize(lambda t: _best_size_given_threshold(e, t, q_ref)[1],
                         e.dist.low, e.dist.high, log=False, points=65)
        theta, ok = best.x, best.success
        Q, welfare = _best_size_given_threshold(e, theta, q_ref)
        phi = theta * e.utility(Q)
    else:
        uq = e.utility(Q)
        theta = float(np.clip(phi / uq, e.dist.low, e.dist.high)) if uq > 0 else e.dist.high
        welfare = e.n * uq * e.tail_mean(theta) - e.cost(Q)
    slack = e.n * float(e.dist.sf(theta)) * phi - e.cost(Q)
    return PostFeeAndSize(e, float(Q), float(phi), float(theta), MechanismResult(
        mechanism="equal_share_post_fee_and_size",
        success=ok,
        status="optimised" if ok else "search did not converge",
        welfare=float(welfare),
        thresholds=np.array([float(theta)]),
        Q=np.array([float(Q)]),
        fees=np.array([float(phi)]),
        details={"n": e.n, "prob_participate": float(e.dist.sf(theta)),
                 "expected_budget_surplus": slack},
    ))


__all__ = [
    "CostFn",
    "Economy",
    "PostFeeAndSize",
    "PostFeeBuildLargest",
    "PostSizeShareCost",
    "UtilityFn",
    "expected_inverse_count",
    "post_fee_and_size",
    "post_fee_build_largest",
    "post_fee_threshold",
    "post_fee_welfare",
    "post_size_share_cost",
    "post_size_threshold",
    "post_size_welfare",
    "prob_some",
    "reference_size",
    "slides_cost",
    "slides_cost_inverse",
    "slides_economy",
    "slides_utility",
]
