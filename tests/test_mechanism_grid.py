"""Tests for the grid-computing tariff menu (coordinator.mechanism.grid).

The engine solves the general case u(y) = A·y^α by quadrature and a root finder; these
tests hold it against (i) the closed form for u = √y, derived here again from the
capacity constraint written in its primitive form, (ii) exact antiderivatives for
integer κ = α/(1 − α), (iii) a direct numerical optimisation over step-function menus
that uses none of the derivation, and (iv) the numbers printed on the source slides.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from coordinator.mechanism.grid import (
    GridTariff,
    first_best_quantity,
    first_best_welfare,
    solve_grid_tariff,
    sqrt_tariff_closed_form,
    sqrt_threshold_equation,
)
from coordinator.mechanism.result import MechanismResult


@pytest.fixture(scope="module")
def sqrt_menu() -> GridTariff:
    return solve_grid_tariff(A=1.0, alpha=0.5, grid_size=401)


# ---------------------------------------------------------------------------------
# α = 1/2: closed form
# ---------------------------------------------------------------------------------
def _sqrt_threshold_from_primitive_capacity() -> float:
    """t* for u = √y from ∫_t^1 [p(a) − a y(a)] da = 0, by quadrature, no algebra.

    For a given threshold t the pointwise menu is x2 = β(1 − t/a), β = 1/(2(1 − t))
    (from x2 = (2μ − 1)/(2μ) − (μ − 1)/(2μa) with μ = (1 − t)/(1 − 2t)); then
    y = x2², x1 = ∫_t^a x2 and p = a x2 − x1 are integrated numerically.
    """

    def gap(t: float) -> float:
        beta = 1.0 / (2.0 * (1.0 - t))

        def x2(a: float) -> float:
            return beta * (1.0 - t / a)

        def x1(a: float) -> float:
            return float(integrate.quad(x2, t, a, epsabs=1e-15, epsrel=1e-13)[0])

        def integrand(a: float) -> float:
            return a * x2(a) - x1(a) - a * x2(a) ** 2

        return float(integrate.quad(integrand, t, 1.0, epsabs=1e-15, epsrel=1e-13)[0])

    return float(optimize.brentq(gap, 0.05, 0.45, xtol=1e-15, rtol=1e-14))


def test_sqrt_threshold_equation_is_the_capacity_constraint() -> None:
    cf = sqrt_tariff_closed_form()
    t_primitive = _sqrt_threshold_from_primitive_capacity()
    assert cf.threshold == pytest.approx(t_primitive, rel=1e-11, abs=0)
    assert abs(sqrt_threshold_equation(cf.threshold)) < 1e-15
    # μ ↔ t* (slides' hint: t* = (μ − 1)/(2μ − 1))
    assert (cf.mu - 1.0) / (2.0 * cf.mu - 1.0) == pytest.approx(cf.threshold, rel=1e-14)
    # the hint's x2 = (2μ−1)/(2μ) − (μ−1)/(2μa) is β − γ/a
    assert cf.beta == pytest.approx((2 * cf.mu - 1) / (2 * cf.mu), rel=1e-14)
    assert cf.gamma == pytest.approx((cf.mu - 1) / (2 * cf.mu), rel=1e-14)
    assert cf.beta - cf.gamma == pytest.approx(0.5, rel=1e-14)  # x2(1) = u(y_fb) = 1/2


def test_engine_matches_sqrt_closed_form(sqrt_menu: GridTariff) -> None:
    cf = sqrt_tariff_closed_form()
    m = sqrt_menu
    assert m.result.success, m.result.status
    assert m.mu == pytest.approx(cf.mu, rel=1e-12)
    assert m.threshold == pytest.approx(cf.threshold, rel=1e-12)
    assert m.welfare == pytest.approx(cf.welfare, rel=1e-12)
    assert m.p_max == pytest.approx(cf.p_max, rel=1e-12)
    a = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(m.x1(a), cf.x1(a), rtol=0, atol=1e-14)
    np.testing.assert_allclose(m.p(a), cf.p(a), rtol=0, atol=1e-14)
    up = a > cf.threshold
    y_cf = np.zeros_like(a)
    y_cf[up] = (cf.beta - cf.gamma / a[up]) ** 2  # y = x2², x2 = β − γ/a
    np.testing.assert_allclose(m.y(a), y_cf, rtol=0, atol=1e-15)
    top = min(m.p_max, cf.p_max)  # they differ in the last bits
    prices = np.linspace(0.0, top, 501)
    np.testing.assert_allclose(m.y_of_p(prices), cf.y_of_p(prices), rtol=0, atol=1e-14)
    np.testing.assert_allclose(m.type_of_price(prices),
                               cf.threshold * np.exp(prices / cf.gamma), rtol=1e-13)
    np.testing.assert_allclose(m.tariff_grid[:-1], cf.y_of_p(m.price_grid[:-1]), atol=1e-14)
    # welfare by another route: ∫ x1 of the closed form
    w = integrate.quad(lambda s: float(cf.x1(np.array([s]))[0]), cf.threshold, 1.0,
                       epsabs=1e-15, epsrel=1e-13)[0]
    assert m.welfare == pytest.approx(w, rel=1e-11)


@pytest.mark.parametrize("A", [0.3, 2.0 / 3.0, 1.0, 4.0])
def test_sqrt_scales_as_a_squared(A: float) -> None:
    m = solve_grid_tariff(A=A, alpha=0.5, grid_size=51, audit_size=101)
    cf = sqrt_tariff_closed_form(A=A)
    assert m.result.success, m.result.status
    assert m.threshold == pytest.approx(sqrt_tariff_closed_form().threshold, rel=1e-12)
    assert m.welfare == pytest.approx(cf.welfare, rel=1e-12)
    assert cf.welfare == pytest.approx(A**2 * sqrt_tariff_closed_form().welfare, rel=1e-13)
    assert m.first_best_welfare == pytest.approx(A**2 / 8.0, rel=1e-14)
    prices = np.linspace(0.0, min(m.p_max, cf.p_max), 101)
    np.testing.assert_allclose(m.y_of_p(prices), cf.y_of_p(prices), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------
# The slides' printed numbers, within their printed precision (half a unit in the
# last printed digit). All agree; engine values (A = 1, α = 1/2):
#   t* = 0.158566259931   (slides 0.1586)      μ = 1.23220648888 (not printed)
#   welfare 0.116120542571 (0.1161)             planner 0.125 (0.125)
#   x1 = −0.267744876520 + 0.594223854108 a − 0.0942238541078 log a
#        (−0.2677, 0.5942, 0.0942)
#   y(p) = 0.353101988791 + 0.353101988791 e^{−21.2260474690 p}
#          − 0.706203977581 e^{−10.6130237345 p},  p ≤ 0.173521022412
#        (0.3531, 21.23, 0.7062, 10.61, 0.1735)
# 21.23 is 2/γ = 21.22605 rounded up; it is consistent with 10.61 = 1/γ = 10.61302.
# ---------------------------------------------------------------------------------
def _agrees(value: float, printed: str) -> bool:
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(value - float(printed)) <= 0.5 * 10.0**-decimals + 1e-15


def test_slides_printed_numbers(sqrt_menu: GridTariff) -> None:
    cf = sqrt_tariff_closed_form()
    m = sqrt_menu
    pairs = {
        "t*": (m.threshold, "0.1586"),
        "welfare": (m.welfare, "0.1161"),
        "planner": (m.first_best_welfare, "0.125"),
        "x1 constant": (cf.x1_const, "-0.2677"),
        "x1 slope": (cf.beta, "0.5942"),
        "x1 log coefficient": (cf.gamma, "0.0942"),
        "y(p) constant": (cf.y_coef, "0.3531"),
        "y(p) fast coefficient": (cf.y_coef, "0.3531"),
        "y(p) slow coefficient": (2.0 * cf.y_coef, "0.7062"),
        "y(p) fast rate": (cf.rate2, "21.23"),
        "y(p) slow rate": (cf.rate1, "10.61"),
        "p_max": (m.p_max, "0.1735"),
    }
    bad = {k: v for k, v in pairs.items() if not _agrees(*v)}
    assert not bad, bad
    # the engine's x1 has the printed form: constant + slope·a − coefficient·log a
    a = np.linspace(cf.threshold, 1.0, 201)[1:]
    fit = np.linalg.lstsq(np.column_stack([np.ones_like(a), a, -np.log(a)]), m.x1(a),
                          rcond=None)[0]
    np.testing.assert_allclose(fit, [cf.x1_const, cf.beta, cf.gamma], rtol=1e-10)
    # ... and the engine's tariff has the printed form c + c e^{−2λp} − 2c e^{−λp}
    p = np.linspace(0.0, m.p_max, 101)
    e = np.exp(-cf.rate1 * p)
    np.testing.assert_allclose(m.y_of_p(p), cf.y_coef * (1 + e**2 - 2 * e), atol=1e-13)


def test_slides_qualitative_claims(sqrt_menu: GridTariff) -> None:
    """Slides: agents below t* are completely prevented from participating; "most
    agents receive more than for what they pay. But some agents, with small values of
    α receive less than they contribute" (p(a) > y(a), both in resource units since
    C(Q) = Q); their net benefit is still positive."""
    m = sqrt_menu
    a = np.linspace(0.0, 1.0, 2001)
    below = a <= m.threshold
    assert np.all(m.y(a[below]) == 0.0) and np.all(m.p(a[below]) == 0.0)
    above = a > m.threshold
    overpay = m.p(a) > m.y(a)
    assert overpay[above].any() and overpay[above].mean() < 0.15  # ≈ 9% of participants
    assert np.all(overpay[above][: overpay[above].sum()])  # ... the lowest ones
    assert np.all(m.x1(a[above]) > 0.0)


def test_slides_ic_equation(sqrt_menu: GridTariff) -> None:
    """The slides' local IC condition a u'(y(a)) y'(a) − p'(a) = 0, by central
    differences of the engine's menu (u = √y, so u'(y) = 1/(2√y))."""
    m = sqrt_menu
    a = np.linspace(m.threshold + 0.01, 0.99, 50)
    d = 1e-6
    y_prime = (m.y(a + d) - m.y(a - d)) / (2 * d)
    p_prime = (m.p(a + d) - m.p(a - d)) / (2 * d)
    residual = a * y_prime / (2.0 * np.sqrt(m.y(a))) - p_prime
    assert np.max(np.abs(residual)) < 1e-8


# ---------------------------------------------------------------------------------
# Planner
# ---------------------------------------------------------------------------------
def test_planner_welfare_sqrt() -> None:
    assert first_best_welfare() == 0.125
    assert first_best_quantity() == 0.25


@pytest.mark.parametrize(("A", "alpha"), [(1.0, 0.5), (0.7, 0.2), (3.0, 0.8)])
def test_planner_welfare_by_direct_maximisation(A: float, alpha: float) -> None:
    # the planner maximises a(u(y) − y) type by type; the a-factor integrates to 1/2
    res = optimize.minimize_scalar(lambda y: -(A * y**alpha - y), bounds=(0.0, 1e6),
                                   method="bounded", options={"xatol": 1e-12})
    assert first_best_quantity(A=A, alpha=alpha) == pytest.approx(res.x, rel=1e-6)
    assert first_best_welfare(A=A, alpha=alpha) == pytest.approx(-0.5 * res.fun, rel=1e-10)


# ---------------------------------------------------------------------------------
# Integer κ = α/(1 − α): exact antiderivatives, and capacity in primitive form
# ---------------------------------------------------------------------------------
def _phi_exact(a: np.ndarray, t: float, n: int) -> np.ndarray:
    """∫_t^a ((s − t)/((1 − t)s))^n ds by the binomial expansion."""
    a = np.asarray(a, dtype=float)
    up = a > t
    s = a[up]
    out = s - t
    for k in range(1, n + 1):
        c = math.comb(n, k) * (-t) ** k
        if k == 1:
            out = out + c * np.log(s / t)
        else:
            out = out + c * (s ** (1 - k) - t ** (1 - k)) / (1 - k)
    res = np.zeros_like(a)
    res[up] = out / (1.0 - t) ** n
    return res


@pytest.mark.parametrize("n", [1, 2, 3])
def test_integer_kappa_exact(n: int) -> None:
    alpha = n / (n + 1.0)
    A = 1.3
    m = solve_grid_tariff(A=A, alpha=alpha, grid_size=51, audit_size=101)
    assert m.result.success, m.result.status
    t = m.threshold
    a = np.linspace(0.0, 1.0, 501)
    np.testing.assert_allclose(m.x1(a), m.u_top * _phi_exact(a, t, n), rtol=1e-13, atol=1e-15)

    # capacity in primitive form with exact x1: ∫_t^1 [a x2 − x1 − a y] da = 0 at t*
    def gap(tt: float) -> float:
        def f(s: float) -> float:
            h = (s - tt) / ((1.0 - tt) * s)
            x2 = m.u_top * h**n
            x1 = m.u_top * float(_phi_exact(np.array([s]), tt, n)[0])
            return s * x2 - x1 - s * m.y_max * h ** (n + 1)

        return float(integrate.quad(f, tt, 1.0, epsabs=1e-15, epsrel=1e-13)[0])

    t_ref = optimize.brentq(gap, 1e-3, 0.49, xtol=1e-15, rtol=1e-14)
    assert t == pytest.approx(t_ref, rel=1e-10)


# ---------------------------------------------------------------------------------
# Optimality against a direct optimisation that uses none of the derivation
# ---------------------------------------------------------------------------------
def _best_step_menu(A: float, alpha: float, N: int = 40) -> tuple[float, float, float]:
    """Best menu with x2 piecewise constant on N equal cells, found by SLSQP.

    Any nondecreasing x2 with x1(a) = x1(0) + ∫_0^a x2 and p = a x2 − x1 is IC; welfare
    ∫ x1 and capacity ∫ p − ∫ a y are computed exactly for step functions (no
    integration by parts, no multiplier). Variables: x1(0) ≥ 0 and the N steps ≥ 0.
    Returns (welfare, capacity slack, x1(0)).
    """
    edges = np.linspace(0.0, 1.0, N + 1)
    h = np.diff(edges)
    sq = np.diff(edges**2) / 2.0
    w = h * (1.0 - edges[1:]) + h * h / 2.0  # ∫ x1 = x1(0) + Σ v_k w_k

    def parts(z: np.ndarray) -> tuple[float, float]:
        c, v = z[0], np.cumsum(z[1:])
        x1e = c + np.concatenate([[0.0], np.cumsum(v * h)])
        W = float(np.sum(h * (x1e[:-1] + x1e[1:]) / 2.0))
        y = (v / A) ** (1.0 / alpha)
        return W, float(np.sum(v * sq) - W - np.sum(y * sq))

    def rcum(g: np.ndarray) -> np.ndarray:
        return np.cumsum(g[::-1])[::-1]

    grad_w = np.concatenate([[1.0], rcum(w)])

    def grad_cap(z: np.ndarray) -> np.ndarray:
        v = np.cumsum(z[1:])
        dy = (v / A) ** (1.0 / alpha - 1.0) / (alpha * A)
        return np.concatenate([[-1.0], rcum(sq - w - dy * sq)])

    u_top = A * first_best_quantity(A=A, alpha=alpha) ** alpha
    z0 = np.concatenate([[0.0], np.full(N, u_top / (4.0 * N))])
    res = optimize.minimize(
        lambda z: -parts(z)[0], z0, jac=lambda z: -grad_w, method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda z: parts(z)[1], "jac": grad_cap}],
        bounds=[(0.0, None)] * (N + 1), options={"maxiter": 1000, "ftol": 1e-15},
    )
    W, slack = parts(res.x)
    return W, slack, float(res.x[0])


@pytest.mark.parametrize(("A", "alpha"), [(1.0, 0.5), (1.3, 0.3), (0.7, 0.8)])
def test_no_step_menu_beats_the_engine(A: float, alpha: float) -> None:
    m = solve_grid_tariff(A=A, alpha=alpha, grid_size=51, audit_size=101)
    W, slack, x1_at_0 = _best_step_menu(A, alpha)
    assert slack > -1e-12 * m.u_top  # the step menu is feasible
    gap = m.welfare - W
    assert gap >= -1e-12 * m.welfare  # ... and no better (weak duality)
    assert gap <= 1e-3 * m.welfare  # ... and close (discretisation gap only)
    assert x1_at_0 <= 1e-9 * m.u_top  # IR binds at a = 0


# ---------------------------------------------------------------------------------
# Invariants on random (A, α)
# ---------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    A=st.floats(min_value=0.2, max_value=5.0),
    alpha=st.floats(min_value=0.05, max_value=0.95),
)
def test_invariants_random(A: float, alpha: float) -> None:
    m = solve_grid_tariff(A=A, alpha=alpha, grid_size=101, audit_size=201)
    r = m.result
    assert r.success, r.status
    s = m.u_top
    assert 0.0 < m.threshold < 0.5 and m.mu > 1.0
    assert m.mu == pytest.approx((1 - m.threshold) / (1 - 2 * m.threshold), rel=1e-13)
    # capacity binds, by adaptive quadrature of the menu itself
    assert abs(m.capacity_residual) <= 1e-9 * s
    ay = integrate.quad(lambda x: x * float(m.y(np.array([x]))[0]), m.threshold, 1.0,
                        epsabs=1e-14, epsrel=1e-11, limit=200)[0]
    assert m.resource_per_agent == pytest.approx(ay, rel=1e-9)
    assert abs(m.welfare_check) <= 1e-9 * s
    # IR and IC
    assert m.ir_min >= 0.0
    assert m.monotone_min_step >= 0.0
    assert m.ic_violation <= 1e-12 * s
    # the audit, redone here on a different (random-offset) grid, including nothing
    a = np.sort(np.random.default_rng(0).random(300))
    U = a[:, None] * m.x2(a)[None, :] - m.p(a)[None, :]
    own = np.diag(U)
    assert np.max(np.maximum(U.max(axis=1), 0.0) - own) <= 1e-12 * s
    # no distortion at the top, exclusion at the bottom, welfare below the first best
    assert float(m.y(np.array([1.0]))[0]) == pytest.approx(m.y_max, rel=1e-14)
    assert float(m.x2(np.array([m.threshold]))[0]) == 0.0
    assert 0.0 < m.welfare < m.first_best_welfare
    # threshold and welfare ratio depend on α only
    m1 = solve_grid_tariff(A=1.0, alpha=alpha, grid_size=2, audit_size=2)
    assert m.threshold == pytest.approx(m1.threshold, rel=1e-11)
    assert m.welfare / m.first_best_welfare == pytest.approx(
        m1.welfare / m1.first_best_welfare, rel=1e-10)
    # the tariff: p increasing on [t*, 1], y(p) increasing, y_of_p inverts p. (Not
    # p(type_of_price(q)) = q: for small α the types paying small prices are within
    # rounding of t*, so that direction is ill conditioned in a; y(p) is not.)
    aa = np.linspace(m.threshold, 1.0, 101)
    assert np.all(np.diff(m.p(aa)) > 0.0)
    assert np.all(np.diff(m.tariff_grid) >= 0.0)
    np.testing.assert_allclose(m.y_of_p(m.p(aa)), m.y(aa), rtol=1e-10, atol=1e-13 * m.y_max)


@pytest.mark.parametrize("alpha", [0.01, 0.99])
def test_extreme_alpha(alpha: float) -> None:
    m = solve_grid_tariff(A=1.0, alpha=alpha, grid_size=51, audit_size=101)
    assert m.result.success, m.result.status
    assert abs(m.capacity_residual) <= 1e-9 * m.u_top
    assert 0.0 < m.welfare < m.first_best_welfare
    prices = np.linspace(0.0, m.p_max, 51)
    assert np.all(np.diff(m.y_of_p(prices)) >= 0.0)


# ---------------------------------------------------------------------------------
# Record, API edges, speed
# ---------------------------------------------------------------------------------
def test_result_record(sqrt_menu: GridTariff) -> None:
    r = sqrt_menu.result
    assert isinstance(r, MechanismResult)
    assert r.mechanism == "grid_tariff"
    assert r.success and "capacity binds" in r.status
    assert r.welfare == sqrt_menu.welfare and r.welfare_se == 0.0
    assert r.lambdas is not None and r.lambdas[0] == sqrt_menu.mu
    assert r.thresholds is not None and r.thresholds[0] == sqrt_menu.threshold
    assert r.details["first_best_welfare"] == 0.125
    json.dumps(r.as_dict())


def test_api_edges(sqrt_menu: GridTariff) -> None:
    m = sqrt_menu
    out = m.y_of_p(np.array([-0.01, 0.0, m.p_max, m.p_max * 1.01]))
    assert np.isnan(out[0]) and out[1] == 0.0 and np.isnan(out[3])
    assert out[2] == pytest.approx(m.y_max, rel=1e-14)
    assert m.y_of_p(np.zeros((2, 3))).shape == (2, 3)
    with pytest.raises(ValueError):
        m.x1(np.array([1.5]))
    for A, alpha in [(1.0, 0.0), (1.0, 1.0), (-1.0, 0.5), (math.nan, 0.5)]:
        with pytest.raises(ValueError):
            solve_grid_tariff(A=A, alpha=alpha)


def test_speed() -> None:
    solve_grid_tariff()  # warm-up (imports, node tables)
    t0 = time.perf_counter()
    m = solve_grid_tariff()
    elapsed = time.perf_counter() - t0
    assert m.result.success
    assert elapsed < 0.5, elapsed
