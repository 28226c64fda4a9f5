"""Grid computing: an incentive-compatible tariff menu for a rivalrous, excludable resource.

The model (last part of the source slides, "Grid Computing: the case of Rivalrous,
Excludable Resources"): a large population of agents with usage frequency
``a ~ U[0, 1]`` (private), utility ``a·u(y) − p`` with ``u(y) = A·y^α`` (``A > 0``,
``0 < α < 1``; the slides use ``u(y) = √y``), and resource cost ``C(Q) = Q``. The designer
offers a menu ``{p(a), y(a)}`` and solves

    maximise ∫_0^1 [a u(y(a)) − p(a)] da
    subject to  IC:  a u'(y(a)) y'(a) = p'(a), y nondecreasing,
                IR:  x1(a) = a u(y(a)) − p(a) ≥ 0,
                capacity:  ∫_0^1 a y(a) da ≤ ∫_0^1 p(a) da.

Derivation (the one implemented; every step is checked numerically by
:func:`solve_grid_tariff` and by the tests).

* Envelope theorem: ``x1' = x2 := u(y)``; IC is ``x2`` nondecreasing. IR binds at
  ``a = 0`` (``x1(0) > 0`` would be a lump-sum gift that costs capacity one-for-one), so
  ``x1(a) = ∫_0^a x2`` and, by parts, ``∫ x1 = ∫ (1 − a) x2 da``.
* With ``p = a x2 − x1`` the capacity constraint reads
  ``∫ [(2a − 1) x2 − a u⁻¹(x2)] da ≥ 0``. The Lagrangian with multiplier ``μ`` is
  maximised pointwise in ``x2`` (it is concave in ``x2``, the constraint set is convex
  and Slater holds, so there is no duality gap):
  ``c(a) := (1 − a) + μ(2a − 1) = μ a / u'(y)``, ``y = 0`` where ``c(a) ≤ 0``.
* ``c`` vanishes at ``t* = (μ − 1)/(2μ − 1)`` and ``c(a)/(μ a) = ĥ(a)`` with
  ``ĥ(a) := (1 − t*/a)/(1 − t*)`` (because ``(2μ − 1)/μ = 1/(1 − t*)``). Hence, with the
  first-best quantity ``y_fb = (αA)^{1/(1−α)}`` (where ``u'(y_fb) = 1``) and
  ``κ = α/(1 − α)``::

      y(a)  = y_fb · ĥ(a)^{κ+1}      x2(a) = u(y(a)) = u(y_fb) · ĥ(a)^κ      (a ≥ t*)
      x1(a) = u(y_fb) · Φ(a),  Φ(a) = ∫_{t*}^a ĥ(s)^κ ds,     p(a) = a x2(a) − x1(a).

  ``u'(y(a)) = 1/ĥ(a) ≥ 1``: every type is under-served except the top (``ĥ(1) = 1``,
  no distortion at the top), and types below ``t*`` are excluded.
* ``x2`` is strictly increasing on ``[t*, 1]`` whenever ``μ > 1``, which capacity
  forces (at ``μ = 1`` the menu is the first best, which raises no revenue), so the
  pointwise solution is already monotone and no ironing is needed; the solver still
  checks monotonicity on a grid and reports ``success=False`` if it ever failed.
* Capacity binds. Writing ``Φ0 = Φ(1)`` and ``Φ1 = ∫_{t*}^1 a ĥ^κ da``
  ``= [(1 − t*) − (κ − 1) t* Φ0]/2`` (from ``d/da[a² ĥ^{κ+1}] = [2a + (κ − 1)t*] ĥ^κ/(1 − t*)``),
  the capacity equation is one scalar equation in ``t*`` that depends on ``α`` only::

      E(t) = 2Φ1 − Φ0 − α (Φ1 − t Φ0)/(1 − t) = 0,   t ∈ (0, 1/2),

  with ``E(0+) = −α/2 < 0`` and ``E(1/2) = (1 − α) ∫ (2a − 1) ĥ^κ > 0``. Welfare per agent is
  ``u(y_fb)(Φ0 − Φ1)``; the planner (first best, ``u'(y) = 1`` for every type) gets
  ``(u(y_fb) − y_fb)/2 = u(y_fb)(1 − α)/2``.

For ``α = 1/2`` everything is elementary (:func:`sqrt_tariff_closed_form`):
``t*`` solves ``(1 − t)(4t² − t − 1) = 2t(2 − 3t) ln t``; with ``β = A²/(2(1 − t*))`` and
``γ = β t*``, ``x2 = β − γ/a``, ``x1 = γ(ln t* − 1) + β a − γ ln a``, ``p(a) = γ ln(a/t*)``
and the tariff is ``y(p) = (β/A)²(1 − e^{−p/γ})²`` for ``0 ≤ p ≤ p_max = −γ ln t*``.

Numerics: ``Φ`` is computed by a graded composite Gauss rule (Gauss–Jacobi with weight
``(s − t*)^κ`` on the panel touching ``t*``, Gauss–Legendre on panels halving towards
it), vectorised over ``a``; the threshold by Brent's method. Everything is a pure
function of its arguments: no I/O, no global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import integrate, optimize, special

from coordinator.mechanism.result import FloatArray, MechanismResult

MECHANISM = "grid_tariff"

# Nodes per Gauss panel. Each Legendre panel [t + d/2, t + d] sees its nearest
# singularity (at t) one half-width beyond its left end, so the error falls like
# (3 + √8)^(−2·NODES) ≈ 1e−36; the Jacobi panel touching t is narrower than t/2.
NODES = 24
# Above this κ the Jacobi weights (~2^κ) overflow; the panel touching t* then holds
# less than 2^−κ of the integral and plain Gauss–Legendre is used there.
_JACOBI_KAPPA_MAX = 300.0
# Tolerances (relative to u(y_fb), the scale of x1, x2 and p) for the feasibility checks.
_CHECK_TOL = 1e-9
_IC_TOL = 1e-10
_EPS = float(np.finfo(float).eps)
# Relative rounding slack when a price is matched against [0, p_max].
_PRICE_SLACK = 1e-12


# ----------------------------------------------------------------------------------
# Quadrature of Φ(a) = ∫_t^a ĥ(s)^κ ds
# ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Rule:
    """Gauss nodes for one κ (built once per solve)."""

    kappa: float
    gl_x: FloatArray
    gl_w: FloatArray
    inner_x: FloatArray
    # Jacobi case: ω = (Jacobi weights for (1+x)^κ)/2^{κ+1}, so that
    # ∫_t^{t+δ} ĥ^κ ds = δ Σ ω_i (δ/((1 − t) s_i))^κ; Legendre case: ω = w/2.
    inner_w: FloatArray
    inner_jacobi: bool
    sub: int  # Legendre sub-panels per graded panel (more when κ is large)

    @classmethod
    def build(cls, kappa: float) -> _Rule:
        gl_x, gl_w = np.polynomial.legendre.leggauss(NODES)
        if kappa <= _JACOBI_KAPPA_MAX:
            jx, jw = special.roots_jacobi(NODES, 0.0, kappa)
            inner_x = np.asarray(jx, dtype=float)
            inner_w = np.asarray(jw, dtype=float) / 2.0 ** (kappa + 1.0)
            jac = True
        else:
            inner_x, inner_w, jac = gl_x, gl_w / 2.0, False
        sub = max(1, math.ceil(kappa / 16.0))
        return cls(kappa, gl_x, gl_w, inner_x, inner_w, jac, sub)


def _panels(t: float) -> int:
    """Halvings of [t, 1] needed for the panel touching t to be at most t/2 wide."""
    return max(0, math.ceil(math.log2(2.0 * (1.0 - t) / t)))


def _hhat(a: FloatArray, t: float) -> FloatArray:
    """ĥ(a) = (1 − t/a)/(1 − t) on a ≥ t, 0 below (so ĥ ∈ [0, 1] on [0, 1])."""
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (a - t) / ((1.0 - t) * a)
    return np.where(a > t, h, 0.0)


def _phi(a: FloatArray, t: float, rule: _Rule) -> FloatArray:
    """Φ(a) = ∫_t^a ĥ(s)^κ ds (0 for a ≤ t), vectorised over ``a``."""
    kappa = rule.kappa
    d = np.clip(np.asarray(a, dtype=float) - t, 0.0, None)
    J = _panels(t)
    m = rule.sub
    # graded panels: offsets from t in [d 2^{-j-1}, d 2^{-j}], j < J, each cut in m
    scale = 0.5 ** np.arange(J, dtype=float)  # d_j / d
    k = np.arange(m, dtype=float)
    u = (k[:, None] + 0.5 * (1.0 + rule.gl_x[None, :])) / m  # (m, n) in [0, 1]
    frac = 0.5 * scale[:, None, None] * (1.0 + u[None, :, :])  # (J, m, n): offset / d
    off = d[:, None, None, None] * frac[None, ...]
    s = t + off
    vals = (off / ((1.0 - t) * s)) ** kappa
    w = (0.25 / m) * scale[:, None, None] * rule.gl_w[None, None, :]  # ds = d·w
    outer = d * np.einsum("ijkl,jkl->i", vals, w) if J > 0 else np.zeros_like(d)
    # panel [t, t + δ], δ = d 2^{-J}
    delta = d * 0.5**J
    s_in = t + delta[:, None] * 0.5 * (1.0 + rule.inner_x[None, :])
    if rule.inner_jacobi:
        # ∫ = δ Σ ω_i (δ / ((1 − t) s_i))^κ with ω the normalised Jacobi weights
        inner_vals = (delta[:, None] / ((1.0 - t) * s_in)) ** kappa
    else:
        inner_vals = ((s_in - t) / ((1.0 - t) * s_in)) ** kappa
    inner = delta * (inner_vals @ rule.inner_w)
    return np.asarray(outer + inner, dtype=float)


def _phi01(t: float, rule: _Rule) -> tuple[float, float]:
    """(Φ0, Φ1) = (∫_t^1 ĥ^κ, ∫_t^1 a ĥ^κ)."""
    phi0 = float(_phi(np.array([1.0]), t, rule)[0])
    phi1 = 0.5 * ((1.0 - t) - (rule.kappa - 1.0) * t * phi0)
    return phi0, phi1


def _capacity_gap(t: float, alpha: float, rule: _Rule) -> float:
    """E(t) / u(y_fb): revenue minus resource cost of the pointwise menu with threshold t."""
    phi0, phi1 = _phi01(t, rule)
    return 2.0 * phi1 - phi0 - alpha * (phi1 - t * phi0) / (1.0 - t)


# ----------------------------------------------------------------------------------
# First best
# ----------------------------------------------------------------------------------
def _check_params(A: float, alpha: float) -> None:
    if not (math.isfinite(A) and A > 0.0):
        raise ValueError(f"A must be a positive finite number, got {A!r}")
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def first_best_quantity(*, A: float = 1.0, alpha: float = 0.5) -> float:
    """y_fb = (αA)^{1/(1−α)}: the quantity with u'(y) = 1 (marginal cost of one unit)."""
    _check_params(A, alpha)
    return float((alpha * A) ** (1.0 / (1.0 - alpha)))


def first_best_welfare(*, A: float = 1.0, alpha: float = 0.5) -> float:
    """Planner's welfare per agent, max ∫_0^1 a(u(y(a)) − y(a)) da = (u(y_fb) − y_fb)/2.

    The planner sees every type and is bound by no IC constraint, so it maximises
    a(u(y) − y) type by type; u'(y) = 1 at the same y_fb for every a > 0. For
    u = √y this is (1/2 − 1/4)/2 = 1/8.
    """
    y = first_best_quantity(A=A, alpha=alpha)
    return float(0.5 * (A * y**alpha - y))


# ----------------------------------------------------------------------------------
# The solved menu
# ----------------------------------------------------------------------------------
def _as_types(a: npt.ArrayLike) -> FloatArray:
    x = np.asarray(a, dtype=float)
    if not np.all((x >= 0.0) & (x <= 1.0)):
        raise ValueError("types must lie in [0, 1]")
    return x


@dataclass(frozen=True, slots=True, kw_only=True)
class GridTariff:
    """The optimal incentive-compatible tariff menu, and the checks made on it.

    Scalars: ``mu`` (capacity multiplier μ), ``threshold`` (t*: types below are
    excluded), ``welfare`` (per agent, = ∫ x1), ``first_best_welfare``, ``p_max`` (the
    top type's payment, largest price on the tariff), ``y_max`` (= y_fb, the top
    type's quantity), ``resource_per_agent`` (∫ a y = ∫ p at the optimum).

    Grid arrays (``grid_size`` points each): ``a_grid`` (uniform on [0, 1]) with
    ``x1_grid``, ``x2_grid``, ``y_grid``, ``p_grid``; ``price_grid`` (uniform on
    [0, p_max]) with ``tariff_grid`` = y(p).

    Checks: ``capacity_residual`` (∫p − ∫a·y by adaptive quadrature of the menu
    itself, ~0 when capacity binds), ``welfare_check`` (∫x1 by adaptive quadrature
    minus ``welfare``), ``ir_min`` (min x1 on the grid), ``monotone_min_step`` (min
    step of x2 on the grid, IC needs ≥ 0), ``ic_violation`` (largest gain any audit
    type gets by taking another audit type's item or nothing, ≥ 0, 0 when IC).

    ``result`` is the shared :class:`MechanismResult` (``lambdas=[μ]``,
    ``thresholds=[t*]``, everything above in ``details``).
    """

    A: float
    alpha: float
    mu: float
    threshold: float
    welfare: float
    first_best_welfare: float
    p_max: float
    y_max: float
    resource_per_agent: float
    capacity_residual: float
    welfare_check: float
    ir_min: float
    monotone_min_step: float
    ic_violation: float
    a_grid: FloatArray
    x1_grid: FloatArray
    x2_grid: FloatArray
    y_grid: FloatArray
    p_grid: FloatArray
    price_grid: FloatArray
    tariff_grid: FloatArray
    result: MechanismResult
    _rule: _Rule

    @property
    def kappa(self) -> float:
        return self.alpha / (1.0 - self.alpha)

    @property
    def u_top(self) -> float:
        """u(y_fb): the top type's x2, and the scale of x1, x2 and p."""
        return float(self.A * self.y_max**self.alpha)

    # -- the menu as functions of the type ------------------------------------------
    def x2(self, a: npt.ArrayLike) -> FloatArray:
        """x2(a) = u(y(a)) = x1'(a)."""
        x = _as_types(a)
        return self.u_top * _hhat(x, self.threshold) ** self.kappa

    def y(self, a: npt.ArrayLike) -> FloatArray:
        """Quantity y(a) = u⁻¹(x2(a)) = y_fb ĥ(a)^{κ+1}."""
        x = _as_types(a)
        return self.y_max * _hhat(x, self.threshold) ** (self.kappa + 1.0)

    def x1(self, a: npt.ArrayLike) -> FloatArray:
        """Net benefit x1(a) = a u(y(a)) − p(a) = ∫_0^a x2."""
        x = _as_types(a)
        return self.u_top * _phi(x, self.threshold, self._rule)

    def p(self, a: npt.ArrayLike) -> FloatArray:
        """Payment p(a) = a x2(a) − x1(a)."""
        x = _as_types(a)
        return x * self.x2(x) - self.x1(x)

    # -- the menu as a tariff: quantity as a function of the price -------------------
    def type_of_price(self, price: npt.ArrayLike) -> FloatArray:
        """The type a ∈ [t*, 1] whose item costs ``price`` (NaN outside [0, p_max])."""
        z = self._level(price)
        out = np.full(z.shape, np.nan)
        ok = np.isfinite(z)
        out[ok] = _type_of_level(z[ok], self)
        return out

    def y_of_p(self, price: npt.ArrayLike) -> FloatArray:
        """The tariff: quantity bought at ``price`` (NaN outside [0, p_max])."""
        return self.y_max * self._level(price) ** (1.0 + 1.0 / self.kappa)

    def _level(self, price: npt.ArrayLike) -> FloatArray:
        """x2/u(y_fb) of the item that costs ``price`` (NaN outside [0, p_max]).

        Prices within ``_PRICE_SLACK·p_max`` outside the interval (rounding, e.g. p(1)
        recomputed from the menu) are clamped to it.
        """
        q = np.asarray(price, dtype=float)
        flat = q.ravel()
        slack = _PRICE_SLACK * self.p_max
        ok = (flat >= -slack) & (flat <= self.p_max + slack)
        out = np.full(flat.shape, np.nan)
        if np.any(ok):
            out[ok] = _level_of_price(np.clip(flat[ok], 0.0, self.p_max), self)
        return out.reshape(q.shape)


def _type_of_level(z: FloatArray, menu: GridTariff) -> FloatArray:
    """The type a ∈ [t*, 1] with x2(a) = u(y_fb)·z, i.e. ĥ(a) = z^{1/κ}."""
    t = menu.threshold
    a = t / (1.0 - (1.0 - t) * z ** (1.0 / menu.kappa))
    return np.asarray(np.clip(a, t, 1.0), dtype=float)


def _level_of_price(price: FloatArray, menu: GridTariff) -> FloatArray:
    """Solve p = price for z = x2/u(y_fb) = ĥ^κ ∈ [0, 1], on the whole array at once.

    The unknown is z rather than the type a: dp/dz = u(y_fb)·a lies in
    [u(y_fb) t*, u(y_fb)], so the problem is well conditioned for every κ (in ``a`` the
    slope blows up at t* when κ < 1 and vanishes there when κ > 1, and for small κ
    whole ranges of prices sit within rounding of a = t*), and p is convex in z
    (d²p/dz² = u(y_fb) da/dz > 0), so Newton's method started at z = 1 decreases
    monotonically to the root. p itself is evaluated as u(y_fb)(a z − Φ(a)), with z
    used directly rather than recomputed from a.
    """
    u = menu.u_top
    z = np.ones(price.shape)
    active = (price > 0.0) & (price < menu.p_max)
    for _ in range(200):
        a = _type_of_level(z, menu)
        f = u * (a * z - _phi(a, menu.threshold, menu._rule)) - price
        z_new = np.clip(z - f / (u * a), 0.0, 1.0)
        active &= (f > 0.0) & (np.abs(z_new - z) > 2.0 * _EPS * z)
        z = np.where(active, z_new, z)
        if not np.any(active):
            break
    return np.where(price <= 0.0, 0.0, z)


# ----------------------------------------------------------------------------------
# Solver
# ----------------------------------------------------------------------------------
def _solve_threshold(alpha: float, rule: _Rule, tol: float) -> tuple[float, bool, str]:
    lo = alpha / 8.0
    for _ in range(60):
        if _capacity_gap(lo, alpha, rule) < 0.0:
            break
        lo /= 4.0
    else:  # pragma: no cover - E(0+) = −α/2 < 0, so this needs a broken quadrature
        return math.nan, False, "could not bracket the capacity equation from below"
    hi = 0.5
    if not _capacity_gap(hi, alpha, rule) > 0.0:  # pragma: no cover - see module doc
        return math.nan, False, "capacity equation E(1/2) is not positive"
    t, info = optimize.brentq(
        _capacity_gap, lo, hi, args=(alpha, rule), xtol=tol, rtol=4.0 * np.finfo(float).eps,
        maxiter=200, full_output=True,
    )
    return float(t), bool(info.converged), str(info.flag)


def _quad(func: Any, lo: float, hi: float) -> float:
    """Adaptive quadrature (QUADPACK) used only for the independent checks."""
    out = integrate.quad(func, lo, hi, epsabs=1e-14, epsrel=1e-11, limit=400, full_output=1)
    return float(out[0])


def solve_grid_tariff(
    *,
    A: float = 1.0,
    alpha: float = 0.5,
    grid_size: int = 201,
    audit_size: int = 401,
    tol: float = 1e-14,
) -> GridTariff:
    """Solve the grid-computing tariff problem for u(y) = A y^α and a ~ U[0, 1].

    ``grid_size`` is the number of points of the returned type and price grids;
    ``audit_size`` the number of types in the IC audit (an ``audit_size²`` table of
    every type against every item); ``tol`` the absolute tolerance on t*.
    """
    _check_params(A, alpha)
    if grid_size < 2 or audit_size < 2:
        raise ValueError("grid_size and audit_size must be at least 2")
    kappa = alpha / (1.0 - alpha)
    rule = _Rule.build(kappa)
    t, converged, flag = _solve_threshold(alpha, rule, tol)
    y_fb = first_best_quantity(A=A, alpha=alpha)
    u_fb = A * y_fb**alpha
    fb = first_best_welfare(A=A, alpha=alpha)
    if not converged:  # pragma: no cover - brentq on a bracketed continuous function
        res = MechanismResult(mechanism=MECHANISM, success=False,
                              status=f"capacity equation did not converge: {flag}",
                              welfare=math.nan, details={"A": A, "alpha": alpha})
        nan = np.full(1, np.nan)
        return GridTariff(A=A, alpha=alpha, mu=math.nan, threshold=t, welfare=math.nan,
                          first_best_welfare=fb, p_max=math.nan, y_max=y_fb,
                          resource_per_agent=math.nan, capacity_residual=math.nan,
                          welfare_check=math.nan, ir_min=math.nan, monotone_min_step=math.nan,
                          ic_violation=math.nan, a_grid=nan, x1_grid=nan, x2_grid=nan,
                          y_grid=nan, p_grid=nan, price_grid=nan, tariff_grid=nan,
                          result=res, _rule=rule)

    mu = (1.0 - t) / (1.0 - 2.0 * t)
    phi0, phi1 = _phi01(t, rule)
    welfare = u_fb * (phi0 - phi1)
    p_max = u_fb * (1.0 - phi0)  # p(1) = 1·x2(1) − x1(1), ĥ(1) = 1
    resource = y_fb * (phi1 - t * phi0) / (1.0 - t)  # ∫ a y = y_fb ∫ (a − t) ĥ^κ /(1 − t)

    empty = np.zeros(0)
    menu = GridTariff(
        A=A, alpha=alpha, mu=mu, threshold=t, welfare=welfare, first_best_welfare=fb,
        p_max=p_max, y_max=y_fb, resource_per_agent=resource, capacity_residual=math.nan,
        welfare_check=math.nan, ir_min=math.nan, monotone_min_step=math.nan,
        ic_violation=math.nan, a_grid=empty, x1_grid=empty, x2_grid=empty, y_grid=empty,
        p_grid=empty, price_grid=empty, tariff_grid=empty,
        result=MechanismResult(mechanism=MECHANISM, success=False, status="unchecked",
                               welfare=welfare),
        _rule=rule,
    )

    # -- grids ----------------------------------------------------------------------
    a_grid = np.linspace(0.0, 1.0, grid_size)
    x1g, x2g, yg, pg = menu.x1(a_grid), menu.x2(a_grid), menu.y(a_grid), menu.p(a_grid)
    price_grid = np.linspace(0.0, p_max, grid_size)
    tariff_grid = menu.y_of_p(price_grid)

    # -- checks -----------------------------------------------------------------------
    def scalar(f: Any) -> Any:
        return lambda x: float(f(np.array([x]))[0])

    int_p = _quad(scalar(menu.p), t, 1.0)
    int_ay = _quad(lambda x: x * scalar(menu.y)(x), t, 1.0)
    int_x1 = _quad(scalar(menu.x1), t, 1.0)
    capacity_residual = int_p - int_ay
    welfare_check = int_x1 - welfare
    ir_min = float(np.min(x1g))
    monotone_min_step = float(np.min(np.diff(x2g)))
    a_aud = np.linspace(0.0, 1.0, audit_size)
    x2a, pa = menu.x2(a_aud), menu.p(a_aud)
    U = a_aud[:, None] * x2a[None, :] - pa[None, :]  # type i takes type j's item
    own = np.diag(U)
    best = np.maximum(U.max(axis=1), 0.0)  # ... or nothing (the outside option)
    ic_violation = float(np.max(best - own))

    scale = u_fb
    problems = []
    if abs(capacity_residual) > _CHECK_TOL * scale:
        problems.append(f"capacity does not bind (∫p − ∫a·y = {capacity_residual:.3e})")
    if abs(welfare_check) > _CHECK_TOL * scale:
        problems.append(f"welfare ≠ ∫x1 (difference {welfare_check:.3e})")
    if ir_min < -_CHECK_TOL * scale:
        problems.append(f"IR fails (min x1 = {ir_min:.3e})")
    if monotone_min_step < -_CHECK_TOL * scale:
        problems.append(f"x2 decreases (min step {monotone_min_step:.3e}): ironing needed")
    if ic_violation > _IC_TOL * scale:
        problems.append(f"IC audit fails (worst gain from misreporting {ic_violation:.3e})")
    if not welfare <= fb * (1.0 + 1e-12):
        problems.append(f"welfare {welfare:.10g} exceeds the first best {fb:.10g}")
    success = not problems
    if success:
        status = (
            f"optimal: μ = {mu:.12g}, t* = {t:.12g}; capacity binds (∫p − ∫a·y = "
            f"{capacity_residual:.2e}); x2 nondecreasing (min step {monotone_min_step:.2e}, "
            f"no ironing needed); IR min x1 = {ir_min:.2e}; IC audit on {audit_size} types: "
            f"worst gain from misreporting {ic_violation:.2e}"
        )
    else:
        status = "; ".join(problems)

    details: dict[str, Any] = {
        "A": A, "alpha": alpha, "mu": mu, "threshold": t,
        "first_best_welfare": fb, "welfare_ratio": welfare / fb,
        "p_max": p_max, "y_max": y_fb, "resource_per_agent": resource,
        "capacity_residual": capacity_residual, "welfare_check": welfare_check,
        "ir_min": ir_min, "monotone_min_step": monotone_min_step,
        "ic_violation": ic_violation, "audit_size": audit_size, "ironed": False,
    }
    result = MechanismResult(
        mechanism=MECHANISM, success=success, status=status, welfare=welfare,
        welfare_se=0.0, lambdas=np.array([mu]), thresholds=np.array([t]), details=details,
    )
    return GridTariff(
        A=A, alpha=alpha, mu=mu, threshold=t, welfare=welfare, first_best_welfare=fb,
        p_max=p_max, y_max=y_fb, resource_per_agent=resource,
        capacity_residual=capacity_residual, welfare_check=welfare_check, ir_min=ir_min,
        monotone_min_step=monotone_min_step, ic_violation=ic_violation, a_grid=a_grid,
        x1_grid=x1g, x2_grid=x2g, y_grid=yg, p_grid=pg, price_grid=price_grid,
        tariff_grid=tariff_grid, result=result, _rule=rule,
    )


# ----------------------------------------------------------------------------------
# Closed form for u(y) = A √y
# ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class SqrtTariffClosedForm:
    """The α = 1/2 solution in closed form (up to one scalar root).

    ``x1(a) = x1_const + beta·a − gamma·ln a`` above ``threshold``;
    ``y(p) = y_coef (1 + e^{−rate2·p} − 2 e^{−rate1·p})`` on ``[0, p_max]``, with
    ``rate2 = 2·rate1`` — the slides print this as ``c + c e^{−r2 p} − 2c e^{−r1 p}``.
    """

    A: float
    threshold: float
    mu: float
    beta: float
    gamma: float
    x1_const: float
    welfare: float
    first_best_welfare: float
    y_coef: float
    rate1: float
    rate2: float
    p_max: float

    def x1(self, a: npt.ArrayLike) -> FloatArray:
        x = _as_types(a)
        with np.errstate(divide="ignore"):
            val = self.x1_const + self.beta * x - self.gamma * np.log(x)
        return np.where(x > self.threshold, val, 0.0)

    def p(self, a: npt.ArrayLike) -> FloatArray:
        x = _as_types(a)
        with np.errstate(divide="ignore"):
            val = self.gamma * np.log(x / self.threshold)
        return np.where(x > self.threshold, val, 0.0)

    def y_of_p(self, price: npt.ArrayLike) -> FloatArray:
        q = np.asarray(price, dtype=float)
        e = np.exp(-self.rate1 * q)
        val = self.y_coef * (1.0 - e) ** 2
        return np.where((q >= 0.0) & (q <= self.p_max), val, np.nan)


def sqrt_threshold_equation(t: float) -> float:
    """(1 − t)(4t² − t − 1) − 2t(2 − 3t) ln t: zero at t* when u = A√y."""
    return (1.0 - t) * (4.0 * t * t - t - 1.0) - 2.0 * t * (2.0 - 3.0 * t) * math.log(t)


def sqrt_tariff_closed_form(*, A: float = 1.0) -> SqrtTariffClosedForm:
    """Closed-form solution for ``u(y) = A√y`` (see the module docstring)."""
    _check_params(A, 0.5)
    t = float(optimize.brentq(sqrt_threshold_equation, 1e-6, 0.5 - 1e-9, xtol=1e-16,
                              rtol=4.0 * np.finfo(float).eps, maxiter=200))
    A2 = A * A
    beta = A2 / (2.0 * (1.0 - t))
    gamma = beta * t
    welfare = A2 * ((1.0 - t) / 4.0 + t * (math.log(t) + 1.0 - t) / (2.0 * (1.0 - t)))
    return SqrtTariffClosedForm(
        A=A, threshold=t, mu=(1.0 - t) / (1.0 - 2.0 * t), beta=beta, gamma=gamma,
        x1_const=gamma * (math.log(t) - 1.0), welfare=welfare,
        first_best_welfare=A2 / 8.0, y_coef=(beta / A) ** 2, rate1=1.0 / gamma,
        rate2=2.0 / gamma, p_max=-gamma * math.log(t),
    )
