"""inkind's mechanism library: pure numpy/scipy, no I/O, no global state.

A :class:`~coordinator.mechanism.market.Market` goes in; :func:`solve` gives a solved
:class:`~coordinator.mechanism.result.Mechanism`: ``.result`` (a
:class:`~coordinator.mechanism.result.MechanismResult`) and
``.allocate(types, locations)`` for the declarants that came (an
:class:`~coordinator.mechanism.result.Outcome`). :func:`solve` is the one entry point
by name; :data:`SOLVERS` lists the names.

Names: the optimal mechanism of the paper (its second-best, the welfare maximum under the
incentive and budget constraints) is ``optimal``, as on the wire and in scenarios; the
engine's constructor for it is :func:`~coordinator.mechanism.optimal.second_best`, named
for the solution concept beside :func:`~coordinator.mechanism.optimal.first_best`. The
old registry names ``second_best*`` are accepted by :func:`solve` as aliases
(:data:`ALIASES`) so existing command lines and scripts keep working.
"""

from __future__ import annotations

from collections.abc import Callable

from .market import (
    Market,
    UnsupportedMarketError,
    check_solvable,
    load_market,
    market_from_dict,
    slides_market,
)
from .result import Mechanism, MechanismResult, Outcome
from .sums import DEFAULT_TOL

#: A solver: the market and the relative tolerance on its quadrature's error estimate
#: (used by the mechanisms that integrate on a lattice; the others are exact or carry
#: their own named tolerances).
Solver = Callable[[Market, float], Mechanism]


def _equal(name: str) -> Solver:
    def build(market: Market, tol: float) -> Mechanism:
        from . import equal_contribution as ec

        if market.L != 1:
            raise ValueError(f"{name} is defined for one location (slides); this market has "
                             f"{market.L}")
        loc = market.locations[0]
        func: Callable[[ec.Economy], Mechanism] = getattr(ec, name)
        return func(ec.Economy(loc.dist, loc.n, loc.utility, loc.cost))

    return build


def _first_best(market: Market, tol: float) -> Mechanism:
    from .optimal import first_best

    return first_best(market, tol=tol)


def _optimal(market: Market, tol: float) -> Mechanism:
    from .optimal import second_best

    return second_best(market, tol=tol)


def _optimal_no_exclusion(market: Market, tol: float) -> Mechanism:
    from .optimal import second_best

    return second_best(market, exclusion=False, tol=tol)


def _balanced(market: Market, tol: float) -> Mechanism:
    from .balance import balance_ex_post
    from .optimal import second_best

    return balance_ex_post(second_best(market, tol=tol))


def _posted_fee(market: Market, tol: float) -> Mechanism:
    from .posted_fee import posted_fee

    return posted_fee(market)


#: Mechanism name -> (solver, one-line description).
SOLVERS: dict[str, tuple[Solver, str]] = {
    "first_best": (_first_best, "complete-information benchmark (λ = 0)"),
    "optimal": (_optimal, "optimal (second-best) mechanism (17)/(25); exclusion as the "
                          "spec says"),
    "optimal_no_exclusion": (_optimal_no_exclusion, "optimal mechanism with π = 1"),
    "optimal_balanced": (_balanced, "optimal mechanism, payments balanced ex post (33)"),
    "posted_fee": (_posted_fee, "asymptotically optimal fixed fee P̂(n), (18)-(23)"),
    "equal_share_post_size": (_equal("post_size_share_cost"),
                              "slides: post Q, share the cost equally"),
    "equal_share_post_fee": (_equal("post_fee_build_largest"),
                             "slides: post a fee, build the largest Q the fees cover"),
    "equal_share_post_fee_and_size": (_equal("post_fee_and_size"),
                                      "slides: post both fee and Q"),
}


#: Former names, accepted for compatibility (command lines, scripts, stored databases).
ALIASES: dict[str, str] = {
    "second_best": "optimal",
    "second_best_no_exclusion": "optimal_no_exclusion",
    "second_best_balanced": "optimal_balanced",
}


def canonical(mechanism: str) -> str:
    """The registry name of ``mechanism`` (an alias resolved); ValueError if unknown."""
    name = ALIASES.get(mechanism, mechanism)
    if name not in SOLVERS:
        raise ValueError(f"unknown mechanism {mechanism!r}; choose from {sorted(SOLVERS)}")
    return name


def solve(market: Market, mechanism: str, *, tol: float = DEFAULT_TOL) -> Mechanism:
    """Solve ``mechanism`` (a key of :data:`SOLVERS` or :data:`ALIASES`) for ``market``.

    ``tol``: relative tolerance on the error estimate of the mechanisms computed on a
    lattice (first best, optimal and its variants; see ``optimal.evaluate``): a result
    whose estimate exceeds it has ``success=False``. The posted fee and the slides'
    schemes are exact or carry their own named tolerances and ignore it.

    Raises :class:`UnsupportedMarketError` (a ValueError) before solving when the
    mechanism cannot handle the market (:func:`check_solvable`), and ValueError for a
    ``tol`` outside (0, 1).
    """
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    name = canonical(mechanism)
    check_solvable(market, name)
    return SOLVERS[name][0](market, tol)


__all__ = [
    "ALIASES",
    "SOLVERS",
    "Market",
    "Mechanism",
    "MechanismResult",
    "Outcome",
    "UnsupportedMarketError",
    "canonical",
    "check_solvable",
    "load_market",
    "market_from_dict",
    "slides_market",
    "solve",
]
