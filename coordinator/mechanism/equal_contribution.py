"""Simple "equal contribution" schemes (slides "Simple 'Equal Contribution' Schemes").

One location, n agents with i.i.d. types θ ~ F (a :class:`TypeDistribution`), a
nonrivalrous, excludable good of size Q giving a participant of type θ the benefit
θ u(Q), at cost c(n, Q). Every participant pays the same. Three schemes:

(a) :func:`post_size_share_cost` — post Q, share the cost equally among participants.
    A type θ joins iff θ u(Q) ≥ c(n, Q) E[1/X], X the number of participants as the
    agent believes it (see *conventions*); θ* is the smallest fixed point. Slides:
    SW = 3n²/128 − n/384 + O(1) for u = ⅔√Q, c = Q, U[0, 1].
(b) :func:`post_fee_build_largest` — post a fee φ and build Q = c⁻¹(Xφ). A type θ joins
    iff θ E[u(c⁻¹(Xφ))] ≥ φ. Slides: 3n²/128 + 7n/1536 + O(1).
(c) :func:`post_fee_and_size` — post φ and Q; θ joins iff θ u(Q) ≥ φ; expected fees
    cover the cost. Slides: exactly 3n²/128 with Q* = n²/64, φ* = n/48.

Conventions (``Economy.convention``): what a participant takes X to be when he decides.

``"bayes"`` (default)
    He counts himself: X = 1 + Bin(n − 1, p), p = 1 − F(θ*), the law of the number of
    participants given that he participates. This is the Bayes–Nash equilibrium of the
    scheme as played.
``"slides"``
    The slides' reading of "X has the a priori distribution of the number who will
    participate": X ~ Bin(n, p), the prior law, not conditioned on his own
    participation. Where 1/X needs X ≥ 1 (and for (b) too, so both schemes use one law)
    it is conditioned on X ≥ 1; that conditioning changes values by a relative (1 − p)^n
    and no coefficient of the large-n expansion.

Scheme (c)'s participation rule has no X in it, so it is the same under both. The
welfare is always the true expected welfare of the rule as played (participants'
beliefs set θ*; the realised number of participants is Bin(n, p) either way).

Computed here (tests/test_mechanism_equal_contribution.py pins the evidence). Under
``"bayes"``: (c) is 3n²/128 exactly; (a) is (2/9) n² θ(1 − θ)³/(1 − θ^n) at its best θ,
i.e. 3n²/128 up to a relative 4^-n, so its n-coefficient is 0; (b)'s n-coefficient is
9/1536. Under ``"slides"`` the printed −1/384 and 7/1536 are recovered.

All expectations are exact: binomial sums with ``scipy.stats.binom`` pmf vectors
(restricted to the window outside which the binomial mass is below 1e-17, Bernstein's
inequality), the closed form E[1/(1 + Bin(n − 1, p))] = (1 − (1 − p)^n)/(n p), the sum
E[1/X | X ≥ 1] = Σ_{m=1}^{n} (1 − p)^{n−m} (1 − (1 − p)^m)/m / (1 − (1 − p)^n) for
X ~ Bin(n, p), and the Gauss–Legendre rule of :class:`TypeDistribution` for ∫_θ* θ dF.
Fixed points by Brent's root finder after a grid scan for the first sign change, the
posted Q or φ by a geometric scan refined with bounded Brent. No Monte Carlo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

from .declared import one_location
from .distributions import TypeDistribution
from .market import Market
from .result import FloatArray, MechanismResult, Outcome

UtilityFn = Callable[[FloatArray], FloatArray]
"""u(Q), vectorised."""
CostFn = Callable[[int, FloatArray], FloatArray]
"""c(n, Q) (or its inverse in Q), vectorised in the second argument."""

Convention = Literal["bayes", "slides"]
"""How a participant counts the participants X when he decides (module docstring)."""

CONVENTIONS: dict[str, str] = {
    "bayes": "a participant counts himself: X = 1 + Bin(n − 1, p) (Bayes-consistent)",
    "slides": "the slides' prior count: X ~ Bin(n, p), given X ≥ 1",
}

_EPS = float(np.finfo(float).eps)
_TINY_P = 1e-300
"""p below this is taken as 0 (scipy's pmf overflows near the smallest normal float; the
change in any pmf value is below n·1e-300)."""
SHARE_GRID = 1025
"""θ grid on which scheme (a)'s fixed-point map is tabulated to find its first crossing."""
FEE_GRIDS = (17, 129)
"""θ grids tried in turn for scheme (b)'s first crossing (finer only if coarser fails)."""
_CHUNK = 2_000_000
"""Array elements per block in the vectorised binomial sums (bounds memory)."""


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
    vectorised bisection, assuming c(n, ·) increasing. ``convention`` is how a
    participant counts the participants (module docstring): ``"bayes"`` or ``"slides"``.

    Raises ValueError for n not a positive integer or an unknown convention.
    """

    dist: TypeDistribution
    n: int
    u: UtilityFn
    c: CostFn
    c_inv: CostFn | None = None
    convention: Convention = "bayes"

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n}")
        if self.convention not in get_args(Convention):
            raise ValueError(f"convention must be one of {list(get_args(Convention))}, "
                             f"got {self.convention!r}")

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


def slides_economy(n: int, convention: Convention = "bayes") -> Economy:
    """The slides' example: U[0, 1] types, u = ⅔√Q, c = Q."""
    return Economy(TypeDistribution.uniform(), n, slides_utility, slides_cost,
                   slides_cost_inverse, convention)


def _inverse_cost(e: Economy, y: FloatArray) -> FloatArray:
    """Vectorised bisection for c(n, Q) = y, to a relative 2 eps in Q.

    Entries with y ≤ c(n, 0) are 0 and take no part (bisecting towards Q = 0 would
    walk through every binary exponent down to the subnormals).
    """
    def c(q: FloatArray) -> FloatArray:
        return np.asarray(e.c(e.n, q), dtype=float)

    flat = y.ravel()
    out = np.zeros(flat.shape)
    active = np.flatnonzero(c(np.zeros(flat.shape)) < flat)
    if active.size == 0:
        return out.reshape(y.shape)
    target = flat[active]
    lo = np.zeros(active.shape)
    hi = np.ones(active.shape)
    for _ in range(2100):
        short = c(hi) < target
        if not np.any(short):
            break
        lo = np.where(short, hi, lo)
        hi = np.where(short, 2.0 * hi, hi)
    for _ in range(2100):
        if np.all(hi - lo <= 2 * _EPS * hi):
            break
        mid = 0.5 * (lo + hi)
        below = c(mid) <= target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    out[active] = lo
    return out.reshape(y.shape)


# -- exact binomial quantities -------------------------------------------------------


def expected_inverse_count(
    n: int, p: npt.ArrayLike, convention: Convention = "bayes"
) -> FloatArray:
    """E[1/X] for a participant's X, elementwise in p (shape of p).

    ``"bayes"``: X = 1 + Bin(n − 1, p), E[1/X] = (1 − (1 − p)^n)/(n p) (1 at p = 0).
    ``"slides"``: X ~ Bin(n, p) given X ≥ 1,
    E[1/X] = Σ_{m=1}^{n} q^{n−m}(1 − q^m)/m / (1 − q^n), q = 1 − p (1 at p = 0, the
    limit; 1/n at p = 1). The sum is ∫_q^1 (y^n − q^n)/(y − q) dy, the integral form of
    Σ_k C(n, k) p^k q^{n−k}/k; every term is positive, so it has no cancellation.
    """
    p = np.asarray(p, dtype=float)
    if convention == "bayes":
        with np.errstate(divide="ignore", invalid="ignore"):
            val = -np.expm1(n * np.log1p(-p)) / (n * p)
        return np.asarray(np.where(p > 0.0, val, 1.0), dtype=float)
    flat = np.clip(p.ravel(), 0.0, 1.0)
    out = np.ones(flat.shape)
    inner = np.flatnonzero((flat > _TINY_P) & (flat < 1.0))
    out[flat >= 1.0] = 1.0 / n
    m = np.arange(1, n + 1, dtype=float)
    step = max(1, _CHUNK // n)
    for s in range(0, inner.size, step):
        idx = inner[s:s + step]
        lq = np.log1p(-flat[idx])[:, None]
        terms = np.exp((n - m[None, :]) * lq) * -np.expm1(m[None, :] * lq) / m[None, :]
        out[idx] = terms.sum(axis=1) / -np.expm1(n * lq[:, 0])
    return out.reshape(p.shape)


def prob_some(n: int, p: npt.ArrayLike) -> FloatArray:
    """P(Bin(n, p) ≥ 1) = 1 − (1 − p)^n."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore"):
        return np.asarray(-np.expm1(n * np.log1p(-p)), dtype=float)


def _binom_rows(n: int, p: FloatArray) -> FloatArray:
    """pmf of Bin(n, p_r) at k = 0..n, one row per p_r (shape (len(p), n + 1))."""
    k = np.arange(n + 1)
    p = np.asarray(p, dtype=float)
    p = np.where(p < _TINY_P, 0.0, p)
    return np.asarray(stats.binom.pmf(k[None, :], n, p[:, None]))


def _binom_window(n: int, p: float) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """(k, pmf) of Bin(n, p) for the k where the mass is not negligible.

    Bernstein: P(|B − np| ≥ t) ≤ 2 exp(−t²/(2(σ² + t/3))); t = 9σ + 30 makes the bound
    below 1e-17 for every σ, so the mass left out is below 1e-17. Inside the window the
    pmf is built outward from the mode by the ratios pmf(k+1)/pmf(k) = (n−k)p/((k+1)q)
    (each below 1 away from the mode, so nothing overflows) and normalised to sum 1:
    relative error about (window length)·eps, with no per-call scipy overhead.
    """
    if n == 0 or p < _TINY_P:
        return np.zeros(1, dtype=np.int64), np.ones(1)
    if p >= 1.0:
        return np.full(1, n, dtype=np.int64), np.ones(1)
    q = 1.0 - p
    mu = n * p
    t = 9.0 * np.sqrt(mu * q) + 30.0
    lo, hi = max(0, int(mu - t)), min(n, int(np.ceil(mu + t)))
    mode = min(max(int(np.floor((n + 1) * p)), lo), hi)
    up = np.arange(mode, hi, dtype=float)
    down = np.arange(mode, lo, -1, dtype=float)
    with np.errstate(under="ignore"):
        w_up = np.cumprod((n - up) / (up + 1.0) * (p / q))
        w_down = np.cumprod(down / (n - down + 1.0) * (q / p))
    w = np.concatenate((w_down[::-1], [1.0], w_up))
    return np.arange(lo, hi + 1, dtype=np.int64), w / w.sum()


def _belief_row(e: Economy, p: float) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """(k, weight): the law of X as a participant believes it, at participation rate p."""
    if e.convention == "bayes":
        j, w = _binom_window(e.n - 1, p)
        return j + 1, w
    if p < _TINY_P:  # Bin(n, p) given ≥ 1 tends to 1 as p → 0
        return np.ones(1, dtype=np.int64), np.ones(1)
    k, w = _binom_window(e.n, p)
    keep = k >= 1
    return k[keep], w[keep] / float(prob_some(e.n, p))


def _belief_matrix(e: Economy, p: FloatArray) -> FloatArray:
    """Rows of :func:`_belief_row` laid out densely over k = 0..n (shape (len(p), n + 1))."""
    p = np.where(np.asarray(p, dtype=float) < _TINY_P, 0.0, p)
    out = np.zeros((p.size, e.n + 1))
    if e.convention == "bayes":
        out[:, 1:] = _binom_rows(e.n - 1, p)
        return out
    rows = _binom_rows(e.n, p)
    rows[:, 0] = 0.0
    some = prob_some(e.n, p)
    zero = some <= 0.0
    out[~zero] = rows[~zero] / some[~zero, None]
    out[zero, 1] = 1.0
    return out


def _true_expected_value(e: Economy, v: FloatArray, p: float) -> float:
    """E[v_{1+B}], B ~ Bin(n − 1, p): what a participant gets when X is counted truly."""
    j, w = _binom_window(e.n - 1, p)
    return float(w @ v[j + 1])


# -- numerical helpers --------------------------------------------------------------------


def _first_crossing(
    D: Callable[[float], float], xs: FloatArray, ds: FloatArray
) -> float | None:
    """Smallest θ where D (tabulated as ``ds`` on ``xs``) changes sign from − to +.

    xs[0] if D(xs[0]) ≥ 0; None if D < 0 on the whole grid. The bracketing grid cell is
    solved by Brent's method to full precision.
    """
    if ds[0] >= 0.0:
        return float(xs[0])
    hit = np.flatnonzero(ds >= 0.0)
    if hit.size == 0:
        return None
    k = int(hit[0])
    a, b = float(xs[k - 1]), float(xs[k])
    # Guards against rounding between the tabulated and the scalar evaluation.
    if D(a) >= 0.0:
        return a
    if D(b) < 0.0:
        return b
    return float(optimize.brentq(D, a, b, xtol=1e-15 * max(1.0, abs(b)), rtol=4 * _EPS))


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


@dataclass(frozen=True, slots=True)
class ShareTable:
    """Scheme (a)'s fixed-point map tabulated once per economy.

    ``h(θ) = θ / E[1/X](1 − F(θ))`` on ``theta`` (``SHARE_GRID`` points); θ is a
    fixed point for Q iff h(θ) = c(n, Q)/u(Q), and the smallest one is where the running
    maximum ``record`` of h first reaches c/u, so one table serves every Q.
    """

    theta: FloatArray
    h: FloatArray
    record: FloatArray

    @staticmethod
    def build(e: Economy) -> ShareTable:
        xs = np.linspace(e.dist.low, e.dist.high, SHARE_GRID)
        h = xs / expected_inverse_count(e.n, e.dist.sf(xs), e.convention)
        return ShareTable(xs, h, np.maximum.accumulate(h))


def post_size_threshold(e: Economy, Q: float, table: ShareTable | None = None) -> float:
    """Smallest fixed point θ* = c(n, Q) E[1/X] / u(Q), X counted by ``e.convention``.

    ``table`` (from :meth:`ShareTable.build`) saves re-tabulating when many Q are tried.
    Returns ``dist.high`` when no type joins.
    """
    uq, cq = e.utility(Q), e.cost(Q)
    if uq <= 0.0:
        return e.dist.low if cq <= 0.0 else e.dist.high
    tab = table if table is not None else ShareTable.build(e)
    r = cq / uq
    k = int(np.searchsorted(tab.record, r, side="left"))
    if k == 0:
        return e.dist.low
    if k == tab.theta.size:
        return e.dist.high

    def D(theta: float) -> float:
        p = e.dist.sf(np.array([theta]))
        return float(theta * uq - cq * expected_inverse_count(e.n, p, e.convention)[0])

    # The first grid point whose h reaches r is the first sign change of D.
    ds = np.where(np.arange(tab.theta.size) < k, -1.0, 1.0)
    root = _first_crossing(D, tab.theta, ds)
    return e.dist.high if root is None else root


def post_size_welfare(e: Economy, Q: float, table: ShareTable | None = None) -> float:
    """SW(Q) = n u(Q) ∫_θ* θ dF − c(n, Q) P(Bin(n, p) ≥ 1), p = 1 − F(θ*).

    True welfare of the rule as played, whatever the participants believe about X.
    """
    theta = post_size_threshold(e, Q, table)
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

    With ``Q=None`` the size maximising :func:`post_size_welfare` is chosen. ``fees``
    in the result is the expected cost share c(n, Q) E[1/X] of a participant under the
    true count X = 1 + Bin(n − 1, p) (what he pays on average, whatever he believed).
    """
    ok = True
    table = ShareTable.build(e)
    if Q is None:
        q_ref = reference_size(e)
        best = _maximize(lambda q: post_size_welfare(e, q, table), 1e-3 * q_ref, 4.0 * q_ref)
        Q, ok = best.x, best.success
    theta = post_size_threshold(e, Q, table)
    p = float(e.dist.sf(theta))
    share = e.cost(Q) * float(expected_inverse_count(e.n, p))
    welfare = post_size_welfare(e, Q, table)
    return PostSizeShareCost(e, float(Q), theta, MechanismResult(
        mechanism="equal_share_post_size",
        success=ok,
        status="optimised" if ok else "size search did not converge",
        welfare=welfare,
        thresholds=np.array([theta]),
        Q=np.array([float(Q)]),
        fees=np.array([share]),
        details={"n": e.n, "convention": e.convention, "prob_participate": p,
                 "expected_participants": e.n * p,
                 "prob_build": float(prob_some(e.n, p)),
                 "expected_Q": float(Q) * float(prob_some(e.n, p)),
                 "Q_meaning": "posted size, built if anybody participates",
                 "fee_meaning": "expected cost share c(n,Q) E[1/X] of a participant"},
    ))


# -- (b) post a fee, build the largest facility the fees pay for ------------------------------


def _fee_values(e: Economy, phi: float) -> FloatArray:
    """v_k = u(c⁻¹(k φ)) for k = 0..n."""
    return np.asarray(e.u(e.size_for(phi * np.arange(e.n + 1))), dtype=float)


class FeeBeliefs:
    """The participant's law of X on the θ grids of :data:`FEE_GRIDS`, tabulated once.

    The law depends on θ, not on φ, so one table serves every fee tried.
    """

    def __init__(self, e: Economy) -> None:
        self._e = e
        self._grids: dict[int, tuple[FloatArray, FloatArray]] = {}

    def grid(self, size: int) -> tuple[FloatArray, FloatArray]:
        """(θ grid, law matrix of shape (size, n + 1))."""
        if size not in self._grids:
            e = self._e
            xs = np.linspace(e.dist.low, e.dist.high, size)
            self._grids[size] = (xs, _belief_matrix(e, e.dist.sf(xs)))
        return self._grids[size]


def post_fee_threshold(e: Economy, phi: float, beliefs: FeeBeliefs | None = None) -> float:
    """Smallest fixed point θ* = φ / E[u(c⁻¹(Xφ))], X counted by ``e.convention``.

    Returns ``dist.high`` when no type joins.
    """
    v = _fee_values(e, phi)
    law = beliefs if beliefs is not None else FeeBeliefs(e)

    def D(theta: float) -> float:
        k, w = _belief_row(e, float(e.dist.sf(theta)))
        return theta * float(w @ v[k]) - phi

    for size in FEE_GRIDS:
        xs, M = law.grid(size)
        root = _first_crossing(D, xs, xs * (M @ v) - phi)
        if root is not None:
            return root
    return e.dist.high


def post_fee_welfare(e: Economy, phi: float, beliefs: FeeBeliefs | None = None) -> float:
    """SW(φ) = E[θ | θ ≥ θ*] E[X u(c⁻¹(Xφ))] − φ E[X], X ~ Bin(n, p), p = 1 − F(θ*).

    Given X, the participants' types are i.i.d. F conditioned on θ ≥ θ*, so the total
    benefit is E[θ | θ ≥ θ*] X u(Q(X)); the cost c(n, Q(X)) = X φ is exactly the fees.
    Using E[X v_X] = n p E[v_{1+B}], B ~ Bin(n − 1, p), this is n (∫_θ* θ dF U(p) − φ p).
    True welfare of the rule as played, whatever the participants believe about X.
    """
    theta = post_fee_threshold(e, phi, beliefs)
    p = float(e.dist.sf(theta))
    if p <= 0.0:
        return 0.0
    U = _true_expected_value(e, _fee_values(e, phi), p)
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

    With ``phi=None`` the fee maximising :func:`post_fee_welfare` is chosen. ``Q`` in the
    result is the expected size E[c⁻¹(Xφ)], X ~ Bin(n, p) the true count.
    """
    ok = True
    beliefs = FeeBeliefs(e)
    if phi is None:
        phi_ref = e.cost(reference_size(e)) / e.n
        best = _maximize(lambda f: post_fee_welfare(e, f, beliefs), 1e-3 * phi_ref,
                         4.0 * phi_ref)
        phi, ok = best.x, best.success
    theta = post_fee_threshold(e, phi, beliefs)
    p = float(e.dist.sf(theta))
    k, w = _binom_window(e.n, p)
    expected_Q = float(w @ e.size_for(phi * k))
    return PostFeeBuildLargest(e, float(phi), theta, MechanismResult(
        mechanism="equal_share_post_fee",
        success=ok,
        status="optimised" if ok else "fee search did not converge",
        welfare=post_fee_welfare(e, phi, beliefs),
        thresholds=np.array([theta]),
        Q=np.array([expected_Q]),
        fees=np.array([float(phi)]),
        details={"n": e.n, "convention": e.convention, "prob_participate": p,
                 "expected_participants": e.n * p,
                 "prob_build": float(prob_some(e.n, p)),
                 "expected_Q": expected_Q,
                 "Q_meaning": "expected size E[c⁻¹(Xφ)], X ~ Bin(n, p)",
                 "fee_meaning": "posted fee φ paid by every participant"},
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
    The participation rule has no X in it, so ``e.convention`` does not change it.
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
        details={"n": e.n, "convention": e.convention,
                 "prob_participate": float(e.dist.sf(theta)),
                 "expected_Q": float(Q),
                 "expected_budget_surplus": slack,
                 "Q_meaning": "posted size, always built",
                 "fee_meaning": "posted fee φ paid by every participant"},
    ))


SCHEMES: dict[str, Callable[[Economy], PostSizeShareCost | PostFeeBuildLargest
                              | PostFeeAndSize]] = {
    "equal_share_post_size": post_size_share_cost,
    "equal_share_post_fee": post_fee_build_largest,
    "equal_share_post_fee_and_size": post_fee_and_size,
}
"""The schemes by their registry names (those of ``coordinator.mechanism.solve``)."""


def economy_of(market: Market, convention: Convention = "bayes") -> Economy:
    """The :class:`Economy` of a one-location market; ValueError for several locations."""
    if market.L != 1:
        raise ValueError(f"the equal-contribution schemes are defined for one location "
                         f"(slides); this market has {market.L}")
    loc = market.locations[0]
    return Economy(loc.dist, loc.n, loc.utility, loc.cost, convention=convention)


def solve_scheme(market: Market, name: str, convention: Convention = "bayes"
                 ) -> PostSizeShareCost | PostFeeBuildLargest | PostFeeAndSize:
    """Scheme ``name`` (a key of :data:`SCHEMES`) for a one-location market, with the
    participant-count ``convention``; ValueError for an unknown name or several
    locations."""
    if name not in SCHEMES:
        raise ValueError(f"unknown equal-contribution scheme {name!r}; choose from "
                         f"{sorted(SCHEMES)}")
    return SCHEMES[name](economy_of(market, convention))


__all__ = [
    "CONVENTIONS",
    "SCHEMES",
    "Convention",
    "CostFn",
    "Economy",
    "FeeBeliefs",
    "PostFeeAndSize",
    "PostFeeBuildLargest",
    "PostSizeShareCost",
    "ShareTable",
    "UtilityFn",
    "economy_of",
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
    "solve_scheme",
]
