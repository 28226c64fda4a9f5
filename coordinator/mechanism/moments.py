"""The moment method vectorised over locations and multipliers: the optimal mechanism's
fast path wherever the exact moment method applies.

Where it applies: exclusion (so Z_l ≥ 0 surely) and power forms whose exponents in the
weight a, α/(β−α) and β/(β−α), are integers (:func:`applies`): the conditions under
which :func:`~coordinator.mechanism.sums.sum_law` picks
:class:`~coordinator.mechanism.sums.MomentLaw` for a market with exclusion. There every
expectation the solver needs (welfare (1), the constraints (3)/(24), the interim V of
(8)) is a polynomial in three moment vectors of one agent of each home location k,

    M_k[r] = E[π w_k(θ)^r],   A_k[r] = E[θ π w_k(θ)^r],   G_k[r] = E[ḡ(θ) π w_k(θ)^r],

(w_k = θ + λ_k ḡ_k, ironed; π = 1{θ > θ₀}), r = 0..K, which depend on (prior_k, λ_k)
only. In location l agent k weighs x = c_kl w_k with c_kl = W_kl/(1 + λ_l), so its
moments and cumulants there are c_kl^r times those above, and the cumulants of the
weighted sum are κ_r(Z_l) = Σ_k n_k c_kl^r κ_r(w_k π): one tensor expression for all
locations, no per-location quadrature.

One agent's moments: for the uniform prior U[a, b] (the slides' model) w(θ) =
(1 + 2λ)θ − λb is linear, every integrand is a polynomial of degree at most K + 1 in
θ, and a Gauss–Legendre rule of ⌈(K + 2)/2⌉ nodes integrates it exactly (a closed form:
only rounding remains). Any other prior uses its composite quadrature rule
(:meth:`~coordinator.mechanism.distributions.TypeDistribution.nodes`), once per distinct
(prior, λ), as the general path does.

The same numbers as :class:`~coordinator.mechanism.sums.MomentLaw` location by
location (the general path, ``method="moment-laws"``) up to rounding;
tests/test_mechanism_moments.py holds the two together on random markets. Evaluations
take a batch of multiplier vectors at once (shape (B, L)), so a root search can scan a
grid of candidates in one pass. No I/O.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .market import Market
from .provision import Power, Provision
from .sums import MomentLaw, _cumulants, _moments, integer_exponent, threshold

FloatArray = npt.NDArray[np.float64]


@functools.cache
def _gauss_legendre(m: int) -> tuple[FloatArray, FloatArray]:
    x, w = np.polynomial.legendre.leggauss(m)
    return x, w


def applies(market: Market, *, exclusion: bool, provisions: list[Provision]) -> bool:
    """Whether the vectorised moment method is exact for this market (module docstring)."""
    if not exclusion or market.levels is not None:
        return False
    return all(integer_exponent(phi) is not None
               for prov in provisions for phi in (prov.benefit, prov.cost))


@dataclass(frozen=True, slots=True)
class Batch:
    """The engine's evaluation at B multiplier vectors λ (B, L).

    ``welfare`` (B,) is (1); ``constraints`` (B, C) the budget constraints (3) (C = 1) or
    (24) (C = L); ``benefit_theta``/``benefit_g`` (B, L, L) are E[Σ_j π θ_kj u_l(Q_l)]
    and E[Σ_j π ḡ(θ_kj) u_l(Q_l)] (0 where W_kl = 0), ``cost`` (B, L) E[c_l(Q_l)];
    ``theta0`` (B, L) the exclusion thresholds. ``interim`` (B, L, K+1) holds the
    coefficients d_k of V_k(θ) = Σ_j d_kj w_k(θ)^j, the interim benefit (8) of an
    included agent of location k. ``mz``, ``minus``, ``t_theta``, ``t_g`` are the laws'
    moment arrays (see :class:`~coordinator.mechanism.sums.MomentLaw`), indexed
    [b, l, r] and [b, l, k, r].
    """

    lambdas: FloatArray
    welfare: FloatArray
    constraints: FloatArray
    benefit_theta: FloatArray
    benefit_g: FloatArray
    cost: FloatArray
    theta0: FloatArray
    interim: FloatArray
    mz: FloatArray
    minus: FloatArray
    t_theta: FloatArray
    t_g: FloatArray

    def row(self, b: int) -> Batch:
        """The evaluation at the b-th multiplier vector alone (B = 1)."""
        return Batch(*(getattr(self, f)[b:b + 1] for f in self.__slots__))

    def law(self, b: int, l: int) -> MomentLaw:
        """Location l's law at the b-th multiplier vector, for the interim tables."""
        K = self.mz.shape[-1] - 1
        return MomentLaw(K, self.mz[b, l], self.minus[b, l], self.t_theta[b, l],
                         self.t_g[b, l])


class MomentEngine:
    """Everything of the moment method that depends only on the market, and the
    vectorised evaluation at any batch of multipliers (module docstring)."""

    def __init__(self, market: Market, provisions: list[Provision]) -> None:
        if not applies(market, exclusion=True, provisions=provisions):
            raise ValueError("the vectorised moment method needs integer power forms")
        self.market = market
        L = market.L
        self.L = L
        self.n = market.sizes.astype(float)
        self.W = market.weights
        self.linked = self.W != 0.0
        ben = [prov.benefit for prov in provisions]
        cst = [prov.cost for prov in provisions]
        assert all(isinstance(p, Power) for p in ben + cst)
        self.b = np.array([float(p.coef) for p in ben if isinstance(p, Power)])
        self.c = np.array([float(p.coef) for p in cst if isinstance(p, Power)])
        p_exp = np.array([integer_exponent(p) for p in ben], dtype=np.int64)
        self.q_exp = np.array([integer_exponent(p) for p in cst], dtype=np.int64)
        K = int(max(p_exp.max(), self.q_exp.max()))
        self.K = K
        self.r = np.arange(K + 1)
        # Location l's benefit b_l Z^p_l: E[φ(x + Z₋)] = b_l Σ_j C(p_l, j) x^j m₋[p_l − j].
        self.binom = np.array([[math.comb(int(p), j) if j <= p else 0 for j in range(K + 1)]
                               for p in p_exp], dtype=float)
        self.rev = np.clip(p_exp[:, None] - self.r[None, :], 0, K)
        self.l_rev = np.broadcast_to(np.arange(L)[:, None], self.rev.shape)
        self.l_idx = np.arange(L)
        self.scale = self.n[:, None] * self.b[None, :] * self.linked  # (k, l)
        self.uniform = np.array([i for i, loc in enumerate(market.locations)
                                 if loc.dist.spec.get("dist") == "uniform"], dtype=np.int64)
        self.general = [i for i, loc in enumerate(market.locations)
                        if loc.dist.spec.get("dist") != "uniform"]
        self.lo = np.array([loc.dist.low for loc in market.locations])[self.uniform]
        self.hi = np.array([loc.dist.high for loc in market.locations])[self.uniform]
        # ⌈(K + 2)/2⌉ Gauss–Legendre nodes: exact for θ w^K, of degree K + 1.
        self.glx, self.glw = _gauss_legendre(max(1, (K + 3) // 2))
        # The last full evaluation: a solver's final evaluation is often a row of its
        # last search pass.
        self._last: Batch | None = None

    def one_agent(self, lam: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray,
                                                  FloatArray]:
        """θ₀ (B, L) and M, A, G (B, L, K+1) of the module docstring at λ (B, L)."""
        B, L = lam.shape
        K = self.K
        if self.general:
            theta0 = np.empty((B, L))
            M = np.empty((B, L, K + 1))
            A = np.empty((B, L, K + 1))
            G = np.empty((B, L, K + 1))
        U = self.uniform
        if U.size:
            lu = lam[:, U] if self.general else lam
            a, b = self.lo, self.hi
            # U[a, b]: g = 2θ − b, w = (1 + 2λ)θ − λb, zero at θ = λb/(1 + 2λ).
            s = 1.0 + 2.0 * lu
            lb = lu * b
            t0 = np.minimum(np.maximum(lb / s, a), b)
            half = 0.5 * (b - t0)
            th = (t0 + half)[..., None] + half[..., None] * self.glx  # (B, U, m)
            pw = (s[..., None] * th - lb[..., None])[..., None] ** self.r  # (B, U, m, K+1)
            wt = (half / (b - a))[..., None] * self.glw  # weights × density 1/(b − a)
            Mu = np.matmul(wt[..., None, :], pw)[..., 0, :]
            Au = np.matmul((wt * th)[..., None, :], pw)[..., 0, :]
            # ḡ f = θ f − (1 − F) = (2θ − b)/(b − a): G = 2A − b M (M before M₀ := 1).
            Gu = 2.0 * Au - b[:, None] * Mu
            if not self.general:
                Mu[..., 0] = 1.0  # the excluded agents' atom at w π = 0 completes the mass
                return t0, Mu, Au, Gu
            theta0[:, U], M[:, U], A[:, U], G[:, U] = t0, Mu, Au, Gu
        done: dict[tuple[object, float], tuple[float, FloatArray, FloatArray, FloatArray]] = {}
        for k in self.general:
            dist = self.market.locations[k].dist
            for i in range(B):
                lk = float(lam[i, k])
                key = (dist.key if dist.spec else id(dist), lk)
                if key not in done:
                    t0k = threshold(dist, lk)
                    th_k, wq = dist.nodes(t0k, dist.high)
                    vw = dist.weight(lk)
                    f = dist.pdf(th_k)
                    pk = vw.w(th_k)[:, None] ** self.r
                    done[key] = (t0k, (wq * f) @ pk, (wq * th_k * f) @ pk, (vw.gf(th_k) * wq) @ pk)
                theta0[i, k], M[i, k], A[i, k], G[i, k] = done[key]
        M[..., 0] = 1.0  # the excluded agents' atom at w π = 0 completes the mass
        return theta0, M, A, G

    def _sums(self, lam: FloatArray) -> tuple[FloatArray, ...]:
        """The laws' moments at λ (B, L) and the benefit terms built from them."""
        theta0, M, A, G = self.one_agent(lam)
        coef = self.W / (1.0 + lam)[:, None, :]  # c_kl = W_kl / (1 + λ_l), (B, k, l)
        cp = coef[..., None] ** self.r  # (B, k, l, r)
        kappa = _cumulants(M)
        kz = np.matmul(self.n * np.swapaxes(cp, 1, 3), kappa.swapaxes(1, 2)[..., None])
        kz = np.swapaxes(kz[..., 0], 1, 2)  # (B, l, r): Σ_k n_k c_kl^r κ_k[r]
        mz = _moments(kz)
        minus = _moments(kz[:, None, :, :] - cp * kappa[:, :, None, :])  # (B, k, l, r)
        cost = self.c * mz[:, self.l_idx, self.q_exp]
        # H[b, k, l, j] = C(p_l, j) m₋[p_l − j] c_kl^j: the weight of agent k's j-th moment
        # in location l's tilted benefit and in V_k.
        H = self.binom * minus[:, :, self.l_rev, self.rev] * cp
        bg = self.scale * np.matmul(H, G[..., None])[..., 0]
        return theta0, A, G, cp, mz, minus, cost, H, bg

    def values(self, lambdas: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(welfare (B,), constraints (B, C)) at each row of ``lambdas`` (B, L): what a
        multiplier search needs, without the laws."""
        lam = np.atleast_2d(np.asarray(lambdas, dtype=float))
        _, A, _, _, _, _, cost, H, bg = self._sums(lam)
        bt = self.scale * np.matmul(H, A[..., None])[..., 0]
        return self._totals(bt, bg, cost)

    def _totals(self, bt: FloatArray, bg: FloatArray,
                cost: FloatArray) -> tuple[FloatArray, FloatArray]:
        welfare = (self.W * bt).sum(axis=(1, 2)) - cost.sum(axis=1)
        per_location = (self.W * bg).sum(axis=2) - cost
        if self.market.payment == "in_kind":
            return welfare, per_location
        return welfare, per_location.sum(axis=1, keepdims=True)

    def evaluate(self, lambdas: npt.ArrayLike) -> Batch:
        """Everything of :class:`Batch` at each row of ``lambdas`` (B, L) or (L,);
        a single row of the previous call is answered from it."""
        lam = np.atleast_2d(np.asarray(lambdas, dtype=float))
        last = self._last
        if last is not None and lam.shape[0] == 1:
            hit = np.flatnonzero(np.all(last.lambdas == lam, axis=1))
            if hit.size:
                return last.row(int(hit[0]))
        theta0, A, G, cp, mz, minus, cost, H, bg = self._sums(lam)
        bt = self.scale * np.matmul(H, A[..., None])[..., 0]
        welfare, constraints = self._totals(bt, bg, cost)
        interim = np.einsum("kl,bklj->bkj", self.W * self.b[None, :], H)
        t_theta = np.swapaxes(cp * A[:, :, None, :], 1, 2)
        t_g = np.swapaxes(cp * G[:, :, None, :], 1, 2)
        self._last = Batch(lam, welfare, constraints, bt, bg, cost, theta0, interim, mz,
                           np.swapaxes(minus, 1, 2), t_theta, t_g)
        return self._last
