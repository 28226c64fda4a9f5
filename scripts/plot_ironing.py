"""Plot the virtual value g and its ironed version for Beta(0.5, 0.5) (README, "Irregular
priors: ironing").

    python scripts/plot_ironing.py [--out scripts/figures/ironing.png]

Left: g(θ) = θ − (1 − F)/f and Myerson's ironed ḡ (the limit λ → ∞ of the engine's
ironed weight, (w̄_λ − θ)/λ, i.e. the derivative of the convex hull of ∫₀ᵘ g(F⁻¹)).
Right: the weight the optimal mechanism actually uses, θ + λ g and its ironing w̄_λ,
at the λ the engine solves for the README's example market, with the exclusion
threshold θ₀ where w̄ crosses zero. Prints the ironed intervals it drew.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.market import Location, Market, PowerCost, PowerUtility
from coordinator.mechanism.optimal import second_best

# λ large enough that (w̄_λ − θ)/λ is Myerson's ironed g to plotting accuracy (θ/λ < 1e-6).
LIMIT_LAMBDA = 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("scripts/figures/ironing.png"))
    p.add_argument("--n", type=int, default=5, help="agents in the example market")
    args = p.parse_args(argv)

    dist = TypeDistribution.beta(0.5, 0.5)
    theta = np.linspace(1e-4, 1.0 - 1e-4, 2001)
    g = dist.g(theta)
    limit = dist.weight(LIMIT_LAMBDA)
    g_ironed = (limit.w(theta) - theta) / LIMIT_LAMBDA

    market = Market((Location("example", args.n, dist, PowerUtility(2 / 3, 0.5),
                              PowerCost(1.0, 1.0)),), np.eye(1))
    mech = second_best(market)
    lam = float(mech.lambdas[0])
    vw = dist.weight(lam)
    theta0 = float(mech.result.thresholds[0]) if mech.result.thresholds is not None else 0.0

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    a.plot(theta, g, label="g(θ)")
    a.plot(theta, g_ironed, "--", label="ironed ḡ(θ) (λ → ∞)")
    a.set(title="Beta(0.5, 0.5): virtual value", xlabel="type θ", ylabel="value (money units)")
    a.axhline(0.0, color="0.8", lw=0.8)
    a.legend()
    b.plot(theta, theta + lam * g, label="θ + λ g(θ)")
    b.plot(theta, vw.w(theta), "--", label="ironed w̄(θ)")
    b.axvline(theta0, color="0.5", lw=0.8, ls=":", label=f"threshold θ₀ = {theta0:.4f}")
    b.axhline(0.0, color="0.8", lw=0.8)
    b.set(title=f"weight in the Lagrangian, λ = {lam:.4f} (n = {args.n})", xlabel="type θ",
          ylabel="weight (money units)")
    b.legend()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"ironed interval of g (λ → ∞): {limit.intervals.tolist()}, level "
          f"{(limit.levels / LIMIT_LAMBDA).tolist()}")
    print(f"ironed interval of θ + λg at λ = {lam:.6f}: {vw.intervals.tolist()}, level "
          f"{vw.levels.tolist()}; threshold {theta0:.6f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
