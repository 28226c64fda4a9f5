"""Lagrange multipliers for several budget constraints (payments in kind, eq. 24).

For multipliers λ ≥ 0 the pointwise maximiser of the Lagrangian (25) gives the dual
function D(λ) = W(λ) + Σ_i λ_i C_i(λ), where W is expected welfare and C_i the
constraints' values at that maximiser. D is convex, and by the envelope theorem its
gradient is C(λ). Minimising D over λ ≥ 0 (L-BFGS-B) therefore lands on the KKT point:
λ_i > 0 where location i's constraint binds and λ_i = 0 where it is slack. This holds
whether or not every constraint binds. A Newton polish on the binding set then makes
the binding constraints exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import optimize

FloatArray = npt.NDArray[np.float64]

# A constraint counts as binding (and its multiplier as positive) above this λ.
ACTIVE = 1e-9
# KKT tolerances, relative to the welfare scale.
FEASIBILITY = 1e-8
COMPLEMENTARITY = 1e-7


def kkt_multipliers(values: Callable[[FloatArray], tuple[float, FloatArray]],
                    start: FloatArray, scale: float) -> tuple[FloatArray, bool, str]:
    """Minimise the dual over λ ≥ 0. ``values(λ)`` returns (W(λ), C(λ))."""
    L = start.shape[0]

    def dual(lam: FloatArray) -> tuple[float, FloatArray]:
        w, c = values(lam)
        return float(w + lam @ c) / scale, np.asarray(c, dtype=float) / scale

    res = optimize.minimize(dual, np.maximum(start, 0.0), jac=True, method="L-BFGS-B",
                            bounds=[(0.0, None)] * L,
                            options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 1000})
    lam = np.maximum(np.asarray(res.x, dtype=float), 0.0)
    active = lam > ACTIVE
    if active.any():
        def binding(x: FloatArray) -> FloatArray:
            full = lam.copy()
            full[active] = x
            return np.asarray(values(full)[1][active] / scale, dtype=np.float64)

        sol = optimize.root(binding, lam[active], method="hybr", options={"xtol": 1e-14})
        # Judged by its residual, not its status: hybr reports failure ("xtol is too small")
        # when it has already converged past what xtol can resolve, and discarding that
        # root left a small location's budget met only to the welfare scale's tolerance.
        start_residual = float(np.max(np.abs(np.asarray(res.jac, dtype=float)[active])))
        if np.all(sol.x >= 0.0) and float(np.max(np.abs(sol.fun))) <= start_residual:
            lam[active] = sol.x
    c = values(lam)[1] / scale
    feasible = bool(np.all(c >= -FEASIBILITY))
    slack_ok = bool(np.all(np.abs(lam * c) <= COMPLEMENTARITY * np.maximum(1.0, lam)))
    if feasible and slack_ok:
        n_bind = int(np.sum(lam > ACTIVE))
        return lam, True, (f"KKT point: {n_bind} of {L} budget constraints bind, the others "
                           "are slack with λ = 0")
    return lam, False, (f"multiplier search did not reach a KKT point ({res.message}); "
                        f"worst constraint {c.min():.3g}, worst λ·C {np.max(np.abs(lam * c)):.3g}")
