"""Type distributions and their virtual value g (paper eq. 2).

A :class:`TypeDistribution` is any continuous scipy.stats distribution truncated to an
interval ``[low, high]``, with ``g(θ) = θ − (1 − F(θ)) / f(θ)`` derived from the
truncated F and f. It also carries the quadrature rule the mechanisms use for
expectations over one agent's type. No I/O, no global state: random draws take a
``numpy.random.Generator`` from the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

FloatArray = npt.NDArray[np.float64]

# Composite Gauss–Legendre rule used for one-agent expectations: PANELS panels of
# NODES nodes each. Exact for polynomials of degree < 2*NODES on each panel, so exact
# for the uniform-prior examples of the source documents; for smooth densities the
# error is far below the 6 significant digits the engine promises.
NODES = 48
PANELS = 8
_GL_X, _GL_W = np.polynomial.legendre.leggauss(NODES)


def gauss_nodes(lo: float, hi: float) -> tuple[FloatArray, FloatArray]:
    """Nodes and weights of the composite Gauss–Legendre rule on ``[lo, hi]``."""
    if hi <= lo:
        return np.zeros(0), np.zeros(0)
    edges = np.linspace(lo, hi, PANELS + 1)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[1:] + edges[:-1])
    x = (mid[:, None] + half[:, None] * _GL_X[None, :]).ravel()
    w = (half[:, None] * _GL_W[None, :]).ravel()
    return x, w


def _log1mexp(x: FloatArray) -> FloatArray:
    """log(1 − eˣ) for x ≤ 0, accurate at both ends (Mächler's switch at −log 2)."""
    x = np.minimum(np.asarray(x, dtype=float), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(x > -math.log(2.0), np.log(-np.expm1(x)),
                                   np.log1p(-np.exp(x))), dtype=np.float64)


# Geometric refinement toward an end of the support where the density is not smooth
# (Beta(0.5, 0.5): f ~ (θ − low)^(−1/2)): panels of ratio GRADING_RATIO, GRADING_LEVELS
# deep (down to 1e-20 of a panel), make the composite rule converge for integrable end
# singularities; the mass left in the last panel is below 1e-10 for f ~ θ^(−1/2).
GRADING_RATIO = 0.1
GRADING_LEVELS = 20
# An end counts as smooth when f 1e-12 and 1e-6 of the width inside it differ by less
# than this ratio.
SMOOTH_END = 1e-3


def graded_nodes(lo: float, hi: float, left: bool,
                 right: bool) -> tuple[FloatArray, FloatArray, float, float]:
    """:func:`gauss_nodes` with the end panels split geometrically toward singular ends;
    also the first and last panel edges (inside [lo, hi] when floats ran out)."""
    if hi <= lo or not (left or right):
        return (*gauss_nodes(lo, hi), lo, hi)
    h = (hi - lo) / PANELS
    edges = list(np.linspace(lo + (h if left else 0.0), hi - (h if right else 0.0),
                             PANELS - int(left) - int(right) + 1))
    steps = h * GRADING_RATIO ** np.arange(GRADING_LEVELS + 1)

    def toward(end: float) -> list[float]:
        # Panels narrower than this would put Gauss nodes on the end itself (floats run
        # out near an end away from zero): the sliver left is handled by the caller.
        keep = steps[steps >= 1e4 * np.spacing(abs(end))]
        full = keep.size == steps.size
        return [*(keep.tolist()), *([0.0] if full else [])]

    if left:
        edges = sorted({*(lo + d for d in toward(lo)), *edges})
    if right:
        edges = sorted({*(hi - d for d in toward(hi)), *edges})
    e = np.array(edges)
    half = 0.5 * np.diff(e)
    mid = 0.5 * (e[1:] + e[:-1])
    x = (mid[:, None] + half[:, None] * _GL_X[None, :]).ravel()
    w = (half[:, None] * _GL_W[None, :]).ravel()
    return x, w, float(e[0]), float(e[-1])


@dataclass(frozen=True, slots=True)
class TypeDistribution:
    """A continuous type distribution on ``[low, high]`` (a scipy distribution, truncated).

    ``label`` is how the distribution is named in tables; ``spec`` is the dict it was
    built from (so a market spec round-trips).

    Everything is computed in the log domain: the mass between two points, F(y) − F(x),
    is taken from the base law's ``logcdf`` where x lies below the base median and from
    its ``logsf`` above it, so neither form subtracts two numbers close to one. A normal
    prior truncated twelve standard deviations into a tail therefore keeps full relative
    precision in F, 1 − F, f and g, and a prior is refused only when its mass on
    ``[low, high]`` is exactly zero (its log is −∞), not when it underflows.
    """

    base: Any  # a frozen scipy.stats continuous distribution
    low: float
    high: float
    label: str
    spec: dict[str, Any] = field(default_factory=dict)
    _log_mass: float = field(init=False)
    _ends: tuple[float, float, float, float] = field(init=False)  # log F₀, log S₀ at ends
    # Caches: lazily filled, so left out of equality and repr (two equal priors stay
    # equal whatever has been asked of them).
    _regular: list[bool] = field(init=False, compare=False, repr=False)
    _ironing: dict[float, Any] = field(init=False, compare=False, repr=False)
    key: str = field(init=False)  # equal for equal specs: alike locations share solves

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high <= self.low:
            raise ValueError(
                f"type support must be a finite interval, got [{self.low}, {self.high}]")
        with np.errstate(all="ignore"):
            ends = (float(self.base.logcdf(self.low)), float(self.base.logsf(self.low)),
                    float(self.base.logcdf(self.high)), float(self.base.logsf(self.high)))
        object.__setattr__(self, "_ends", ends)
        with np.errstate(all="ignore"):
            log_mass = float(self._log_between(np.array(self.low), np.array(self.high)))
        if not log_mass > -math.inf:
            raise ValueError(f"{self.label}: no probability mass on [{self.low}, {self.high}]")
        object.__setattr__(self, "_log_mass", log_mass)
        object.__setattr__(self, "_regular", [])
        object.__setattr__(self, "_ironing", {})
        object.__setattr__(self, "key", repr(sorted(self.spec.items())))

    def _logs(self, x: FloatArray) -> tuple[Any, Any]:
        """(log F₀(x), log S₀(x)) of the base law; the support's ends from the cache."""
        if x.ndim == 0 and float(x) in (self.low, self.high):
            lF_lo, lS_lo, lF_hi, lS_hi = self._ends
            return (lF_lo, lS_lo) if float(x) == self.low else (lF_hi, lS_hi)
        return self.base.logcdf(x), self.base.logsf(x)

    def _log_between(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """log(F₀(y) − F₀(x)) of the base law for x ≤ y, without cancellation."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        with np.errstate(all="ignore"):
            lFx, lSx = self._logs(x)
            lFy, lSy = self._logs(y)
            lower = lFy + _log1mexp(lFx - lFy)
            upper = lSx + _log1mexp(lSy - lSx)
            # Above the median 1 − F₀ is the small, precise number; below it, F₀ is.
            out = np.where(lSx < lFx, upper, lower)
            out = np.where((y <= x) | np.isnan(out), -np.inf, out)
        return np.asarray(out, dtype=np.float64)

    # -- constructors -------------------------------------------------------------
    @classmethod
    def uniform(cls, low: float = 0.0, high: float = 1.0) -> TypeDistribution:
        return cls(
            stats.uniform(loc=low, scale=high - low),
            float(low),
            float(high),
            f"U[{low:g}, {high:g}]",
            {"dist": "uniform", "low": low, "high": high},
        )

    @classmethod
    def beta(cls, a: float, b: float, low: float = 0.0, high: float = 1.0) -> TypeDistribution:
        if a <= 0 or b <= 0:
            raise ValueError(f"Beta parameters must be positive, got a={a}, b={b}")
        return cls(
            stats.beta(a, b, loc=low, scale=high - low),
            float(low),
            float(high),
            f"Beta({a:g}, {b:g}) on [{low:g}, {high:g}]",
            {"dist": "beta", "a": a, "b": b, "low": low, "high": high},
        )

    @classmethod
    def from_scipy(
        cls, name: str, low: float, high: float, **params: float
    ) -> TypeDistribution:
        """Any continuous ``scipy.stats`` distribution, truncated to ``[low, high]``."""
        dist = getattr(stats, name, None)
        if not isinstance(dist, stats.rv_continuous):
            raise ValueError(f"{name!r} is not a continuous scipy.stats distribution")
        try:
            frozen = dist(**params)
        except TypeError as exc:
            raise ValueError(f"bad parameters for scipy.stats.{name}: {exc}") from exc
        args = ", ".join(f"{k}={v:g}" for k, v in params.items())
        return cls(
            frozen,
            float(low),
            float(high),
            f"{name}({args}) truncated to [{low:g}, {high:g}]",
            {"dist": "scipy", "name": name, "params": dict(params), "low": low, "high": high},
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TypeDistribution:
        """Build from the ``type`` table of a market spec (see README)."""
        kind = d.get("dist")
        known = {"uniform": {"dist", "low", "high"},
                 "beta": {"dist", "a", "b", "low", "high"},
                 "scipy": {"dist", "name", "params", "low", "high"}}
        if kind not in known:
            raise ValueError(f"type.dist must be one of {sorted(known)}, got {kind!r}")
        unknown = set(d) - known[kind]
        if unknown:
            raise ValueError(f"unknown keys in type table: {sorted(unknown)}")
        required = {"uniform": (), "beta": ("a", "b"), "scipy": ("name",)}[kind]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"type table for dist = {kind!r} needs {', '.join(missing)}")

        def num(key: str, default: float) -> float:
            x = d.get(key, default)
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise ValueError(f"type.{key} must be a number, got {x!r}")
            return float(x)

        low, high = num("low", 0.0), num("high", 1.0)
        if kind == "uniform":
            return cls.uniform(low, high)
        if kind == "beta":
            return cls.beta(num("a", 0.0), num("b", 0.0), low, high)
        params = d.get("params", {})
        if not isinstance(params, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in params.values()):
            raise ValueError("type.params must be a table of numbers")
        return cls.from_scipy(str(d["name"]), low, high, **{k: float(v) for k, v in params.items()})

    # -- the truncated distribution -----------------------------------------------
    def logcdf(self, x: npt.ArrayLike) -> FloatArray:
        t: FloatArray = np.clip(np.asarray(x, dtype=float), self.low, self.high)
        return np.minimum(self._log_between(np.asarray(self.low), t) - self._log_mass, 0.0)

    def logsf(self, x: npt.ArrayLike) -> FloatArray:
        t: FloatArray = np.clip(np.asarray(x, dtype=float), self.low, self.high)
        return np.minimum(self._log_between(t, np.asarray(self.high)) - self._log_mass, 0.0)

    def logpdf(self, x: npt.ArrayLike) -> FloatArray:
        x = np.asarray(x, dtype=float)
        inside = (x >= self.low) & (x <= self.high)
        with np.errstate(all="ignore"):
            return np.asarray(np.where(inside, self.base.logpdf(x) - self._log_mass, -np.inf),
                              dtype=np.float64)

    @property
    def _uniform(self) -> bool:
        # U[low, high] has closed forms: no scipy call at all on the engine's hot paths.
        return self.spec.get("dist") == "uniform"

    def cdf(self, x: npt.ArrayLike) -> FloatArray:
        if self._uniform:
            t = np.clip(np.asarray(x, dtype=float), self.low, self.high)
            return np.asarray((t - self.low) / (self.high - self.low), dtype=np.float64)
        return np.exp(self.logcdf(x))

    def sf(self, x: npt.ArrayLike) -> FloatArray:
        if self._uniform:
            t = np.clip(np.asarray(x, dtype=float), self.low, self.high)
            return np.asarray((self.high - t) / (self.high - self.low), dtype=np.float64)
        return np.exp(self.logsf(x))

    def pdf(self, x: npt.ArrayLike) -> FloatArray:
        if self._uniform:
            t = np.asarray(x, dtype=float)
            inside = (t >= self.low) & (t <= self.high)
            return np.where(inside, 1.0 / (self.high - self.low), 0.0)
        return np.exp(self.logpdf(x))

    def ppf(self, u: npt.ArrayLike) -> FloatArray:
        """Quantiles by inverting the log-domain cdf: direct where the base law's own
        (i)sf is precise, a vectorised bisection on log F elsewhere."""
        q: FloatArray = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        with np.errstate(all="ignore"):
            mass = math.exp(self._log_mass)
            lFa = float(self.base.logcdf(self.low))
            lSb = float(self.base.logsf(self.high))
            if mass > 1e-280 and lFa < math.log(0.5):
                x = self.base.ppf(math.exp(lFa) + q * mass)
            elif mass > 1e-280:
                x = self.base.isf(math.exp(lSb) + (1.0 - q) * mass)
            else:
                x = np.full(q.shape, np.nan)
        x = np.asarray(x, dtype=float)
        bad = ~np.isfinite(x) | (x < self.low) | (x > self.high)
        if mass <= 1e-280 or np.any(bad):
            # The base law's own inverse cannot see this far into a tail.
            lu = np.log(np.where(bad, q, 0.5))
            a = np.full(q.shape, self.low)
            b = np.full(q.shape, self.high)
            for _ in range(1100):  # halves [low, high] down to the spacing of floats
                mid = 0.5 * (a + b)
                below = self.logcdf(mid) < lu
                a = np.where(below, mid, a)
                b = np.where(below, b, mid)
                if np.all((b - a) <= 4e-16 * np.maximum(1.0, np.abs(b))):
                    break
            x = np.where(bad, 0.5 * (a + b), x)
        return np.asarray(np.clip(x, self.low, self.high), dtype=np.float64)

    def rvs(self, size: int | tuple[int, ...], rng: np.random.Generator) -> FloatArray:
        """Draws by inversion, so the same generator state gives the same types."""
        return self.ppf(rng.random(size))

    def g(self, x: npt.ArrayLike) -> FloatArray:
        """Virtual value g(θ) = θ − (1 − F(θ)) / f(θ), paper eq. (2), as θ − exp(log(1 − F)
        − log f): far in a tail both factors underflow while their ratio does not."""
        x = np.asarray(x, dtype=float)
        if self._uniform:
            # θ − (high − θ) inside the support (and θ at its top, as below).
            return np.asarray(np.where(x < self.high, 2.0 * x - self.high, x), dtype=np.float64)
        ls = self.logsf(x)
        lf = self.logpdf(x)
        with np.errstate(all="ignore"):
            # At the top of the support 1 − F = 0: g = θ there even where f = 0 too.
            return np.asarray(np.where(ls > -np.inf, x - np.exp(ls - lf), x), dtype=np.float64)

    def is_regular(self, points: int = 2001) -> bool:
        """Whether g is nondecreasing (the paper's standing assumption after eq. 2)."""
        if self._regular:
            return self._regular[0]
        if self._uniform:
            return True  # g = 2θ − high
        x = np.linspace(self.low, self.high, points)[1:-1]
        gx = self.g(x)
        ok = bool(np.all(np.diff(gx) >= -1e-9 * (1.0 + np.abs(gx[1:]))))
        self._regular.append(ok)
        return ok

    def nodes(self, lo: float | None = None,
              hi: float | None = None) -> tuple[FloatArray, FloatArray]:
        """Quadrature nodes and weights on [lo, hi] for integrals against f: the composite
        Gauss–Legendre rule, graded toward an end of the support where f is unbounded."""
        a = self.low if lo is None else max(lo, self.low)
        b = self.high if hi is None else min(hi, self.high)
        width = self.high - self.low

        def rough(end: float, inward: float) -> bool:
            near, far = self.pdf(np.array([end + inward * 1e-12 * width,
                                           end + inward * 1e-6 * width]))
            return not abs(float(near) - float(far)) <= SMOOTH_END * abs(float(far))

        left = a == self.low and rough(a, 1.0)
        right = b == self.high and rough(b, -1.0)
        x, w, e0, e1 = graded_nodes(a, b, left, right)
        if x.size and (left or right):
            # Grading stops at the spacing of floats; the mass of the sliver left between
            # the last panel and each end (1e-8 for f ~ (1 − θ)^(−1/2) at θ = 1) goes to
            # one node in its middle, weighted so that Σ w f = the sliver's mass.
            extra_x, extra_w = [], []
            for lo_s, hi_s in ((a, e0), (e1, b)):
                if hi_s <= lo_s:
                    continue
                mass = float(np.exp(self._log_between(np.array(lo_s), np.array(hi_s))
                                    - self._log_mass))
                mid = 0.5 * (lo_s + hi_s)
                f_mid = float(self.pdf(np.array(mid)))
                if mass > 0 and np.isfinite(f_mid) and f_mid > 0 and lo_s < mid < hi_s:
                    extra_x.append(mid)
                    extra_w.append(mass / f_mid)
            x = np.concatenate([x, extra_x])
            w = np.concatenate([w, extra_w])
        return x, w

    def expect(self, func: Callable[[FloatArray], FloatArray], lo: float | None = None,
               hi: float | None = None) -> float:
        """∫_lo^hi func(θ) f(θ) dθ by :meth:`nodes`."""
        x, w = self.nodes(lo, hi)
        if x.size == 0:
            return 0.0
        return float(np.dot(w, func(x) * self.pdf(x)))

    def mean(self) -> float:
        return self.expect(lambda t: t)

    def weight(self, lam: float) -> VirtualWeight:
        """The agent's (ironed) weight θ + λ g(θ) in the Lagrangian (17)/(25), cached."""
        lam = float(lam)
        cached = self._ironing.get(lam)
        if cached is None:
            if len(self._ironing) >= IRONING_CACHE:
                self._ironing.clear()
            cached = VirtualWeight.build(self, lam)
            self._ironing[lam] = cached
        return cached


# Quantile cells of the ironing table, and the Gauss–Legendre rule for ∫ F⁻¹ on each.
IRONING_CELLS = 4096
IRONING_CACHE = 64
_IRON_X, _IRON_W = np.polynomial.legendre.leggauss(8)
# A chord counts as ironing only where the cumulative lies this far (relative to its
# scale) above it: below that the gap is rounding, not a decreasing weight.
IRONING_GAP = 1e-12


@dataclass(frozen=True, slots=True)
class VirtualWeight:
    """w(θ) = θ + λ g(θ), ironed where it decreases (Myerson 1981, section 6).

    In quantiles u = F(θ), let Φ(u) = ∫₀ᵘ w(F⁻¹(s)) ds = T(u) + λ H(u), with
    T(u) = ∫₀ᵘ F⁻¹ and H(u) = ∫₀ᵘ g(F⁻¹) = low − F⁻¹(u) (1 − u) (since ∫ g f = −θ(1 − F)).
    The ironed weight w̄ is the derivative of the lower convex hull Φ̂ of Φ: equal to w
    where Φ̂ = Φ and constant (the chord's slope) on each interval where Φ̂ < Φ. It is
    nondecreasing, so pointwise maximisation of the Lagrangian with w̄ gives a monotone
    allocation, constant on every ironed interval; there ∫ (w − w̄) V dF = 0 for any V
    constant on those intervals, so welfare, the budget constraint (3)/(24) and the
    revenue identity (14) hold with ḡ = (w̄ − θ)/λ in place of g. For a regular prior
    (g nondecreasing) w̄ = w and no table is built.

    ``intervals`` (m, 2) are the ironed θ-intervals, ``levels`` (m,) w̄ on each,
    ``u_edges`` (m, 2) their quantiles and ``phi_edges`` (m, 2) Φ there. The hull is
    taken on IRONING_CELLS equal quantile cells; endpoints are then moved to where w
    equals the chord's slope (the tangency condition), so the levels are exact to the
    quadrature of T, not to the grid.
    """

    dist: TypeDistribution
    lam: float
    intervals: FloatArray
    levels: FloatArray
    u_edges: FloatArray
    phi_edges: FloatArray
    u_grid: FloatArray  # the quantile grid and T on it (empty when not ironed)
    T_grid: FloatArray
    cache: dict[str, float] = field(default_factory=dict, compare=False,
                                    repr=False)  # derived scalars (θ₀)

    @classmethod
    def build(cls, dist: TypeDistribution, lam: float) -> VirtualWeight:
        empty = np.zeros((0, 2))
        none = np.zeros(0)
        if lam <= 0.0 or not math.isfinite(lam) or dist.is_regular():
            return cls(dist, lam, empty, none, empty, empty, none, none)
        u = np.linspace(0.0, 1.0, IRONING_CELLS + 1)
        th = dist.ppf(u)
        th[0], th[-1] = dist.low, dist.high
        T = np.concatenate([[0.0], np.cumsum(_quantile_integral(dist, u[:-1], u[1:]))])
        Phi = T + lam * (dist.low - th * (1.0 - u))
        hull = _lower_hull(u, Phi)
        scale = max(1.0, float(np.max(np.abs(Phi))))
        ivs, lvls, ues, pes = [], [], [], []
        for a, b in zip(hull[:-1], hull[1:], strict=True):
            if b - a < 2:
                continue
            chord = Phi[a] + (Phi[b] - Phi[a]) * (u[a:b + 1] - u[a]) / (u[b] - u[a])
            if float(np.max(Phi[a:b + 1] - chord)) <= IRONING_GAP * scale:
                continue
            ua, ub = float(u[a]), float(u[b])
            pa, pb = float(Phi[a]), float(Phi[b])
            # Tangency: at an interior end of an ironed interval w equals the slope.
            # A few fixed-point steps move each end within its neighbouring cells.
            for _ in range(4):
                c = (pb - pa) / (ub - ua)
                if a > 0:
                    ua = _solve_weight(dist, lam, c, float(u[a - 1]), float(u[min(a + 1, b)]))
                    pa = float(_phi_at(dist, lam, u, T, ua))
                if b < IRONING_CELLS:
                    ub = _solve_weight(dist, lam, c, float(u[max(b - 1, a)]), float(u[b + 1]))
                    pb = float(_phi_at(dist, lam, u, T, ub))
            c = (pb - pa) / (ub - ua)
            ivs.append([float(dist.ppf(ua)) if ua > 0 else dist.low,
                        float(dist.ppf(ub)) if ub < 1 else dist.high])
            lvls.append(c)
            ues.append([ua, ub])
            pes.append([pa, pb])
        if not ivs:
            return cls(dist, lam, empty, none, empty, empty, none, none)
        return cls(dist, lam, np.array(ivs), np.array(lvls), np.array(ues), np.array(pes),
                   u, T)

    @property
    def ironed(self) -> bool:
        return bool(self.levels.size)

    def _where(self, theta: FloatArray) -> npt.NDArray[np.int64]:
        """Index of the ironed interval holding each θ, or −1."""
        idx = np.full(theta.shape, -1, dtype=np.int64)
        for j, (a, b) in enumerate(self.intervals):
            idx[(theta >= a) & (theta <= b)] = j
        return idx

    def w(self, theta: npt.ArrayLike) -> FloatArray:
        """w̄(θ); θ itself at λ = 0 (where g may be −∞, 0 · (−∞) must not poison it)."""
        t = np.asarray(theta, dtype=float)
        if self.lam == 0.0:
            return np.array(t, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            out = np.asarray(t + self.lam * self.dist.g(t), dtype=np.float64)
        if self.ironed:
            j = self._where(t)
            out = np.where(j >= 0, self.levels[np.maximum(j, 0)], out)
        return out

    def gf(self, theta: FloatArray) -> FloatArray:
        """ḡ(θ) f(θ) pointwise (g f = θ f − (1 − F) where not ironed; finite where f → 0)."""
        f = self.dist.pdf(theta)
        out = theta * f - self.dist.sf(theta)
        if self.ironed:
            j = self._where(theta)
            inside = j >= 0
            out = np.where(inside, (self.levels[np.maximum(j, 0)] - theta) / self.lam * f, out)
        return np.asarray(out, dtype=np.float64)

    def g_mass(self, edges: FloatArray) -> FloatArray:
        """∫ ḡ f dθ between consecutive ``edges`` (sorted): exact, as differences of the
        cumulative −θ(1 − F(θ)) + D(F(θ)), D = (Φ̂ − Φ)/λ the ironing correction."""
        edges = np.asarray(edges, dtype=float)
        cum = -edges * self.dist.sf(edges)
        if self.ironed:
            cum = cum + self._correction(edges)
        return np.asarray(np.diff(cum), dtype=np.float64)

    def g_above(self, theta: FloatArray) -> FloatArray:
        """∫_θ^high ḡ f = θ (1 − F(θ)) − D(F(θ))."""
        theta = np.asarray(theta, dtype=float)
        out = theta * self.dist.sf(theta)
        if self.ironed:
            out = out - self._correction(theta)
        return np.asarray(out, dtype=np.float64)

    def _correction(self, theta: FloatArray) -> FloatArray:
        """D(F(θ)) = (Φ̂ − Φ)(F(θ)) / λ: zero outside the ironed intervals, ≤ 0 inside."""
        out = np.zeros(theta.shape)
        j = self._where(theta)
        for k in np.unique(j[j >= 0]):
            sel = j == k
            ua, ub = self.u_edges[k]
            pa = self.phi_edges[k, 0]
            uu = np.clip(self.dist.cdf(theta[sel]), ua, ub)
            phi = _phi_at(self.dist, self.lam, self.u_grid, self.T_grid, uu)
            hull = pa + self.levels[k] * (uu - ua)
            out[sel] = (hull - phi) / self.lam
        return out


def _quantile_integral(dist: TypeDistribution, a: FloatArray, b: FloatArray) -> FloatArray:
    """∫_a^b F⁻¹(s) ds for arrays of quantile intervals (8-point Gauss–Legendre each;
    F⁻¹ is smooth wherever f > 0, and bounded, so the rule converges at the ends too)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    mid = 0.5 * (a + b)
    half = 0.5 * (b - a)
    nodes = mid[..., None] + half[..., None] * _IRON_X
    return np.asarray((dist.ppf(nodes) * _IRON_W).sum(axis=-1) * half, dtype=np.float64)


def _phi_at(dist: TypeDistribution, lam: float, u: FloatArray, T: FloatArray,
            x: npt.ArrayLike) -> FloatArray:
    """Φ(x) = T(x) + λ H(x): T from the table on the grid u plus the integral over the
    last partial cell (so a kink of F⁻¹ costs at most one cell's quadrature error)."""
    x = np.asarray(x, dtype=float)
    i = np.clip(np.searchsorted(u, x, side="right") - 1, 0, u.size - 2)
    t_x = dist.ppf(x)
    rest = _quantile_integral(dist, u[i], x)
    return np.asarray(T[i] + rest + lam * (dist.low - t_x * (1.0 - x)), dtype=np.float64)


def _solve_weight(dist: TypeDistribution, lam: float, c: float, ua: float, ub: float) -> float:
    """A quantile in [ua, ub] where w(F⁻¹(u)) = c (bisection; the nearer end if none)."""
    def f(x: float) -> float:
        t = float(dist.ppf(np.array(x)))
        with np.errstate(all="ignore"):
            return float(t + lam * float(dist.g(np.array(t)))) - c

    fa, fb = f(ua), f(ub)
    if not (math.isfinite(fa) and math.isfinite(fb)) or fa * fb > 0:
        return ua if abs(fa) < abs(fb) else ub
    for _ in range(60):
        m = 0.5 * (ua + ub)
        fm = f(m)
        if (fm > 0) == (fa > 0):
            ua, fa = m, fm
        else:
            ub = m
    return 0.5 * (ua + ub)


def _lower_hull(x: FloatArray, y: FloatArray) -> list[int]:
    """Indices of the lower convex hull of the points (x_i, y_i), x increasing."""
    hull: list[int] = []
    for i in range(x.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # Drop b if it lies on or above the segment from a to i.
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull
