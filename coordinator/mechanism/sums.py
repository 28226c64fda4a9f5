"""Expectations of functions of Z = Σ_k Σ_j x_k(θ_kj): the engine behind every mechanism.

Under the pointwise Lagrangian solution ((17), (25)) location l's size depends on the
declared types only through the weighted sum of included agents' virtual weights,
Z_l = Σ_k W_kl/(1+λ_l) Σ_j π_k(θ_kj) (θ_kj + λ_k g_k(θ_kj)). Agents are independent,
so Z_l is a sum of independent variables, one law per home location k ("group").
Expected welfare, the budget constraints (3)/(24) and the interim V of (8) are all of
the forms E[φ(Z)], E[y(θ_k1) π φ(Z)] (y = θ or g) and E[φ(x + Z_{−k1})].

Two exact methods, chosen automatically:

* moments — when every φ is c·Z^m with integer m (power utility and cost with
  integer exponents α/(β−α) and β/(β−α), as in the slides' example) and Z ≥ 0 almost
  surely (exclusion, or a Chernoff bound shows P(Z < 0) below 1e-18): moments of
  sums of independent agents from cumulants, one-agent moments by Gauss–Legendre.
  Error: quadrature only (near machine precision).
* lattice — anything else (any φ, Z of either sign, discrete sizes): each agent's
  law is discretised on bins aligned with its support (bin masses exact from F, the
  g-tilted masses exact from ∫ g f = [−θ(1−F)]), the n-fold convolution is done by
  FFT, and two bin widths are combined by Richardson extrapolation; the estimated
  relative error is reported.

No I/O, no global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .distributions import TypeDistribution
from .provision import Phi, Power, Step

FloatArray = npt.NDArray[np.float64]

# Below this bound on P(Z < 0) the positive part in φ(Z⁺) is treated as never active.
NEGLIGIBLE_PROBABILITY = 1e-18
# Bins across the widest one-agent support in the coarse lattice (the fine one has 2x).
LATTICE_BINS = 512
MAX_FFT = 1 << 20
# Default relative tolerance on the lattice's error estimate (six significant digits with
# a margin: the estimate is the whole coarse-to-fine change, several times the error of
# the extrapolated value it accompanies).
DEFAULT_TOL = 1e-6
# Half-width of the lattice window, in standard deviations of Z, when the full
# support of Z would not fit in MAX_FFT points (the mass outside is < 1e-300).
WINDOW_SDS = 40.0


def virtual_weight(dist: TypeDistribution, lam: float, theta: npt.ArrayLike) -> FloatArray:
    """θ + λ g(θ): the agent's weight in the Lagrangian (17)/(25), ironed where it
    decreases (:class:`~coordinator.mechanism.distributions.VirtualWeight`)."""
    return dist.weight(lam).w(theta)


def threshold(dist: TypeDistribution, lam: float) -> float:
    """The exclusion threshold θ₀: w̄(θ) = θ + λ ḡ(θ) > 0 exactly for θ > θ₀ (w̄ is
    nondecreasing, ironed where g decreases). Remembered per (distribution, λ): the
    solvers ask for the same threshold many times."""
    vw = dist.weight(lam)
    if "theta0" not in vw.cache:
        vw.cache["theta0"] = (float(thresholds([dist], np.array([lam]))[0])
                              if dist.is_regular() else _bisect_threshold(dist, lam))
    return vw.cache["theta0"]


def _bisect_threshold(dist: TypeDistribution, lam: float) -> float:
    lo, hi = dist.low, dist.high

    def w(t: float) -> float:
        v = float(virtual_weight(dist, lam, t))
        return v if math.isfinite(v) else -math.inf

    if w(lo) >= 0.0:
        return lo
    if w(hi) <= 0.0:
        return hi
    # Bisection rather than brentq: w may be −inf near a zero of the density.
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if w(mid) > 0.0:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 4e-16 * max(1.0, abs(hi)):
            break
    return 0.5 * (lo + hi)


def invert_weight(dist: TypeDistribution, lam: float, values: FloatArray,
                  lo: float, hi: float) -> FloatArray:
    """θ with θ + λ g(θ) = value, for each value, by vectorised bisection on [lo, hi]."""
    a = np.full(values.shape, lo)
    b = np.full(values.shape, hi)
    for _ in range(64):
        mid = 0.5 * (a + b)
        wm = virtual_weight(dist, lam, mid)
        above = np.where(np.isfinite(wm), wm, -np.inf) >= values
        b = np.where(above, mid, b)
        a = np.where(above, a, mid)
    return np.asarray(0.5 * (a + b), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Group:
    """The agents of one home location as they enter one location's sum Z.

    Each contributes x = coef · π(θ) · (θ + λ g(θ)), with π = 1{θ > θ₀} when exclusion
    is allowed and π = 1 when it is not.
    """

    n: int
    dist: TypeDistribution
    lam: float
    coef: float
    exclusion: bool

    @property
    def theta0(self) -> float:
        return threshold(self.dist, self.lam) if self.exclusion else self.dist.low

    def x(self, theta: npt.ArrayLike) -> FloatArray:
        return self.coef * virtual_weight(self.dist, self.lam, theta)


def _tilt_weights(dist: TypeDistribution, lam: float,
                  theta: FloatArray) -> tuple[FloatArray, FloatArray]:
    """f(θ) and ḡ(θ) f(θ), the (ironed) virtual value times the density: θ f − (1 − F)
    where not ironed (finite where f → 0)."""
    return dist.pdf(theta), dist.weight(lam).gf(theta)


class SumLaw:
    """The law of Z for one location; see the module docstring for the three forms."""

    method: str
    rel_error: float

    def expect(self, phi: Phi) -> float:
        raise NotImplementedError

    def tilted(self, phi: Phi, k: int) -> tuple[float, float]:
        """(E[θ π φ(Z)], E[g(θ) π φ(Z)]) for one agent of group k."""
        raise NotImplementedError

    def given(self, phi: Phi, k: int, x: FloatArray) -> FloatArray:
        """E[φ(x + Z₋)], Z₋ the sum without one agent of group k, for each x."""
        raise NotImplementedError


# -- the moment method ---------------------------------------------------------------


def _cumulants(m: FloatArray) -> FloatArray:
    """Cumulants κ_1..κ_K from raw moments m_0..m_K (m_0 = 1) along the last axis,
    κ_r = m_r − Σ_{1≤j<r} C(r−1, j−1) κ_j m_{r−j}; κ[..., 0] is unused (zero)."""
    K = m.shape[-1] - 1
    k = np.zeros_like(m)
    for r in range(1, K + 1):
        s = m[..., r].copy()
        for j in range(1, r):
            s -= math.comb(r - 1, j - 1) * k[..., j] * m[..., r - j]
        k[..., r] = s
    return k


def _moments(k: FloatArray) -> FloatArray:
    """Raw moments m_0..m_K from cumulants κ_1..κ_K along the last axis,
    m_r = Σ_{1≤j≤r} C(r−1, j−1) κ_j m_{r−j} (κ[..., 0] is ignored)."""
    K = k.shape[-1] - 1
    m = np.zeros_like(k)
    m[..., 0] = 1.0
    for r in range(1, K + 1):
        s = k[..., r].copy()
        for j in range(1, r):
            s += math.comb(r - 1, j - 1) * k[..., j] * m[..., r - j]
        m[..., r] = s
    return m


def integer_exponent(phi: Phi) -> int | None:
    if isinstance(phi, Power) and phi.exponent >= 0:
        r = round(phi.exponent)
        if abs(phi.exponent - r) < 1e-12:
            return int(r)
    return None


def _exponent(phi: Phi, K: int) -> tuple[float, int]:
    """(coef, r) of a power form c·Z^r with integer r ≤ K, as the moment laws need."""
    r = integer_exponent(phi)
    if r is None or r > K:
        raise ValueError(f"the moment method needs c·Z^r with an integer r <= {K}, got {phi!r}")
    assert isinstance(phi, Power)
    return phi.coef, r


class MomentLaw(SumLaw):
    """Z from its moments: ``mz`` (K+1,) the raw moments of Z; for each group k,
    ``minus[k]`` (K+1,) those of Z without one agent of k and ``t_theta[k]``,
    ``t_g[k]`` (K+1,) that agent's E[θ π x^r] and E[ḡ π x^r]. Built by quadrature
    (:meth:`of_groups`) or from the vectorised engine (:mod:`.moments`)."""

    method = "moments"
    rel_error = 0.0

    def __init__(self, K: int, mz: FloatArray, minus: FloatArray, t_theta: FloatArray,
                 t_g: FloatArray) -> None:
        self.K = K
        self.mz = mz
        self.minus = minus
        self.t_theta = t_theta
        self.t_g = t_g

    @classmethod
    def of_groups(cls, groups: list[Group], K: int) -> MomentLaw:
        """One-agent moments by the prior's quadrature rule (Gauss–Legendre), the sum's
        from cumulants (independent agents: κ(Z) = Σ_k n_k κ(x_k))."""
        m = np.empty((len(groups), K + 1))
        t_theta = np.empty_like(m)
        t_g = np.empty_like(m)
        for i, grp in enumerate(groups):
            th, wq = grp.dist.nodes(grp.theta0, grp.dist.high)
            f, gf = _tilt_weights(grp.dist, grp.lam, th)
            x = grp.x(th)
            powers = x[None, :] ** np.arange(K + 1)[:, None]
            m[i] = powers @ (wq * f)
            t_theta[i] = powers @ (wq * th * f)
            t_g[i] = powers @ (wq * gf)
        m[:, 0] = 1.0  # the excluded agents' atom at x = 0 completes the mass
        kappa = _cumulants(m)
        kz = np.array([grp.n for grp in groups], dtype=float) @ kappa
        return cls(K, _moments(kz), _moments(kz[None, :] - kappa), t_theta, t_g)

    def expect(self, phi: Phi) -> float:
        c, r = _exponent(phi, self.K)
        return float(c * self.mz[r])

    def tilted(self, phi: Phi, k: int) -> tuple[float, float]:
        c, r = _exponent(phi, self.K)
        mm = self.minus[k]
        w = np.array([math.comb(r, j) * mm[r - j] for j in range(r + 1)])
        return (float(c * w @ self.t_theta[k][: r + 1]),
                float(c * w @ self.t_g[k][: r + 1]))

    def given(self, phi: Phi, k: int, x: FloatArray) -> FloatArray:
        c, r = _exponent(phi, self.K)
        mm = self.minus[k]
        x = np.asarray(x, dtype=float)
        out = np.zeros_like(x)
        for j in range(r + 1):
            out += math.comb(r, j) * x**j * mm[r - j]
        return c * out


def _negative_part_negligible(groups: list[Group]) -> bool:
    """Chernoff: P(Z₋ + min x < 0) ≤ min_s E[exp(−s(Z₋ + min x))], for every group."""
    logs = []
    mins = []
    s_grid = None
    for grp in groups:
        th, wq = grp.dist.nodes(grp.dist.low, grp.dist.high)
        f = grp.dist.pdf(th)
        x = grp.x(th)
        if not np.all(np.isfinite(x)):
            return False
        scale = max(float(np.max(np.abs(x))), 1e-300)
        if s_grid is None:
            s_grid = np.logspace(-4, 4, 161)
        s = s_grid / scale
        # log E[exp(−s x)] by log-sum-exp: exp(−s x) overflows for large s and x < 0.
        e = -np.outer(s, x)
        top = e.max(axis=1)
        logs.append(top + np.log(np.maximum(np.exp(e - top[:, None]) @ (wq * f), 1e-300)))
        mins.append(float(np.min(x)))
    total = sum(grp.n * lg for grp, lg in zip(groups, logs, strict=True))
    assert s_grid is not None
    for grp, lg, xmin in zip(groups, logs, mins, strict=True):
        scale = max(float(np.max(np.abs(grp.x(np.array([grp.dist.low, grp.dist.high]))))), 1e-300)
        s = s_grid / scale
        bound = np.min(total - lg - s * xmin)
        if not bound <= math.log(NEGLIGIBLE_PROBABILITY):
            return False
    return True


# -- the lattice method ---------------------------------------------------------------

# Beyond this many half-widths from the kink at zero a power's cell average is taken
# from its Taylor series (the closed form would cancel); the series' next term is below
# 1e-14 relative there.
SERIES_BEYOND = 1000.0


def cell_average(phi: Phi, z: FloatArray, h: float) -> FloatArray:
    """The mean of φ over [z − h, z + h], for each z.

    A lattice point stands for the mass of a cell of width 2h (one bin), spread over it;
    sampling φ at the point instead costs a first-order error wherever φ jumps (discrete
    sizes) and loses accuracy where it is singular (Z^α with α < 1 at zero). Power and
    Step forms are averaged exactly; other callables are sampled (they are smooth
    wherever the engine builds them, and Richardson removes the O(h²) term).
    """
    z = np.asarray(z, dtype=float)
    if isinstance(phi, Step):
        out = np.full(z.shape, float(phi.values[0]))
        for t, jump in zip(phi.breaks, np.diff(phi.values), strict=True):
            out += jump * np.clip((z + h - t) / (2.0 * h), 0.0, 1.0)
        return out
    if isinstance(phi, Power):
        e = phi.exponent
        near = z < SERIES_BEYOND * h
        a = np.maximum(z[near] - h, 0.0)
        b = np.maximum(z[near] + h, 0.0)
        out = np.empty_like(z)
        out[near] = phi.coef * (b ** (e + 1.0) - a ** (e + 1.0)) / ((e + 1.0) * 2.0 * h)
        far = z[~near]
        # (1/2h) ∫ (z + s)^e ds = z^e (1 + e(e−1)/6 r² + e(e−1)(e−2)(e−3)/120 r⁴ + …), r = h/z.
        r2 = (h / far) ** 2
        out[~near] = phi(far) * (1.0 + e * (e - 1.0) / 6.0 * r2
                                 + e * (e - 1.0) * (e - 2.0) * (e - 3.0) / 120.0 * r2 * r2)
        return out
    return np.asarray(phi(z), dtype=np.float64)


class _TooWideError(Exception):
    """The lattice would need more than MAX_FFT points."""


class _Lattice:
    """One discretisation of every group's law on a common lattice of step δ."""

    def __init__(self, groups: list[Group], bins: int) -> None:
        self.groups = groups
        active = [g for g in groups if g.coef != 0.0 and g.n > 0]
        lo_hi = []
        for grp in groups:
            t0 = grp.theta0
            x_lo = 0.0 if grp.exclusion else float(grp.x(t0))
            if not math.isfinite(x_lo):
                # g = −∞ where the density vanishes: start at the 1e-15 quantile instead.
                t0 = float(grp.dist.ppf(1e-15))
                x_lo = float(grp.x(t0))
            x_hi = float(grp.x(grp.dist.high))
            lo_hi.append((t0, x_lo, max(x_hi, x_lo)))
        widest = max([hi - lo for (_, lo, hi), g in zip(lo_hi, groups, strict=True)
                      if g in active] or [1.0])
        delta = widest / (2 * bins) if widest > 0 else 1.0
        self.delta = delta
        pmfs, tths, tgs, shifts = [], [], [], []
        for grp, (t0, x_lo, x_hi) in zip(groups, lo_hi, strict=True):
            J = max(1, math.ceil((x_hi - x_lo) / (2 * delta) - 1e-9))
            size = 2 * J + 1
            pmf = np.zeros(size)
            tth = np.zeros(size)
            tg = np.zeros(size)
            if grp.coef == 0.0 or x_hi <= x_lo:
                # x is constant (a zero weight): all mass at the shifted origin.
                pmf[0] = 1.0
                th, wq = grp.dist.nodes(t0, grp.dist.high)
                f, gf = _tilt_weights(grp.dist, grp.lam, th)
                tth[0] = float(wq @ (th * f))
                tg[0] = float(wq @ gf)
                x_lo = float(grp.x(t0)) if not grp.exclusion else 0.0
            else:
                edges_x = np.minimum(x_lo + 2 * delta * np.arange(J + 1), x_hi)
                edges_x[-1] = x_hi
                edges_t = invert_weight(grp.dist, grp.lam, edges_x / grp.coef, t0,
                                        grp.dist.high)
                edges_t[0], edges_t[-1] = t0, grp.dist.high
                F = grp.dist.cdf(edges_t)
                pmf[1::2] = np.diff(F)
                # ∫ g f dθ = [−θ (1 − F(θ))] (plus the ironing correction): exact by bin.
                tg[1::2] = grp.dist.weight(grp.lam).g_mass(edges_t)
                # ∫ θ f dθ per bin by 8-point Gauss–Legendre.
                gx, gw = np.polynomial.legendre.leggauss(8)
                mid = 0.5 * (edges_t[1:] + edges_t[:-1])
                half = 0.5 * np.diff(edges_t)
                nodes = mid[:, None] + half[:, None] * gx[None, :]
                tth[1::2] = (half[:, None] * gw[None, :] * nodes * grp.dist.pdf(nodes)).sum(1)
                if grp.exclusion:
                    pmf[0] = float(grp.dist.cdf(t0))
            pmfs.append(pmf)
            tths.append(tth)
            tgs.append(tg)
            shifts.append(x_lo)
        self.shifts = shifts
        self.offset = sum(g.n * s for g, s in zip(groups, shifts, strict=True))
        span = sum(g.n * (p.size - 1) for g, p in zip(groups, pmfs, strict=True))
        if span + 1 <= MAX_FFT:
            N = 1 << max(4, math.ceil(math.log2(span + 1)))
            self.start = 0
        else:
            mean = sum(g.n * float(np.arange(p.size) @ p)
                       for g, p in zip(groups, pmfs, strict=True))
            var = sum(g.n * (float((np.arange(p.size) ** 2) @ p)
                             - float(np.arange(p.size) @ p) ** 2)
                      for g, p in zip(groups, pmfs, strict=True))
            width = 2 * WINDOW_SDS * math.sqrt(max(var, 1.0)) + max(p.size for p in pmfs)
            N = 1 << math.ceil(math.log2(width))
            if N > MAX_FFT:
                raise _TooWideError
            self.start = int(mean - N // 2)
        self.N = N
        F_ = [np.fft.rfft(p, N) for p in pmfs]
        self.T_theta = [np.fft.rfft(t, N) for t in tths]
        self.T_g = [np.fft.rfft(t, N) for t in tgs]
        powers = [np.power(f, g.n) for f, g in zip(F_, groups, strict=True)]
        # others[k] = Π_{j≠k} F_j^{n_j} · F_k^{n_k−1}, by prefix and suffix products.
        L = len(groups)
        prefix = [np.ones_like(F_[0])]
        for k in range(L):
            prefix.append(prefix[-1] * powers[k])
        suffix = [np.ones_like(F_[0])] * (L + 1)
        for k in range(L - 1, -1, -1):
            suffix[k] = suffix[k + 1] * powers[k]
        self.others = [prefix[k] * suffix[k + 1] * np.power(F_[k], groups[k].n - 1)
                       for k in range(L)]
        self.total = prefix[L]
        idx = np.arange(N)
        # Index i of the circular result stands for the lattice point start + ((i − start) mod N).
        self.points = self.start + np.mod(idx - self.start, N)
        self.z = self.offset + delta * self.points
        # Lattice point 0 holds only the configuration in which every agent sits at its
        # own index 0: all excluded (an exact atom at x = 0) or a constant weight. That
        # mass is a point, not a cell, so φ is sampled there rather than averaged.
        self.atom = self.points == 0

    def _values(self, spectrum: npt.NDArray[np.complex128]) -> FloatArray:
        return np.fft.irfft(spectrum, self.N)

    def _phi(self, phi: Phi, z: FloatArray, atom: npt.NDArray[np.bool_]) -> FloatArray:
        v = cell_average(phi, z, self.delta)
        if atom.any():
            v[atom] = np.asarray(phi(z[atom]), dtype=float)
        return v

    def expect(self, phi: Phi) -> float:
        return float(self._values(self.total) @ self._phi(phi, self.z, self.atom))

    def tilted(self, phi: Phi, k: int) -> tuple[float, float]:
        v = self._phi(phi, self.z, self.atom)
        return (float(self._values(self.T_theta[k] * self.others[k]) @ v),
                float(self._values(self.T_g[k] * self.others[k]) @ v))

    def given(self, phi: Phi, k: int, x: FloatArray) -> FloatArray:
        pmf = self._values(self.others[k])
        keep = pmf > 1e-20 * float(pmf.max())
        zm = self.offset - self.shifts[k] + self.delta * self.points[keep]
        atom = self.atom[keep]
        w = pmf[keep]
        x = np.asarray(x, dtype=float)
        out = np.empty_like(x)
        # Chunks bound the memory of the (len(x), support) matrix.
        step = max(1, 4_000_000 // max(1, zm.size))
        for i in range(0, x.size, step):
            zz = x[i:i + step, None] + zm[None, :]
            out[i:i + step] = self._phi(phi, zz, np.broadcast_to(atom, zz.shape)) @ w
        return out


class LatticeLaw(SumLaw):
    method = "lattice"

    def __init__(self, groups: list[Group], bins: int | None = None) -> None:
        if bins is None:
            # Rounding each agent's weight to the lattice perturbs Z by O(√n δ) while Z's
            # own spread grows like √n: the relative error is O(δ²/n) before Richardson,
            # so larger markets get proportionally coarser bins (never below 64).
            total = sum(g.n for g in groups if g.coef != 0.0)
            bins = int(max(64, min(LATTICE_BINS, LATTICE_BINS * math.sqrt(10.0 / max(total, 1)))))
        # Many agents need fewer bins per agent: the discretisation error relative to
        # E[φ(Z)] shrinks like 1/n, while the lattice must span √n standard deviations.
        while True:
            try:
                self.coarse = _Lattice(groups, bins)
                self.fine = _Lattice(groups, 2 * bins)
                break
            except _TooWideError:
                if bins <= 16:
                    raise ValueError("the sum's law is too wide for the lattice method") from None
                bins //= 2
        self.bins = bins
        self.rel_error = 0.0

    def _combine(self, a: float, b: float) -> float:
        # Midpoint-rule discretisation error is O(δ²): Richardson removes that term.
        est = (4.0 * b - a) / 3.0
        # Reported conservatively as the whole coarse-to-fine change: with several groups
        # the bins cannot align with every support and the O(δ²) term is not clean.
        err = abs(b - a) / max(abs(est), 1e-300)
        object.__setattr__(self, "rel_error", max(self.rel_error, err))
        return est

    def expect(self, phi: Phi) -> float:
        return self._combine(self.coarse.expect(phi), self.fine.expect(phi))

    def tilted(self, phi: Phi, k: int) -> tuple[float, float]:
        a = self.coarse.tilted(phi, k)
        b = self.fine.tilted(phi, k)
        return self._combine(a[0], b[0]), self._combine(a[1], b[1])

    def given(self, phi: Phi, k: int, x: FloatArray) -> FloatArray:
        a = self.coarse.given(phi, k, x)
        b = self.fine.given(phi, k, x)
        return (4.0 * b - a) / 3.0


def sum_law(groups: list[Group], phis: list[Phi], method: str = "auto",
            bins: int | None = None) -> SumLaw:
    """The cheapest exact law of Z for these groups and functions (module docstring).

    ``bins`` sets the lattice's coarse resolution (None: by the number of agents); the
    lattice may use fewer when the sum's law would not fit (see ``LatticeLaw.bins``).
    """
    if method not in ("auto", "moments", "lattice", "relaxed"):
        raise ValueError(f"unknown method {method!r}")
    if method == "relaxed":
        # Evidence only: moments of Z with the positive part dropped, i.e. the relaxed
        # problem that lets Q(θ) follow the pointwise formula even where the weighted
        # sum is negative. Not a feasible mechanism; see README ("disagreements").
        return MomentLaw.of_groups(groups, max(e for e in (integer_exponent(p) for p in phis)
                                     if e is not None))
    exps = [integer_exponent(p) for p in phis]
    moments_ok = all(e is not None for e in exps) and (
        all(g.exclusion or g.coef == 0.0 for g in groups)
        or _negative_part_negligible([g for g in groups if g.coef != 0.0] or groups)
    )
    if method == "moments" and not moments_ok:
        raise ValueError("the moment method needs integer power forms and Z >= 0")
    if method == "moments" or (method == "auto" and moments_ok):
        return MomentLaw.of_groups(groups, max(e for e in exps if e is not None))
    return LatticeLaw(groups, bins)


def _dist_key(dist: TypeDistribution) -> object:
    return dist.key if dist.spec else id(dist)


def _by_distribution(dists: list[TypeDistribution]) -> dict[object, list[int]]:
    """Indices of ``dists`` grouped by distinct distribution (alike specs share a group)."""
    groups: dict[object, list[int]] = {}
    for i, d in enumerate(dists):
        groups.setdefault(_dist_key(d), []).append(i)
    return groups


Groups = dict[object, npt.NDArray[np.int64]]


def distribution_groups(dists: list[TypeDistribution], groups: Groups | None = None) -> Groups:
    """The indices of ``dists`` by distinct distribution (``groups`` itself when given):
    what the vectorised functions below loop over, computed once per market by callers
    that evaluate many times."""
    if groups is not None:
        return groups
    return {k: np.array(v, dtype=np.int64) for k, v in _by_distribution(dists).items()}


def thresholds(dists: list[TypeDistribution], lambdas: FloatArray,
               groups: Groups | None = None) -> FloatArray:
    """:func:`threshold` for many (distribution, λ) pairs: one vectorised bisection per
    distinct distribution, so a market of many alike locations costs one solve.
    ``groups``: the indices of ``dists`` by distinct distribution, if already known."""
    out = np.empty(len(dists))
    groups = distribution_groups(dists, groups)
    for idx in groups.values():
        dist = dists[idx[0]]
        lam = np.asarray(lambdas, dtype=float)[idx]
        if _is_uniform(dist):
            # U[a, b]: g(θ) = 2θ − b, so θ + λ g = 0 at θ = λ b / (1 + 2λ).
            out[idx] = np.clip(lam * dist.high / (1.0 + 2.0 * lam), dist.low, dist.high)
            continue
        if not dist.is_regular():
            # Ironed weights are tabulated per λ: one scalar solve each.
            out[idx] = [_bisect_threshold(dist, float(x)) for x in lam]
            continue
        lo = np.full(lam.shape, dist.low)
        hi = np.full(lam.shape, dist.high)

        def w(t: FloatArray, lam: FloatArray = lam, dist: TypeDistribution = dist) -> FloatArray:
            with np.errstate(invalid="ignore"):
                v = t + np.where(lam == 0.0, 0.0, lam * dist.g(t))
            return np.where(np.isfinite(v), v, -np.inf)

        w_lo = w(lo)
        w_hi = w(hi)
        # Bracket every root between neighbours of one 257-point table of g (one call
        # for all λ; w may be −∞ at the bottom, so the bracket's top is always finite),
        # then the Illinois variant of regula falsi converges superlinearly on the whole
        # vector at once; every step keeps the root bracketed.
        grid = np.linspace(dist.low, dist.high, 257)
        with np.errstate(invalid="ignore"):
            table = grid[None, :] + np.where(lam[:, None] == 0.0, 0.0,
                                             lam[:, None] * dist.g(grid)[None, :])
        table = np.where(np.isfinite(table), table, -np.inf)
        k = np.clip(np.argmax(table > 0.0, axis=1), 1, grid.size - 1)
        a, b = grid[k - 1], grid[k]
        mid = 0.5 * (a + b)
        pos = w(mid) > 0.0
        b = np.where(pos, mid, b)
        a = np.where(pos, a, mid)
        fa, fb = w(a), w(b)
        best = np.where(np.abs(fa) < np.abs(fb), a, b)
        best_f = np.where(np.abs(fa) < np.abs(fb), fa, fb)
        for _ in range(40):
            ok = np.isfinite(fa) & np.isfinite(fb) & (fb > fa)
            with np.errstate(invalid="ignore", divide="ignore"):
                c = np.where(ok, b - fb * (b - a) / (fb - fa), 0.5 * (a + b))
            c = np.clip(c, a, b)
            fc = w(c)
            pos = fc > 0.0
            # Illinois: halve the function value of the endpoint that stays put.
            fa = np.where(pos, 0.5 * fa, fc)
            fb = np.where(pos, fc, 0.5 * fb)
            a = np.where(pos, a, c)
            b = np.where(pos, c, b)
            best = np.where(np.abs(fc) < np.abs(best_f), c, best)
            best_f = np.where(np.abs(fc) < np.abs(best_f), fc, best_f)
            if np.all((b - a <= 4e-16 * np.maximum(1.0, np.abs(b)))
                      | (np.abs(best_f) <= 1e-15 * np.maximum(1.0, np.abs(best)))):
                break
        res = best
        res = np.where(w_lo >= 0.0, dist.low, np.where(w_hi <= 0.0, dist.high, res))
        out[idx] = res
    return out


_GL64 = np.polynomial.legendre.leggauss(64)


def _is_uniform(dist: TypeDistribution) -> bool:
    """U[low, high], for which F, g and the partial means have closed forms."""
    return dist.spec.get("dist") == "uniform"


def survival(dists: list[TypeDistribution], points: FloatArray,
             groups: Groups | None = None) -> FloatArray:
    """1 − F_i(points[i]) for each i, one vectorised call per distinct distribution."""
    out = np.empty(len(dists))
    groups = distribution_groups(dists, groups)
    for idx in groups.values():
        dist = dists[idx[0]]
        t = np.asarray(points, dtype=float)[idx]
        if _is_uniform(dist):
            out[idx] = np.clip((dist.high - t) / (dist.high - dist.low), 0.0, 1.0)
        else:
            out[idx] = dist.sf(t)
    return out


def partial_means(dists: list[TypeDistribution], lows: FloatArray,
                  groups: Groups | None = None) -> FloatArray:
    """∫_{lows[i]}^{high} θ f_i(θ) dθ for each i, vectorised per distinct distribution."""
    out = np.empty(len(dists))
    groups = distribution_groups(dists, groups)
    gx, gw = _GL64
    for idx in groups.values():
        dist = dists[idx[0]]
        a = np.asarray(lows, dtype=float)[idx]
        if _is_uniform(dist):
            t = np.clip(a, dist.low, dist.high)
            out[idx] = (dist.high**2 - t**2) / (2.0 * (dist.high - dist.low))
            continue
        # Four panels of 64 Gauss nodes between each lower limit and the top.
        edges = a[:, None] + (dist.high - a)[:, None] * np.linspace(0, 1, 5)[None, :]
        mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
        half = 0.5 * (edges[:, 1:] - edges[:, :-1])
        nodes = mid[..., None] + half[..., None] * gx
        vals = nodes * dist.pdf(nodes) * half[..., None] * gw
        out[idx] = vals.sum(axis=(1, 2))
    return out
