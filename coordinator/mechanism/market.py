"""The market spec: locations, agents, type priors, utilities, costs, payment regime.

A market has L locations; location l has n_l agents with i.i.d. types from F_l. Agent j
of location i gets θ_ij · Σ_l u_il(Q_l) with u_il(Q) = W[i, l] · u_l(Q) (paper eq. 1,
with the weight matrix W over locations), and location l costs c_l(n_l, Q_l)
(slides: c(n, Q) = B n^δ Q^β). Payments are in money (one pooled budget constraint,
eq. 3) or in kind (one constraint per location, eq. 24). This module only describes a
market and parses spec files; it solves nothing.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .distributions import TypeDistribution

FloatArray = npt.NDArray[np.float64]
Payment = Literal["money", "in_kind"]

MAX_LOCATIONS = 10_000
MAX_AGENTS_PER_LOCATION = 10_000_000


class UnsupportedMarketError(ValueError):
    """A well-formed market that a mechanism cannot solve; raised before solving.

    Every mechanism refuses this way (a ValueError with a sentence that names the
    location and the reason), so a front end or the coordinator reports it once, at
    start-up, instead of failing inside a root finder.
    """


@dataclass(frozen=True, slots=True)
class PowerUtility:
    """u(Q) = A Q^α with A > 0 and 0 < α ≤ 1 (slides, Assumption 1)."""

    A: float
    alpha: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.A) and self.A > 0 and 0 < self.alpha <= 1):
            raise ValueError(f"power utility needs A > 0 and 0 < alpha <= 1, got {self}")

    def __call__(self, Q: npt.ArrayLike) -> FloatArray:
        return np.asarray(self.A * np.power(np.asarray(Q, dtype=float), self.alpha),
                          dtype=np.float64)

    def describe(self) -> str:
        return f"{self.A:g} Q^{self.alpha:g}"


@dataclass(frozen=True, slots=True)
class PowerCost:
    """c(n, Q) = B n^δ Q^β with B > 0, δ ≥ 0, β ≥ 1 (slides, Assumption 1)."""

    B: float
    beta: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        if not (all(math.isfinite(x) for x in (self.B, self.beta, self.delta))
                and self.B > 0 and self.beta >= 1 and self.delta >= 0):
            raise ValueError(f"power cost needs B > 0, beta >= 1, delta >= 0, got {self}")

    def __call__(self, n: int, Q: npt.ArrayLike) -> FloatArray:
        return np.asarray(
            self.B * float(n) ** self.delta * np.power(np.asarray(Q, dtype=float), self.beta),
            dtype=np.float64)

    def describe(self) -> str:
        return f"{self.B:g} n^{self.delta:g} Q^{self.beta:g}"


@dataclass(frozen=True, slots=True)
class CallableUtility:
    """Any nondecreasing, concave, vectorised u(Q) ≥ 0 with u(0) = 0."""

    func: Callable[[FloatArray], FloatArray]
    name: str = "callable"

    def __call__(self, Q: npt.ArrayLike) -> FloatArray:
        return np.asarray(self.func(np.asarray(Q, dtype=float)), dtype=float)

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class CallableCost:
    """Any increasing, convex, vectorised c(n, Q) with c(n, 0) = 0."""

    func: Callable[[int, FloatArray], FloatArray]
    name: str = "callable"

    def __call__(self, n: int, Q: npt.ArrayLike) -> FloatArray:
        return np.asarray(self.func(n, np.asarray(Q, dtype=float)), dtype=float)

    def describe(self) -> str:
        return self.name


Utility = PowerUtility | CallableUtility
Cost = PowerCost | CallableCost


@dataclass(frozen=True, slots=True)
class Location:
    """One location: its name, number of agents, type prior, utility u_l and cost c_l."""

    name: str
    n: int
    dist: TypeDistribution
    utility: Utility
    cost: Cost

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool):
            raise ValueError(f"location {self.name!r}: n must be an integer")
        if not 1 <= self.n <= MAX_AGENTS_PER_LOCATION:
            raise ValueError(f"location {self.name!r}: n must be in [1, {MAX_AGENTS_PER_LOCATION}]")


@dataclass(frozen=True, slots=True)
class Market:
    """A market spec. ``weights[i, l]`` scales u_l for agents of location i.

    ``levels`` is None for continuous Q ≥ 0 up to ``q_max``, or the finite set of sizes
    that may be built (the bridge: (0, 1)). ``q_max`` bounds the search for Q when the
    utility or cost is a callable (power forms have closed-form maximisers).
    """

    locations: tuple[Location, ...]
    weights: FloatArray
    payment: Payment = "money"
    exclusion: bool = True
    levels: tuple[float, ...] | None = None
    q_max: float = 1e12
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        L = len(self.locations)
        if not 1 <= L <= MAX_LOCATIONS:
            raise ValueError(f"a market needs 1 to {MAX_LOCATIONS} locations, got {L}")
        W = np.asarray(self.weights, dtype=float)
        if W.shape != (L, L):
            raise ValueError(f"weights must be an {L}x{L} matrix, got shape {W.shape}")
        if not np.all(np.isfinite(W)) or np.any(W < 0):
            raise ValueError("weights must be finite and nonnegative")
        object.__setattr__(self, "weights", W)
        if self.payment not in ("money", "in_kind"):
            raise ValueError(f"payment must be 'money' or 'in_kind', got {self.payment!r}")
        if self.levels is not None:
            lv = tuple(sorted({float(x) for x in self.levels}))
            if not lv or lv[0] < 0 or not all(math.isfinite(x) for x in lv):
                raise ValueError("levels must be finite nonnegative sizes")
            object.__setattr__(self, "levels", lv if lv[0] == 0.0 else (0.0, *lv))
        if not (isinstance(self.q_max, (int, float)) and math.isfinite(self.q_max)
                and self.q_max > 0):
            raise ValueError(f"q_max must be a finite positive size, got {self.q_max!r}")
        names = [loc.name for loc in self.locations]
        if len(set(names)) != L:
            raise ValueError("location names must be unique")

    @property
    def L(self) -> int:
        return len(self.locations)

    @property
    def sizes(self) -> npt.NDArray[np.int64]:
        return np.array([loc.n for loc in self.locations], dtype=np.int64)

    @property
    def n_agents(self) -> int:
        return int(self.sizes.sum())

    def agent_locations(self) -> npt.NDArray[np.int64]:
        """Location index of every agent, in the order ``allocate`` expects types."""
        return np.repeat(np.arange(self.L), self.sizes)

    def with_sizes(self, sizes: Sequence[int]) -> Market:
        """The same market with other numbers of agents per location."""
        locs = tuple(
            Location(loc.name, int(k), loc.dist, loc.utility, loc.cost)
            for loc, k in zip(self.locations, sizes, strict=True)
        )
        return Market(locs, self.weights, self.payment, self.exclusion, self.levels,
                      self.q_max, self.spec)

    def replace(self, **changes: Any) -> Market:
        fields: dict[str, Any] = {
            "locations": self.locations, "weights": self.weights, "payment": self.payment,
            "exclusion": self.exclusion, "levels": self.levels, "q_max": self.q_max,
            "spec": self.spec}
        fields.update(changes)
        return Market(**fields)

    def split_types(self, types: npt.ArrayLike) -> FloatArray:
        """Validate a flat vector of declared types against the spec."""
        t = np.asarray(types, dtype=float)
        if t.ndim != 1 or t.shape[0] != self.n_agents:
            raise ValueError(f"expected {self.n_agents} declared types, got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError("declared types must be finite")
        loc = self.agent_locations()
        lows = np.array([x.dist.low for x in self.locations])[loc]
        highs = np.array([x.dist.high for x in self.locations])[loc]
        if np.any(t < lows) or np.any(t > highs):
            raise ValueError("a declared type lies outside its location's type support")
        return t

    def sample_types(self, rng: np.random.Generator, size: int | None = None) -> FloatArray:
        """Draw types for all agents (shape (N,) or (size, N)) from the priors."""
        shape_tail = () if size is None else (size,)
        cols = [loc.dist.rvs((*shape_tail, loc.n), rng) for loc in self.locations]
        return np.concatenate(cols, axis=-1)


# -- parsing spec files --------------------------------------------------------------

_TOP_KEYS = {"market", "locations", "weights"}
_MARKET_KEYS = {"payment", "exclusion", "levels", "q_max", "name", "description"}
_LOCATION_KEYS = {"name", "n", "type", "utility", "cost"}


def _table(x: object, where: str) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise ValueError(f"{where} must be a table, got {type(x).__name__}")
    return x


def _number(d: dict[str, Any], key: str, default: float, where: str) -> float:
    x = d.get(key, default)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{where}.{key} must be a number, got {x!r}")
    return float(x)


def _utility_from(d: dict[str, Any], where: str) -> Utility:
    d = _table(d, f"{where}.utility")
    kind = d.get("kind", "power")
    if kind != "power":
        raise ValueError(f"{where}.utility.kind must be 'power' in a spec file (callables are "
                         f"for the Python API), got {kind!r}")
    unknown = set(d) - {"kind", "A", "alpha"}
    if unknown:
        raise ValueError(f"unknown keys in {where}.utility: {sorted(unknown)}")
    w = f"{where}.utility"
    return PowerUtility(_number(d, "A", 1.0, w), _number(d, "alpha", 0.5, w))


def _cost_from(d: dict[str, Any], where: str) -> Cost:
    d = _table(d, f"{where}.cost")
    kind = d.get("kind", "power")
    if kind != "power":
        raise ValueError(f"{where}.cost.kind must be 'power' in a spec file, got {kind!r}")
    unknown = set(d) - {"kind", "B", "beta", "delta"}
    if unknown:
        raise ValueError(f"unknown keys in {where}.cost: {sorted(unknown)}")
    w = f"{where}.cost"
    return PowerCost(_number(d, "B", 1.0, w), _number(d, "beta", 1.0, w),
                     _number(d, "delta", 0.0, w))


def _refuse_non_finite(x: object, where: str) -> None:
    """Every number in a spec must be finite: TOML's inf/nan and JSON's Infinity/NaN
    would otherwise pass the type checks and fail later, deep inside a solver."""
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"{where} is {x!r}: spec numbers must be finite")
    if isinstance(x, dict):
        for k, v in x.items():
            _refuse_non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _refuse_non_finite(v, f"{where}[{i}]")


def market_from_dict(d: dict[str, Any]) -> Market:
    """Build a :class:`Market` from the parsed TOML/JSON spec (format in README).

    Raises ValueError naming the offending entry for anything malformed: unknown keys,
    wrong types, non-finite numbers, out-of-range parameters, a prior with no mass.
    """
    if not isinstance(d, dict):
        raise ValueError("a market spec is a table")
    _refuse_non_finite(d, "")
    unknown = set(d) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown top-level keys: {sorted(unknown)}")
    m = _table(d.get("market", {}), "[market]")
    unknown = set(m) - _MARKET_KEYS
    if unknown:
        raise ValueError(f"unknown keys in [market]: {sorted(unknown)}")
    raw_locs = d.get("locations")
    if not isinstance(raw_locs, list) or not raw_locs:
        raise ValueError("a spec needs at least one [[locations]] entry")
    locs = []
    for k, ld in enumerate(raw_locs):
        where = f"locations[{k}]"
        if not isinstance(ld, dict):
            raise ValueError(f"{where} must be a table")
        unknown = set(ld) - _LOCATION_KEYS
        if unknown:
            hint = (" (in TOML, top-level keys such as weights must come before the first "
                    "[table] header)") if "weights" in unknown else ""
            raise ValueError(f"unknown keys in {where}: {sorted(unknown)}{hint}")
        if "n" not in ld:
            raise ValueError(f"{where} needs n, the number of agents")
        n = ld["n"]
        if not isinstance(n, int) or isinstance(n, bool):
            raise ValueError(f"{where}.n must be an integer, got {n!r}")
        locs.append(Location(
            name=str(ld.get("name", f"location-{k}")),
            n=n,
            dist=TypeDistribution.from_dict(_table(ld.get("type", {"dist": "uniform"}),
                                                   f"{where}.type")),
            utility=_utility_from(ld.get("utility", {}), where),
            cost=_cost_from(ld.get("cost", {}), where),
        ))
    L = len(locs)
    W = d.get("weights")
    weights = np.eye(L) if W is None else np.asarray(W, dtype=float)
    if W is not None and weights.ndim == 1 and weights.size == 1 and L == 1:
        weights = weights.reshape(1, 1)
    levels = m.get("levels")
    exclusion = m.get("exclusion", True)
    if not isinstance(exclusion, bool):
        raise ValueError(f"[market].exclusion must be true or false, got {exclusion!r}")
    payment = m.get("payment", "money")
    if levels is not None and (not isinstance(levels, list)
                               or not all(isinstance(x, (int, float)) for x in levels)):
        raise ValueError("[market].levels must be a list of sizes")
    return Market(
        locations=tuple(locs),
        weights=weights,
        payment=payment,
        exclusion=exclusion,
        levels=None if levels is None else tuple(float(x) for x in levels),
        q_max=float(m.get("q_max", 1e12)),
        spec=d,
    )


MAX_SPEC_BYTES = 1 << 20


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key are refused (json keeps the last one silently;
    TOML refuses them already)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} in spec")
        out[k] = v
    return out


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} in spec: spec numbers must be finite")


def load_market(path: str | Path) -> Market:
    """Read a market spec from a ``.toml`` or ``.json`` file.

    Raises ValueError for anything but a well-formed spec: unreadable or oversized
    files, syntax errors, duplicate keys, non-finite numbers, bad values.
    """
    p = Path(path)
    raw = p.read_bytes()
    if len(raw) > MAX_SPEC_BYTES:
        raise ValueError(f"{p}: spec larger than {MAX_SPEC_BYTES} bytes")
    if p.suffix == ".json":
        data = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    elif p.suffix == ".toml":
        data = tomllib.loads(raw.decode("utf-8"))
    else:
        raise ValueError(f"{p}: a spec file ends in .toml or .json")
    return market_from_dict(data)


def check_solvable(market: Market, mechanism: str, *, exclusion: bool | None = None) -> None:
    """Refuse, before any solving, a market that ``mechanism`` cannot handle.

    Raises :class:`UnsupportedMarketError`. The rules: the slides' equal-contribution
    schemes are defined for one location; the optimal mechanism without exclusion needs
    a prior whose density does not vanish at the bottom of its support (otherwise
    virtual values are unbounded below and the weighted sum has an unbounded lower tail
    that no quadrature resolves to the promised accuracy). Irregular priors are not
    refused: the optimal mechanism and the posted fee iron them. ``exclusion``
    overrides the market's own setting (the optimal mechanism can be asked for either).
    """
    excl = market.exclusion if exclusion is None else exclusion
    if mechanism.startswith("equal_share") and market.L != 1:
        raise UnsupportedMarketError(
            f"{mechanism} is defined for one location (slides); this market has {market.L}")
    # The optimal mechanism's registry names, and their former second_best* aliases.
    name = mechanism.replace("second_best", "optimal")
    no_exclusion = name == "optimal_no_exclusion" or (
        name in ("optimal", "optimal_balanced") and not excl)
    if no_exclusion:
        for loc in market.locations:
            d = loc.dist
            width = d.high - d.low
            # Judge the density just inside the support: scipy may place the support's
            # end a rounding error inside `low` (truncnorm), where pdf(low) reads 0.
            if float(d.pdf(d.low + 1e-9 * width)) * width < 1e-6:
                raise UnsupportedMarketError(
                    f"no exclusion with {d.label} at {loc.name!r}: its density vanishes at "
                    "the bottom of the support, so virtual values are unbounded below; "
                    "not supported")


def slides_market(n: int, *, exclusion: bool = True) -> Market:
    """The slides' numerical example: u(Q) = (2/3) Q^(1/2), c(Q) = Q, θ ~ U[0, 1]."""
    loc = Location("slides", n, TypeDistribution.uniform(), PowerUtility(2.0 / 3.0, 0.5),
                   PowerCost(1.0, 1.0))
    return Market((loc,), np.eye(1), "money", exclusion)
