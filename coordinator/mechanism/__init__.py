"""inkind's mechanism library: pure numpy/scipy, no I/O, no global state.

A :class:`~coordinator.mechanism.market.Market` goes in; a solved mechanism comes out
with ``.result`` (a :class:`~coordinator.mechanism.result.MechanismResult`) and
``.allocate(declared_types)``. :func:`solve` is the one entry point by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .market import Market, load_market, market_from_dict, slides_market
from .result import Allocation, Mechanism, MechanismResult


def _equal(name: str) -> Callable[[Market], Any]:
    def build(market: Market) -> Any:
        from . import equal_contribution as ec

        if market.L != 1:
            raise ValueError(f"{name} is defined for one location (slides); this market has "
                             f"{market.L}")
        loc = market.locations[0]
        func = getattr(ec, name)
        return func(ec.Economy(loc.dist, loc.n, loc.utility, loc.cost))

    return build


def _first_best(market: Market) -> Any:
    from .optimal import first_best

    return first_best(market)


def _second_best(market: Market) -> Any:
    from .optimal import second_best

    return second_best(market)


def _second_best_no_exclusion(market: Market) -> Any:
    from .optimal import second_best

    return second_best(market, exclusion=False)


def _balanced(market: Market) -> Any:
    from .balance import balance_ex_post
    from .optimal import second_best

    return balance_ex_post(second_best(market))


def _posted_fee(market: Market) -> Any:
    from .posted_fee import posted_fee

    return posted_fee(market)


MECHANISMS: dict[str, tuple[Callable[[Market], Any], str]] = {
    "first_best": (_first_best, "complete-information benchmark (λ = 0)"),
    "second_best": (_second_best, "optimal mechanism (17)/(25); exclusion as the spec says"),
    "second_best_no_exclusion": (_second_best_no_exclusion, "optimal mechanism with π = 1"),
    "second_best_balanced": (_balanced, "optimal mechanism, payments balanced ex post (33)"),
    "posted_fee": (_posted_fee, "asymptotically optimal fixed fee P̂(n), (18)-(23)"),
    "equal_share_post_size": (_equal("post_size_share_cost"),
                              "slides: post Q, share the cost equally"),
    "equal_share_post_fee": (_equal("post_fee_build_largest"),
                             "slides: post a fee, build the largest Q the fees cover"),
    "equal_share_post_fee_and_size": (_equal("post_fee_and_size"),
                                      "slides: post both fee and Q"),
}


def solve(market: Market, mechanism: str) -> Any:
    """Solve ``mechanism`` (a key of :data:`MECHANISMS`) for ``market``."""
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r}; choose from {sorted(MECHANISMS)}")
    return MECHANISMS[mechanism][0](market)


__all__ = [
    "MECHANISMS",
    "Allocation",
    "Market",
    "Mechanism",
    "MechanismResult",
    "load_market",
    "market_from_dict",
    "slides_market",
    "solve",
]
