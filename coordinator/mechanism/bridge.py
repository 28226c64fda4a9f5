"""The bridge: two users, one indivisible public good (slides "Example: A Bridge").

A bridge costs ``cost`` (slides: 1). User i's type θ_i is private, i.i.d. from a
:class:`TypeDistribution` (slides: U[0, 1]); if the bridge is built user i gains θ_i.
Everything here is exact or Gauss–Legendre quadrature split at the kinks of the
integrands, so for the uniform prior (piecewise-polynomial integrands) the numbers are
exact to rounding:

* first best (slides "Optimal mechanism design for the bridge"): build iff
  θ1 + θ2 ≥ cost, SW = E[(θ1 + θ2 − cost)^+] (= 1/6);
* second best (same slide, and "The Lagrangian"): build iff
  Σ_i (θ_i + λ g(θ_i)) ≥ (1 + λ) cost, λ chosen so that the ex-ante budget constraint
  E[(Σ_i g(θ_i) − cost) 1{build}] = 0 binds (U[0, 1]: θ1 + θ2 ≥ t = 5/4, λ = 1/2,
  SW = 9/64);
* fixed fee (slides "An fixed-fee design"): charge cost/2 each, build iff both accept
  (= 1/8).

The slides give three payment rules implementing the second best for U[0, 1]
(:func:`slide_rule`): (a) p_i = θ_i²/2 − 1/32 for θ_i > 1/4, (b) an ex-post budget
balanced version, (c) p_1 = (⅓(θ1 − θ2) + ½) 1{build}. :func:`analyse_rule` checks each
claimed property (interim IC/IR against Lemma 1, ex-ante and ex-post budget balance,
nonnegative payments, ex-post IR) and reports the worst violation honestly.
:class:`BridgeMechanism` runs the second best with a chosen rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import optimize

from .declared import one_location
from .distributions import TypeDistribution, gauss_nodes
from .result import BoolArray, FloatArray, MechanismResult, Outcome

Rule = Literal["a", "b", "c"]
RULES: tuple[Rule, ...] = ("a", "b", "c")

DirectRule = Callable[[FloatArray, FloatArray], tuple[BoolArray, FloatArray, FloatArray]]
"""A direct mechanism for the bridge: (θ1, θ2) ↦ (built, p1, p2), broadcasting."""

TOL = 1e-9
"""A property "holds" when its worst violation is at most this."""

# A 48-node Gauss–Legendre rule on [0, 1], mapped onto each inner integration piece
# (the pieces are split at every kink, so each integrand is smooth on its piece, and for
# U[0, 1] a polynomial of low degree: the rule is exact). Outer integrals use the
# composite rule of ``distributions.gauss_nodes``.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(48)
_X01, _W01 = 0.5 * (_GL_X + 1.0), 0.5 * _GL_W


def _nodes(lo: npt.ArrayLike, hi: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Nodes and weights on [lo, hi] for arrays of intervals: shape (..., K)."""
    a = np.asarray(lo, dtype=float)
    b = np.maximum(np.asarray(hi, dtype=float), a)
    span = b - a
    return a[..., None] + span[..., None] * _X01, span[..., None] * _W01


def _bisect_increasing(
    fun: Callable[[FloatArray], FloatArray], y: FloatArray, lo: float, hi: float
) -> FloatArray:
    """Vectorised root of fun(x) = y on [lo, hi] for nondecreasing ``fun``.

    Illinois (modified regula falsi) steps, with a bisection step whenever the secant
    point is not finite (fun may be −∞ at an end of the support) or the bracket shrank
    too little; stops at the resolution of floating point. Returns lo where
    y ≤ fun(lo) and hi where y > fun(hi).
    """
    y = np.asarray(y, dtype=float)
    a = np.full(y.shape, float(lo))
    b = np.full(y.shape, float(hi))
    with np.errstate(invalid="ignore"):
        fa = fun(a) - y
        fb = fun(b) - y
    below = ~(fa < 0.0)  # y ≤ fun(lo), or y = −∞
    above = fb < 0.0
    eps = np.finfo(float).eps
    x = 0.5 * (a + b)
    last = -np.ones(y.shape, dtype=np.int8)  # which end was replaced last (0 = a, 1 = b)
    for it in range(200):
        width = b - a
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            x = b - fb * width / (fb - fa)
        ok = np.isfinite(x) & (x > a) & (x < b)
        x = np.where(ok & (it % 4 != 3), x, 0.5 * (a + b))
        with np.errstate(invalid="ignore"):
            fx = fun(x) - y
        left = fx < 0.0  # root is right of x: replace a
        # Illinois: halve the kept end's value if the same end is replaced twice.
        fb = np.where(left & (last == 0), 0.5 * fb, fb)
        fa = np.where(~left & (last == 1), 0.5 * fa, fa)
        a, fa = np.where(left, x, a), np.where(left, fx, fa)
        b, fb = np.where(left, b, x), np.where(left, fb, fx)
        last = np.where(left, 0, 1).astype(np.int8)
        done = (b - a <= 4 * eps * np.maximum(1.0, np.abs(b))) | (fx == 0.0) | below | above
        if np.all(done):
            break
    x = np.where(fa == 0.0, a, np.where(fb == 0.0, b, x))
    x = np.clip(x, lo, hi)
    x = np.where(below, lo, x)
    return np.where(above, hi, x)


def virtual_value(dist: TypeDistribution, x: npt.ArrayLike) -> FloatArray:
    """g(θ) = θ − (1 − F(θ))/f(θ) (slides "The Equivalent Problem"), safe at the ends.

    Where 1 − F = 0 the value is θ; where f = 0 but 1 − F > 0 it is −∞.
    """
    x = np.asarray(x, dtype=float)
    sf = dist.sf(x)
    pdf = dist.pdf(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = x - sf / pdf
    g = np.where(sf <= 0.0, x, g)
    return np.where((pdf <= 0.0) & (sf > 0.0), -np.inf, g)


@dataclass(frozen=True, slots=True)
class BridgeSolution:
    """A "build iff Σ_i h(θ_i) ≥ level" rule with h(θ) = θ + λ g(θ), and its numbers.

    λ = 0, level = cost is the first best; the second best has the λ that makes the
    ex-ante budget constraint bind and level = (1 + λ) cost (slides "The Lagrangian").
    ``t`` is the threshold on θ1 + θ2 along the diagonal (for U[0, 1] the build region
    is exactly θ1 + θ2 ≥ t); ``theta_min`` is the lowest type with which the bridge is
    ever built, ``theta_all`` the lowest type with which it is always built.
    """

    dist: TypeDistribution
    cost: float
    lam: float
    level: float
    t: float
    theta_min: float
    theta_all: float
    welfare: float
    budget: float  # E[(Σ g(θ_i) − cost) 1{build}]
    prob_build: float

    def h(self, x: npt.ArrayLike) -> FloatArray:
        """θ + λ g(θ), the Lagrangian weight of a type."""
        x = np.asarray(x, dtype=float)
        if self.lam == 0.0:
            return x
        return x + self.lam * virtual_value(self.dist, x)

    def boundary(self, theta: npt.ArrayLike) -> FloatArray:
        """b(θ1): the bridge is built iff θ2 ≥ b(θ1) (clipped to the support)."""
        theta = np.asarray(theta, dtype=float)
        return _boundary(self.dist, self.lam, self.level, theta)

    def build(self, theta1: npt.ArrayLike, theta2: npt.ArrayLike) -> BoolArray:
        """Whether the bridge is built at declared types (θ1, θ2)."""
        t1 = np.asarray(theta1, dtype=float)
        t2 = np.asarray(theta2, dtype=float)
        t1, t2 = np.broadcast_arrays(t1, t2)
        inside = (t1 >= self.theta_min) & (t2 >= self.theta_min)
        h = self.h(np.stack([t1, t2]))
        with np.errstate(invalid="ignore"):
            return np.asarray(inside & (h[0] + h[1] >= self.level), dtype=bool)

    def V(self, theta: npt.ArrayLike) -> FloatArray:
        """Interim probability of building given one's own type: P(θ2 ≥ b(θ))."""
        theta = np.asarray(theta, dtype=float)
        v = self.dist.sf(self.boundary(theta))
        return np.where(theta < self.theta_min, 0.0, v)

    def integrated_V(self, theta: npt.ArrayLike) -> FloatArray:
        """∫_low^θ V(s) ds (V = 0 below theta_min and 1 above theta_all)."""
        theta = np.asarray(theta, dtype=float)
        top = np.clip(theta, self.theta_min, self.theta_all)
        x, w = _nodes(np.full(theta.shape, self.theta_min), top)
        inside = np.asarray(np.sum(w * self.V(x), axis=-1), dtype=float)
        return inside + np.maximum(theta - self.theta_all, 0.0)

    def lemma1_payment(self, theta: npt.ArrayLike) -> FloatArray:
        """Lemma 1 interim payment P(θ) = θ V(θ) − ∫_low^θ V, i.e. U(low) = 0.

        For U[0, 1]: θ²/2 − 1/32 for θ ≥ 1/4 and 0 below (so P(0) = 0).
        """
        theta = np.asarray(theta, dtype=float)
        return theta * self.V(theta) - self.integrated_V(theta)

    def expect_pair(self, inner: Callable[[FloatArray, FloatArray], FloatArray]) -> float:
        """E[inner(θ1, b(θ1))] over θ1, split at theta_min and theta_all.

        ``inner(θ1, b)`` must return the conditional integral over θ2 ≥ b (times f).
        """
        return _outer(self.dist, self.lam, self.level, self.theta_min, self.theta_all, inner)


def _boundary(dist: TypeDistribution, lam: float, level: float, theta: FloatArray) -> FloatArray:
    def h(x: FloatArray) -> FloatArray:
        return x if lam == 0.0 else x + lam * virtual_value(dist, x)

    with np.errstate(invalid="ignore"):
        target = level - h(theta)
    return _bisect_increasing(h, target, dist.low, dist.high)


def _kinks(dist: TypeDistribution, lam: float, level: float) -> tuple[float, float]:
    """theta_min (h(θ) + h(high) = level) and theta_all (h(θ) + h(low) = level)."""
    hi_low = _boundary(dist, lam, level, np.array([dist.high, dist.low]))
    return float(hi_low[0]), float(hi_low[1])


def _outer(
    dist: TypeDistribution,
    lam: float,
    level: float,
    theta_min: float,
    theta_all: float,
    inner: Callable[[FloatArray, FloatArray], FloatArray],
) -> float:
    edges = [dist.low, theta_min, theta_all, dist.high]
    total = 0.0
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        x, w = gauss_nodes(a, b)
        bnd = _boundary(dist, lam, level, x)
        total += float(np.dot(w * dist.pdf(x), inner(x, bnd)))
    return total


def _partial_mean(dist: TypeDistribution, b: FloatArray) -> FloatArray:
    """M(b) = ∫_b^high θ f(θ) dθ, vectorised in b."""
    x, w = _nodes(b, np.full(b.shape, dist.high))
    return np.asarray(np.sum(w * x * dist.pdf(x), axis=-1), dtype=float)


def _budget(dist: TypeDistribution, cost: float, lam: float) -> float:
    """E[(Σ_i g(θ_i) − cost) 1{build}] for the rule with multiplier λ."""
    level = (1.0 + lam) * cost
    theta_min, theta_all = _kinks(dist, lam, level)

    def budget_inner(t1: FloatArray, b: FloatArray) -> FloatArray:
        # ∫_b^high g dF = b (1 − F(b)), so the θ2-integral is closed form.
        return (virtual_value(dist, t1) + b - cost) * dist.sf(b)

    return _outer(dist, lam, level, theta_min, theta_all, budget_inner)


def _solution(dist: TypeDistribution, cost: float, lam: float) -> BridgeSolution:
    level = (1.0 + lam) * cost
    theta_min, theta_all = _kinks(dist, lam, level)

    def welfare_inner(t1: FloatArray, b: FloatArray) -> FloatArray:
        return (t1 - cost) * dist.sf(b) + _partial_mean(dist, b)

    def build_inner(t1: FloatArray, b: FloatArray) -> FloatArray:
        return dist.sf(b)

    args = (dist, lam, level, theta_min, theta_all)
    diag = float(_bisect_increasing(
        lambda x: x if lam == 0.0 else x + lam * virtual_value(dist, x),
        np.array([0.5 * level]), dist.low, dist.high)[0])
    return BridgeSolution(
        dist=dist,
        cost=float(cost),
        lam=float(lam),
        level=float(level),
        t=2.0 * diag,
        theta_min=theta_min,
        theta_all=theta_all,
        welfare=_outer(*args, welfare_inner),
        budget=_budget(dist, cost, lam),
        prob_build=_outer(*args, build_inner),
    )


def first_best(dist: TypeDistribution | None = None, cost: float = 1.0) -> BridgeSolution:
    """Build iff θ1 + θ2 ≥ cost; SW = E[(θ1 + θ2 − cost)^+] (slides: 1/6 for U[0, 1])."""
    return _solution(dist or TypeDistribution.uniform(), cost, 0.0)


def second_best(dist: TypeDistribution | None = None, cost: float = 1.0) -> BridgeSolution:
    """Slides "Optimal mechanism design for the bridge": the Lagrangian second best.

    Build iff Σ_i (θ_i + λ g(θ_i)) ≥ (1 + λ) cost, with λ ≥ 0 found by Brent's method so
    that E[(Σ_i g(θ_i) − cost) 1{build}] = 0 (λ = 0 if the first best already balances).
    For U[0, 1] and cost 1: t = 5/4, λ = 1/2, SW = 9/64.
    """
    dist = dist or TypeDistribution.uniform()
    if not dist.is_regular():
        raise ValueError(f"{dist.label}: g is not nondecreasing; the threshold rule needs it")

    def budget(lam: float) -> float:
        return _budget(dist, cost, lam)

    if budget(0.0) >= 0.0:
        return _solution(dist, cost, 0.0)
    hi = 1.0
    while budget(hi) < 0.0:
        hi *= 2.0
        if hi > 1e8:
            raise ValueError("the ex-ante budget cannot be balanced for any λ")
    lam = optimize.brentq(budget, 0.0, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    return _solution(dist, cost, float(lam))


def fixed_fee_welfare(
    dist: TypeDistribution | None = None, cost: float = 1.0, fee: float | None = None
) -> float:
    """Slides "An fixed-fee design": each pays ``fee`` (default cost/2), build iff both
    accept (θ_i ≥ fee). SW = E[(θ1 + θ2 − cost) 1{θ1 ≥ fee, θ2 ≥ fee}] (= 1/8)."""
    dist = dist or TypeDistribution.uniform()
    f = 0.5 * cost if fee is None else float(fee)
    s = float(dist.sf(f))
    m = dist.expect(lambda x: x, lo=f)
    return 2.0 * s * m - cost * s * s


# -- payment rules -------------------------------------------------------------------


def slide_rule(rule: Rule) -> DirectRule:
    """The slides' payment rules for U[0, 1], cost 1, literally (build iff θ1 + θ2 ≥ 1.25).

    (a) "Optimal mechanism design for the bridge": p_i = θ_i²/2 − 1/32 if θ_i > 1/4
        else 0 (charged whether or not the bridge is built);
    (b) "An ex-post budget balance design": p1 = ½ 1{build} + k(θ1) − k(θ2) with
        k(θ) = (3/32 − ½ θ(1 − θ)) 1{θ ≥ 1/4};
    (c) "A better optimal mechanism design": p1 = (⅓(θ1 − θ2) + ½) 1{build}.
    p2 is p1 with the roles swapped.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")

    def built_of(t1: FloatArray, t2: FloatArray) -> BoolArray:
        return np.asarray(t1 + t2 >= 1.25)

    def a(t1: FloatArray, t2: FloatArray) -> tuple[BoolArray, FloatArray, FloatArray]:
        def p(x: FloatArray) -> FloatArray:
            return np.where(x > 0.25, 0.5 * x * x - 1.0 / 32.0, 0.0)

        t1, t2 = np.broadcast_arrays(np.asarray(t1, float), np.asarray(t2, float))
        return built_of(t1, t2), p(t1), p(t2)

    def b(t1: FloatArray, t2: FloatArray) -> tuple[BoolArray, FloatArray, FloatArray]:
        def k(x: FloatArray) -> FloatArray:
            return np.where(x >= 0.25, 3.0 / 32.0 - 0.5 * x * (1.0 - x), 0.0)

        t1, t2 = np.broadcast_arrays(np.asarray(t1, float), np.asarray(t2, float))
        built = built_of(t1, t2)
        half = 0.5 * built
        return built, half + k(t1) - k(t2), half + k(t2) - k(t1)

    def c(t1: FloatArray, t2: FloatArray) -> tuple[BoolArray, FloatArray, FloatArray]:
        t1, t2 = np.broadcast_arrays(np.asarray(t1, float), np.asarray(t2, float))
        built = built_of(t1, t2)
        return (built, np.where(built, (t1 - t2) / 3.0 + 0.5, 0.0),
                np.where(built, (t2 - t1) / 3.0 + 0.5, 0.0))

    return {"a": a, "b": b, "c": c}[rule]


def _is_slides_case(dist: TypeDistribution, cost: float) -> bool:
    return (dist.spec.get("dist") == "uniform" and dist.low == 0.0 and dist.high == 1.0
            and cost == 1.0)


def solution_rule(solution: BridgeSolution, rule: Rule) -> DirectRule:
    """The rules of :func:`slide_rule`, built from a solved second best for any prior.

    (a) p_i = P(θ_i), the Lemma 1 interim payment (charged whether or not built);
    (b) p_i = (cost/2) 1{build} + H(θ_i) − H(θ_j), H = P − (cost/2) V, which has the same
        interim payments as (a) because E[P] = (cost/2) E[V] when the budget binds;
    (c) only for the slides' case U[0, 1], cost 1: p_i = (⅓(θ_i − θ_j) + ½) 1{build}.
    For U[0, 1] and cost 1 these coincide with :func:`slide_rule` (up to rounding of t).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "c" and not _is_slides_case(solution.dist, solution.cost):
        raise ValueError("rule 'c' is the slides' formula for U[0, 1] and cost 1 only")
    half = 0.5 * solution.cost
    P = _clipped_chebyshev(solution.lemma1_payment, solution.theta_min, solution.theta_all)
    V = _clipped_chebyshev(solution.V, solution.theta_min, solution.theta_all)

    def run(t1: FloatArray, t2: FloatArray) -> tuple[BoolArray, FloatArray, FloatArray]:
        t1, t2 = np.broadcast_arrays(np.asarray(t1, float), np.asarray(t2, float))
        built = solution.build(t1, t2)
        if rule == "a":
            return built, P(t1), P(t2)
        if rule == "b":
            h1 = P(t1) - half * V(t1)
            h2 = P(t2) - half * V(t2)
            return built, half * built + h1 - h2, half * built + h2 - h1
        return (built, np.where(built, (t1 - t2) / 3.0 + 0.5, 0.0),
                np.where(built, (t2 - t1) / 3.0 + 0.5, 0.0))

    return run


def _clipped_chebyshev(
    fun: Callable[[FloatArray], FloatArray], a: float, b: float, degree: int = 64
) -> Callable[[FloatArray], FloatArray]:
    """fun on [a, b] as a Chebyshev interpolant, constant (fun(a), fun(b)) outside.

    P and V of a solved bridge are constant below theta_min and above theta_all and
    analytic in between (polynomials for U[0, 1], where the interpolant is exact), so
    this is accurate to rounding and spares a root solve per evaluation.
    """
    if b <= a:
        va = float(fun(np.array([a]))[0])
        return lambda x: np.full(np.shape(x), va)
    cheb = np.polynomial.Chebyshev.interpolate(
        lambda x: fun(np.asarray(x, dtype=float)), degree, domain=[a, b])
    # Drop the coefficients below rounding (a quadratic for U[0, 1]): cheaper to evaluate.
    cheb = cheb.trim(1e-13 * max(1.0, float(np.max(np.abs(cheb.coef)))))

    def evaluate(x: FloatArray) -> FloatArray:
        return np.asarray(cheb(np.clip(np.asarray(x, dtype=float), a, b)), dtype=float)

    return evaluate


# -- property analysis ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PropertyCheck:
    """One property of a payment rule.

    ``violation`` is the worst violation found (0 when none); ``holds`` is
    ``violation ≤ TOL``. ``extreme`` is the extreme value of the quantity tested (e.g.
    the minimum of θ_i − p_i over built profiles) and ``at`` where it is attained
    ((θ1, θ2) for ex-post properties, (θ, θ') or (θ,) for interim ones).
    """

    holds: bool
    violation: float
    extreme: float
    at: tuple[float, ...]

    @staticmethod
    def of(violation: float, extreme: float, at: tuple[float, ...]) -> PropertyCheck:
        v = max(0.0, float(violation))
        return PropertyCheck(v <= TOL, v, float(extreme), tuple(float(a) for a in at))


@dataclass(frozen=True, slots=True)
class RuleReport:
    """What :func:`analyse_rule` found for one payment rule of the second best.

    ``payment_at_low`` is the rule's interim payment P_i(low) (P(0) for U[0, 1]);
    ``matches_lemma1`` compares P_i(θ) with the Lemma 1 formula θ V(θ) − ∫_low^θ V.
    """

    rule: str
    payment_at_low: float
    matches_lemma1: PropertyCheck
    interim_ic: PropertyCheck
    interim_ir: PropertyCheck
    ex_ante_budget_balance: PropertyCheck
    ex_post_budget_balance: PropertyCheck
    nonnegative_payments: PropertyCheck
    zero_payment_if_not_built: PropertyCheck
    ex_post_ir_if_built: PropertyCheck
    ex_post_ir_if_not_built: PropertyCheck

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "payment_at_low": self.payment_at_low}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, PropertyCheck):
                out[name] = {"holds": value.holds, "violation": value.violation,
                             "extreme": value.extreme, "at": list(value.at)}
        return out


def interim(
    solution: BridgeSolution, rule: DirectRule, theta: npt.ArrayLike, agent: int = 0
) -> tuple[FloatArray, FloatArray]:
    """Interim (V_i(θ), P_i(θ)) = E over the other's type of (1{build}, p_i).

    Quadrature over the other's type split at b(θ) and theta_min, where the slides'
    rules jump or kink, so it is exact to rounding for U[0, 1].
    """
    dist = solution.dist
    theta = np.atleast_1d(np.asarray(theta, dtype=float))
    bps = np.sort(np.stack([solution.boundary(theta),
                            np.full(theta.shape, solution.theta_min)], axis=-1), axis=-1)
    edges = np.concatenate([np.full(theta.shape + (1,), dist.low), bps,
                            np.full(theta.shape + (1,), dist.high)], axis=-1)
    V = np.zeros(theta.shape)
    P = np.zeros(theta.shape)
    for j in range(edges.shape[-1] - 1):
        x, w = _nodes(edges[..., j], edges[..., j + 1])
        own = np.broadcast_to(theta[..., None], x.shape)
        if agent == 0:
            built, p, _ = rule(own, x)
        else:
            built, _, p = rule(x, own)
        wf = w * dist.pdf(x)
        V += np.sum(wf * built, axis=-1)
        P += np.sum(wf * p, axis=-1)
    return V, P


def analyse_rule(
    rule: DirectRule, solution: BridgeSolution, name: str = "", grid: int = 512
) -> RuleReport:
    """Check the properties the slides discuss, for one direct rule.

    Interim quantities are exact (quadrature over the other's type); IC is checked on a
    (grid/2 + 1)² grid of (true θ, report θ'); ex-post properties on a (grid + 1)² grid
    of profiles (dyadic for U[0, 1], so 1/4, 5/8 and θ1 + θ2 = 5/4 lie on it). Suprema
    over open sets (e.g. just below the build boundary) are approached, not attained.
    """
    dist = solution.dist
    cost = solution.cost
    th = np.linspace(dist.low, dist.high, grid // 2 + 1)
    lemma = solution.lemma1_payment(th)
    ic_v, ic_x, ic_at = -np.inf, 0.0, (0.0, 0.0)
    ir_v, ir_x, ir_at = -np.inf, np.inf, (0.0,)
    lem_v, lem_at = -np.inf, (0.0,)
    p_low = 0.0
    for agent in (0, 1):
        V, P = interim(solution, rule, th, agent)
        if agent == 0:
            p_low = float(P[0])
        d = np.abs(P - lemma)
        k = int(np.argmax(d))
        if d[k] > lem_v:
            lem_v, lem_at = float(d[k]), (float(th[k]),)
        U = th * V - P
        gain = th[:, None] * V[None, :] - P[None, :] - U[:, None]
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[i, j] > ic_v:
            ic_v, ic_x, ic_at = float(gain[i, j]), float(gain[i, j]), (th[i], th[j])
        k = int(np.argmin(U))
        if -U[k] > ir_v:
            ir_v, ir_x, ir_at = float(-U[k]), float(U[k]), (float(th[k]),)

    # Ex-ante budget balance E[p1 + p2 − cost 1{build}], outer quadrature split at kinks.
    total = 0.0
    edges = [dist.low, solution.theta_min, solution.theta_all, dist.high]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        x, w = gauss_nodes(a, b)
        wf = w * dist.pdf(x)
        V1, P1 = interim(solution, rule, x, 0)
        _, P2 = interim(solution, rule, x, 1)
        total += float(np.dot(wf, P1 + P2 - cost * V1))

    # Ex-post properties on the grid of profiles.
    g = np.linspace(dist.low, dist.high, grid + 1)
    T1, T2 = np.meshgrid(g, g, indexing="ij")
    built, p1, p2 = rule(T1, T2)
    built = np.asarray(built, dtype=bool)

    def at(idx: Any) -> tuple[float, float]:
        i, j = np.unravel_index(int(idx), T1.shape)
        return float(T1[i, j]), float(T2[i, j])

    def extreme(values: FloatArray, mask: BoolArray, *, lowest: bool) -> tuple[float, Any]:
        v = np.where(mask, values, np.inf if lowest else -np.inf)
        idx = np.argmin(v) if lowest else np.argmax(v)
        return float(v.flat[idx]), idx

    bb = np.abs(p1 + p2 - cost * built)
    everywhere = np.ones_like(built)
    bb_x, bb_i = extreme(bb, everywhere, lowest=False)
    pmin = np.minimum(p1, p2)
    neg_x, neg_i = extreme(pmin, everywhere, lowest=True)
    pabs = np.maximum(np.abs(p1), np.abs(p2))
    nb_x, nb_i = extreme(pabs, ~built, lowest=False) if np.any(~built) else (0.0, 0)
    net = np.minimum(T1 - p1, T2 - p2)
    irb_x, irb_i = extreme(net, built, lowest=True) if np.any(built) else (0.0, 0)
    pmax = np.maximum(p1, p2)
    irn_x, irn_i = extreme(pmax, ~built, lowest=False) if np.any(~built) else (0.0, 0)

    return RuleReport(
        rule=name,
        payment_at_low=p_low,
        matches_lemma1=PropertyCheck.of(lem_v, lem_v, lem_at),
        interim_ic=PropertyCheck.of(ic_v, ic_x, ic_at),
        interim_ir=PropertyCheck.of(ir_v, ir_x, ir_at),
        ex_ante_budget_balance=PropertyCheck.of(abs(total), total, ()),
        ex_post_budget_balance=PropertyCheck.of(bb_x, bb_x, at(bb_i)),
        nonnegative_payments=PropertyCheck.of(-neg_x, neg_x, at(neg_i)),
        zero_payment_if_not_built=PropertyCheck.of(nb_x, nb_x, at(nb_i)),
        ex_post_ir_if_built=PropertyCheck.of(-irb_x, irb_x, at(irb_i)),
        ex_post_ir_if_not_built=PropertyCheck.of(irn_x, -irn_x, at(irn_i)),
    )


def slide_rule_reports(grid: int = 512) -> dict[str, RuleReport]:
    """:func:`analyse_rule` for the slides' three literal rules (U[0, 1], cost 1)."""
    sol = second_best()
    return {r: analyse_rule(slide_rule(r), sol, r, grid) for r in RULES}


# -- the mechanism ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BridgeMechanism:
    """The second-best bridge with payment rule ``rule`` ("a", "b" or "c").

    ``result.thresholds`` is [t] (build iff θ1 + θ2 ≥ t for U[0, 1]), ``result.lambdas``
    is [λ]. ``allocate`` takes the two declared types and charges the rule's payments.
    """

    rule: Rule = "a"
    dist: TypeDistribution = field(default_factory=TypeDistribution.uniform)
    cost: float = 1.0
    solution: BridgeSolution = field(init=False)
    result: MechanismResult = field(init=False)
    _pay: DirectRule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sol = second_best(self.dist, self.cost)
        pay = solution_rule(sol, self.rule)
        fb = first_best(self.dist, self.cost)
        ok = abs(sol.budget) <= 1e-10 * max(1.0, self.cost)
        object.__setattr__(self, "solution", sol)
        object.__setattr__(self, "_pay", pay)
        object.__setattr__(self, "result", MechanismResult(
            mechanism="bridge_second_best",
            success=ok,
            status="ex-ante budget binds" if ok else f"budget residual {sol.budget:.3g}",
            welfare=sol.welfare,
            lambdas=np.array([sol.lam]),
            thresholds=np.array([sol.t]),
            details={
                "rule": self.rule,
                "cost": self.cost,
                "first_best_welfare": fb.welfare,
                "fixed_fee_welfare": fixed_fee_welfare(self.dist, self.cost),
                "theta_min": sol.theta_min,
                "prob_build": sol.prob_build,
                "budget_residual": sol.budget,
                "build_rule": "build iff Σ_i (θ_i + λ g(θ_i)) ≥ (1 + λ) cost",
            },
        ))

    def allocate(self, types: npt.ArrayLike, locations: npt.ArrayLike | None = None) -> Outcome:
        """The rule's decision for the two users' declared types (:class:`Mechanism`).

        The bridge is the slides' two-user example: any other number of declarants is a
        ValueError, as is a location other than 0 or a type outside the support.
        """
        theta = one_location(types, locations, 2, self.dist.low, self.dist.high)
        if theta.shape != (2,):
            raise ValueError(f"the bridge has exactly 2 users, got types of shape {theta.shape}")
        built, p1, p2 = self._pay(theta[:1], theta[1:])
        b = bool(np.asarray(built)[0])
        return Outcome(
            included=np.ones(2, dtype=bool),
            Q=np.array([1.0 if b else 0.0]),
            payments=np.array([float(p1[0]), float(p2[0])]),
            location=np.zeros(2, dtype=np.int64),
            cost=np.array([self.cost if b else 0.0]),
            result=self.result,
        )
