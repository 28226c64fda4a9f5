"""Scenario files: parsing, validation, and everything derived from (scenario, seed).

A scenario (TOML, format in README "Testbed scenarios") says which market the
coordinator runs, how many nodes live where, what they share, how they move, which of
them cheat and which faults strike. Everything random -- the nodes' keys (hence their
ids), their true types θ, who plays which strategy when a rule picks ``count`` nodes,
the shared files' bytes and the whole roaming script -- is drawn here from the seed, and
only here, before anything runs; so one (scenario, seed) gives the same declarations,
allocations and roaming script on every run (timings aside).

Units: quantities in the file are in units of the resource kind (as for
``inkind-node``); the returned records carry micro-units where they go on the wire.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from coordinator.mechanism import Market, market_from_dict
from coordinator.mechanism.distributions import TypeDistribution
from protocol import MICRO
from protocol.kinds import KINDS
from protocol.messages import MECHANISMS

from .checks import CHECK_NAMES

FAULT_KINDS = ("node_crash", "coordinator_restart", "host_silent")
#: The checks a scenario is about unless it says otherwise ([scenario] checks): none in
#: particular, but a run that checked nothing at all still fails.
DEFAULT_ABOUT: tuple[str, ...] = ()
MAX_EPOCHS = 1000
MAX_NODES = 20_000
MAX_SCENARIO_BYTES = 1 << 20


class ScenarioError(ValueError):
    """A scenario file that cannot be played (the message says where and why)."""


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LocationSpec:
    name: str
    nodes: int
    area: float  # Q (engine units) at which the whole location is served
    capacity: float  # units each node of the location can offer
    type: Mapping[str, Any]
    utility: Mapping[str, Any]
    cost: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessSpec:
    amount: int  # micro-units asked per access (coverage, compute)
    session_seconds: int  # wlan_channels: how long a granted channel is held
    files_per_node: int
    file_bytes: tuple[int, int]
    timeout: float  # seconds a roamer waits for a host


@dataclass(frozen=True, slots=True, kw_only=True)
class Move:
    """A scripted trip: ``nodes`` go to location ``to`` in ``epochs`` (None: all)."""

    nodes: tuple[str, ...]
    to: int
    epochs: tuple[int, ...] | None
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MobilitySpec:
    model: str  # "random" | "scripted"
    trips: float  # random: mean trips per node and epoch (Poisson)
    attempts: int  # access attempts per trip
    destinations: tuple[float, ...]  # weight of each location as a destination
    moves: tuple[Move, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    kind: str
    epoch: int
    nodes: tuple[str, ...] = ()
    when: str = "before_open"  # node_crash: before_open | after_commit; coordinator:
    # before_open | before_close; host_silent: always after_commit
    until: int | None = None  # node_crash: restart before this epoch opens; host_silent:
    # answers again from this epoch on (None: never)
    count: int | None = None  # of ``nodes``, this many drawn by the seed (None: all)
    min_theta: float | None = None  # ... among those whose true θ is at least this


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A strategy rule: ``strategy`` for ``count`` of ``nodes`` (with θ >= min_theta)."""

    strategy: str
    nodes: tuple[str, ...]
    count: int | None = None
    min_theta: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Strategy:
    """What a node is told to play (its ``inkind-node --strategy`` spelling), read for
    what the launcher expects of it: the θ it declares and whether it commits and opens
    its contribution. ``truthful`` | ``misreport:F`` (declares floor(F θ)) |
    ``misreport:=V`` (declares V) | ``free-ride`` (opens nothing, commits nothing) |
    ``free-ride:commit`` (opens nothing, sends a false commitment); θ clamped to [0, 1]."""

    spelling: str
    factor: Fraction = Fraction(1)
    fixed: int | None = None  # micro-units
    opens: bool = True
    commits: bool = True

    def declare(self, theta: int) -> int:
        if self.fixed is not None:
            return self.fixed
        return max(0, min(MICRO, int(self.factor * theta)))


def parse_strategy(text: str) -> Strategy:
    """Read a strategy spelling; ValueError names the accepted ones."""
    head, _, arg = text.partition(":")
    if head == "truthful" and not arg:
        return Strategy(spelling=text)
    if head == "free-ride" and arg in ("", "commit"):
        return Strategy(spelling=text, opens=False, commits=arg == "commit")
    if head == "misreport" and arg:
        try:
            if arg.startswith("="):
                v = Fraction(arg[1:])
                if 0 <= v <= 1:
                    return Strategy(spelling=text, fixed=int(v * MICRO))
            elif Fraction(arg) >= 0:
                return Strategy(spelling=text, factor=Fraction(arg))
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"strategy {text!r:.40} is not truthful, misreport:F (F >= 0), "
                     "misreport:=V (V in [0, 1]), free-ride or free-ride:commit")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePlan:
    """One node as the scenario and the seed make it."""

    name: str
    index: int  # position in the population (location-major)
    location: int
    theta: int  # true type, micro-units
    strategy: str  # the inkind-node spelling
    capacity: int  # micro-units
    seed: bytes  # its Ed25519 key seed (so its id is reproducible)
    #: types redrawn every epoch: the true θ of epoch 0, 1, ... (the coordinator's
    #: numbering); empty when types are drawn once (``theta`` in every epoch)
    thetas: tuple[int, ...] = ()

    def theta_at(self, epoch: int) -> int:
        """The node's true θ (micro-units) in ``epoch``."""
        return self.thetas[epoch] if 0 <= epoch < len(self.thetas) else self.theta


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One roaming attempt: ``roamer`` stands at point ``u`` of ``location``."""

    epoch: int  # index of the epoch in the run (0-based)
    roamer: str
    location: int
    trip: int
    u: float  # the point: covered iff u < coverage of the location
    v: float  # a second draw (which file to fetch)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    description: str
    path: str
    epochs: int
    seed: int
    mechanisms: tuple[str, ...]  # scenario names: posted_fee, optimal
    payment: str
    exclusion: bool
    kind: str
    weights: tuple[tuple[float, ...], ...] | None
    locations: tuple[LocationSpec, ...]
    access: AccessSpec
    mobility: MobilitySpec
    strategy_rules: tuple[Rule, ...]
    faults: tuple[Fault, ...]
    about: tuple[str, ...] = DEFAULT_ABOUT  # the checks this scenario is about
    #: "fixed": each node's θ is drawn once and holds in every epoch (the epochs replay
    #: one type profile); "redraw": drawn afresh for every epoch (each epoch is an
    #: independent type profile, so a mean over epochs is a mean over profiles)
    types: str = "fixed"

    @property
    def n_nodes(self) -> int:
        return sum(loc.nodes for loc in self.locations)

    @property
    def location_names(self) -> tuple[str, ...]:
        return tuple(loc.name for loc in self.locations)

    def node_names(self) -> list[str]:
        return [f"{loc.name}-{i}" for loc in self.locations for i in range(loc.nodes)]

    def market_spec(self) -> dict[str, Any]:
        """The market spec (README "Market spec format") the coordinator is run with."""
        spec: dict[str, Any] = {
            "market": {"payment": self.payment, "exclusion": self.exclusion},
            "locations": [
                {"name": loc.name, "n": loc.nodes, "type": dict(loc.type),
                 "utility": dict(loc.utility), "cost": dict(loc.cost)}
                for loc in self.locations
            ],
        }
        if self.weights is not None:
            spec["weights"] = [list(row) for row in self.weights]
        return spec

    def market(self) -> Market:
        return market_from_dict(self.market_spec())


# --- parsing: the file's shape (pydantic), then what the parts mean together ----------

_Strict = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
Names = str | list[str]


class _ScenarioTable(BaseModel):
    model_config = _Strict
    name: str | None = Field(None, min_length=1, max_length=80)
    description: str = ""
    epochs: int = Field(3, ge=1, le=MAX_EPOCHS)
    seed: int = Field(1, ge=0, le=2**63 - 1)
    mechanism: Names = "posted_fee"
    kind: str = "wlan_coverage"
    checks: list[str] = Field(default_factory=lambda: list(DEFAULT_ABOUT))
    types: Literal["fixed", "redraw"] = "fixed"


class _MarketTable(BaseModel):
    model_config = _Strict
    payment: Literal["money", "in_kind"] = "in_kind"
    exclusion: bool = True
    weights: list[list[float]] | None = None


class _LocationTable(BaseModel):
    model_config = _Strict
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")
    nodes: int = Field(10, ge=1, le=MAX_NODES)
    area: float = Field(1.0, ge=1e-9, le=1e12)
    capacity: float = Field(10.0, ge=1e-6, le=1e9)
    type: dict[str, Any] = Field(default_factory=lambda: {"dist": "uniform", "low": 0.0,
                                                           "high": 1.0})
    utility: dict[str, Any] = Field(default_factory=lambda: {"kind": "power", "A": 1.0,
                                                              "alpha": 0.5})
    cost: dict[str, Any] = Field(default_factory=lambda: {"kind": "power", "B": 1.0,
                                                           "beta": 1.0})


class _AccessTable(BaseModel):
    model_config = _Strict
    amount: float = Field(0.01, ge=1e-6, le=1e6)
    session_seconds: int = Field(1, ge=1, le=3600)
    files_per_node: int = Field(3, ge=1, le=100)
    file_bytes: tuple[int, int] = (1000, 20000)
    timeout: float = Field(1.5, ge=0.1, le=60)

    @field_validator("file_bytes", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        # TOML has arrays, not tuples; strict mode would refuse the list itself.
        if isinstance(v, list) and len(v) == 2:
            return tuple(v)
        return v

    @model_validator(mode="after")
    def _bytes_ordered(self) -> _AccessTable:
        lo, hi = self.file_bytes
        if not 1 <= lo <= hi <= 10_000_000:
            raise ValueError("file_bytes must be [low, high] with 1 <= low <= high <= 10000000")
        return self


class _MoveTable(BaseModel):
    model_config = _Strict
    nodes: Names
    to: str
    epochs: list[Annotated[int, Field(ge=0)]] | None = None
    attempts: int | None = Field(None, ge=1, le=1000)


class _MobilityTable(BaseModel):
    model_config = _Strict
    model: Literal["random", "scripted"] = "random"
    trips: float = Field(1.0, ge=0, le=100)
    attempts: int = Field(3, ge=1, le=1000)
    destinations: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(default_factory=dict)
    moves: list[_MoveTable] = Field(default_factory=list)


class _Selection(BaseModel):
    """Which nodes a rule or a fault applies to: ``nodes`` (locations, node names or
    ``*``), of them the ones whose true θ is at least ``min_theta``, of those ``count``
    drawn by the seed (all if absent)."""

    model_config = _Strict
    nodes: Names = "*"
    count: int | None = Field(None, ge=0, le=MAX_NODES)
    min_theta: float | None = Field(None, ge=0, le=1)


class _StrategyRule(_Selection):
    strategy: str

    @field_validator("strategy")
    @classmethod
    def _grammar(cls, v: str) -> str:
        parse_strategy(v)  # raises ValueError with the accepted spellings
        return v


class _FaultTable(_Selection):
    nodes: Names | None = None  # type: ignore[assignment]  # required for node faults
    kind: Literal["node_crash", "coordinator_restart", "host_silent"]
    epoch: int = Field(0, ge=0, le=MAX_EPOCHS)
    when: str | None = None
    until: int | None = Field(None, ge=1, le=MAX_EPOCHS)


class _ScenarioFile(BaseModel):
    model_config = _Strict
    scenario: _ScenarioTable = Field(default_factory=lambda: _ScenarioTable.model_validate({}))
    market: _MarketTable = Field(default_factory=_MarketTable)
    locations: list[_LocationTable] = Field(min_length=1)
    access: _AccessTable = Field(default_factory=lambda: _AccessTable.model_validate({}))
    mobility: _MobilityTable = Field(default_factory=lambda: _MobilityTable.model_validate({}))
    strategies: list[_StrategyRule] = Field(default_factory=list)
    faults: list[_FaultTable] = Field(default_factory=list)


_SECTION = {"scenario": "[scenario]", "market": "[market]", "locations": "[[locations]]",
            "access": "[access]", "mobility": "[mobility]", "moves": "[[mobility.moves]]",
            "strategies": "[[strategies]]", "faults": "[[faults]]"}


def _micro(units: float) -> int:
    return math.floor(units * MICRO)


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the TOML reader sees it: ``[[locations]] #0.area``."""
    # Union members and validators add their own names to the location; drop them.
    parts = [x for x in loc if isinstance(x, int)
             or (not any(c in x for c in "[(") and x not in ("str", "list"))]
    if parts[:2] == ["mobility", "moves"] and len(parts) > 2:
        out, rest = f"[[mobility.moves]] #{parts[2]}", parts[3:]
    elif parts and parts[0] in _SECTION:
        out, rest = _SECTION[str(parts[0])], parts[1:]
        if rest and isinstance(rest[0], int):
            out, rest = f"{out} #{rest[0]}", rest[1:]
    else:
        out, rest = "the file", parts
    for x in rest:
        out += f"[{x}]" if isinstance(x, int) else f".{x}"
    return out


def _explain(exc: ValidationError) -> str:
    msgs = []
    for err in exc.errors():
        where = _where(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown key {where.rpartition('.')[2]!r} in "
                        f"{where.rpartition('.')[0] or 'the file'}")
        elif err["type"] == "missing":
            msgs.append(f"{where} is required")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            msgs.append(f"{where}: {msg}")
    return "; ".join(dict.fromkeys(msgs))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (TOML)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{p}: larger than {MAX_SCENARIO_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    try:
        return scenario_from_dict(data, path=str(p))
    except ScenarioError as exc:
        raise ScenarioError(f"{p}: {exc}") from None


def scenario_from_dict(data: dict[str, Any], *, path: str = "<dict>") -> Scenario:
    """Validate ``data`` (a parsed scenario file) into a :class:`Scenario`.

    Raises ScenarioError naming the table and key at fault: unknown keys, values out of
    range, names that refer to nothing, and rules that overlap (two strategy rules that
    could pick the same node; a silent last-rule-wins would change what the scenario
    promises).
    """
    try:
        f = _ScenarioFile.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_explain(exc)) from None
    sc = f.scenario
    name = sc.name if sc.name is not None else Path(path).stem
    mechanisms = (sc.mechanism,) if isinstance(sc.mechanism, str) else tuple(sc.mechanism)
    if not mechanisms:
        raise ScenarioError("[scenario].mechanism names no mechanism")
    for m in mechanisms:
        if m not in MECHANISMS:
            raise ScenarioError(f"[scenario].mechanism: {m!r} is not one of {sorted(MECHANISMS)}")
    if len(set(mechanisms)) != len(mechanisms):
        raise ScenarioError("[scenario].mechanism lists a mechanism twice")
    if sc.kind not in KINDS:
        raise ScenarioError(f"[scenario].kind must be one of {list(KINDS)}")
    for c in sc.checks:
        if c not in CHECK_NAMES:
            raise ScenarioError(f"[scenario].checks: {c!r} is not one of {list(CHECK_NAMES)}")

    locations = tuple(
        LocationSpec(name=ld.name if ld.name is not None else f"loc{k}", nodes=ld.nodes,
                     area=ld.area, capacity=ld.capacity, type=dict(ld.type),
                     utility=dict(ld.utility), cost=dict(ld.cost))
        for k, ld in enumerate(f.locations))
    names = [loc.name for loc in locations]
    if len(set(names)) != len(names):
        raise ScenarioError("location names must be unique")
    if sum(loc.nodes for loc in locations) > MAX_NODES:
        raise ScenarioError(f"at most {MAX_NODES} nodes in all")
    L = len(locations)
    weights = f.market.weights
    wtuple = None if weights is None else tuple(tuple(row) for row in weights)
    if wtuple is not None and (len(wtuple) != L or any(len(r) != L for r in wtuple)):
        raise ScenarioError(f"[market].weights must be a {L} x {L} matrix")

    ac = f.access
    access = AccessSpec(amount=_micro(ac.amount), session_seconds=ac.session_seconds,
                        files_per_node=ac.files_per_node, file_bytes=ac.file_bytes,
                        timeout=ac.timeout)
    all_nodes = [f"{loc.name}-{i}" for loc in locations for i in range(loc.nodes)]
    node_names = set(all_nodes)

    def select(value: Names, where: str) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ScenarioError(f"{where} must be a name or a list of names")
        out: list[str] = []
        for item in items:
            if item == "*":
                out.extend(all_nodes)
            elif item in names:
                loc = locations[names.index(item)]
                out.extend(f"{loc.name}-{i}" for i in range(loc.nodes))
            elif item in node_names:
                out.append(item)
            else:
                raise ScenarioError(f"{where}: {item!r} is neither a location, a node "
                                    "(location-index) nor '*'")
        return tuple(dict.fromkeys(out))

    def location_index(value: str, where: str) -> int:
        if value not in names:
            raise ScenarioError(f"{where} must be one of the locations {names}")
        return names.index(value)

    mo = f.mobility
    for dest in mo.destinations:
        if dest not in names:
            raise ScenarioError(f"[mobility].destinations: {dest!r} is not a location")
    destinations = tuple(float(mo.destinations.get(n, 1.0)) for n in names)
    moves = []
    for k, mv in enumerate(mo.moves):
        where = f"[[mobility.moves]] #{k}"
        if mv.epochs is not None and any(e >= sc.epochs for e in mv.epochs):
            raise ScenarioError(f"{where}.epochs must list epoch indices in [0, {sc.epochs})")
        moves.append(Move(nodes=select(mv.nodes, f"{where}.nodes"),
                          to=location_index(mv.to, f"{where}.to"),
                          epochs=None if mv.epochs is None else tuple(mv.epochs),
                          attempts=mv.attempts if mv.attempts is not None else mo.attempts))
    mobility = MobilitySpec(model=mo.model, trips=mo.trips, attempts=mo.attempts,
                            destinations=destinations, moves=tuple(moves))

    rules: list[Rule] = []
    for k, st in enumerate(f.strategies):
        where = f"[[strategies]] #{k}"
        rule = Rule(strategy=st.strategy, nodes=select(st.nodes, f"{where}.nodes"),
                    count=st.count, min_theta=st.min_theta)
        if st.count is not None and st.count > len(rule.nodes):
            raise ScenarioError(f"{where}.count = {st.count} but it selects only "
                                f"{len(rule.nodes)} nodes")
        for j, other in enumerate(rules):
            both = sorted(set(rule.nodes) & set(other.nodes), key=all_nodes.index)
            if both:
                raise ScenarioError(f"{where} overlaps [[strategies]] #{j} on "
                                    f"{', '.join(both[:5])}{' ...' if len(both) > 5 else ''} "
                                    "(each node may follow one rule: split the node lists)")
        rules.append(rule)

    faults = []
    for k, fd in enumerate(f.faults):
        where = f"[[faults]] #{k}"
        if fd.epoch >= sc.epochs:
            raise ScenarioError(f"{where}.epoch = {fd.epoch} is outside [0, {sc.epochs - 1}]")
        if fd.until is not None and fd.until <= fd.epoch:
            raise ScenarioError(f"{where}.until must come after its epoch")
        allowed_when = {"node_crash": ("before_open", "after_commit"),
                        "coordinator_restart": ("before_open", "before_close"),
                        "host_silent": ("after_commit",)}[fd.kind]
        when = fd.when if fd.when is not None else allowed_when[0]
        if when not in allowed_when:
            raise ScenarioError(f"{where}.when must be one of {allowed_when} for {fd.kind}")
        nodes: tuple[str, ...] = ()
        if fd.kind == "coordinator_restart":
            if fd.nodes is not None or fd.until is not None or fd.count is not None:
                raise ScenarioError(f"{where}: a coordinator restart takes no nodes or until")
        else:
            if fd.nodes is None:
                raise ScenarioError(f"{where} needs nodes")
            nodes = select(fd.nodes, f"{where}.nodes")
            if fd.count is not None and fd.count > len(nodes):
                raise ScenarioError(f"{where}.count = {fd.count} but it selects only "
                                    f"{len(nodes)} nodes")
        faults.append(Fault(kind=fd.kind, epoch=fd.epoch, nodes=nodes, when=when,
                            until=fd.until, count=fd.count, min_theta=fd.min_theta))

    scenario = Scenario(
        name=name, description=sc.description, path=path, epochs=sc.epochs, seed=sc.seed,
        mechanisms=mechanisms, payment=f.market.payment, exclusion=f.market.exclusion,
        kind=sc.kind, weights=wtuple, locations=locations, access=access, mobility=mobility,
        strategy_rules=tuple(rules), faults=tuple(faults), about=tuple(sc.checks),
        types=sc.types)
    try:
        market = scenario.market()
    except (ValueError, TypeError, KeyError) as exc:
        raise ScenarioError(f"the market it describes is invalid: {exc}") from None
    for loc in market.locations:
        if loc.dist.low < 0 or loc.dist.high > 1:
            raise ScenarioError(f"location {loc.name}: types must lie in [0, 1] (the wire's "
                                "θ range)")
    return scenario


# --- what the seed decides ---------------------------------------------------------------


def _rng(seed: int, *labels: str | int) -> np.random.Generator:
    """An independent stream per purpose, so adding nodes does not shift the roaming."""
    digest = hashlib.sha256(repr((seed, *labels)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def key_seed(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"inkind-testbed/{seed}/{name}".encode()).digest()


def _true_thetas(scenario: Scenario, seed: int, epoch: int = 0) -> dict[str, int]:
    """Each node's true θ (micro-units), drawn from its location's prior: the types of
    ``epoch`` (epoch 0's are the ones drawn once when types are fixed; each later epoch
    has its own stream, so epoch e's types do not depend on how many epochs are run)."""
    out: dict[str, int] = {}
    for loc in scenario.locations:
        dist = TypeDistribution.from_dict(dict(loc.type))
        labels: tuple[str | int, ...] = ("theta", loc.name) if epoch == 0 else (
            "theta", loc.name, "epoch", epoch)
        thetas = dist.rvs(loc.nodes, _rng(seed, *labels))
        for i in range(loc.nodes):
            theta = math.floor(float(thetas[i]) * MICRO)
            theta = max(math.ceil(dist.low * MICRO), min(theta, math.floor(dist.high * MICRO)))
            out[f"{loc.name}-{i}"] = max(0, min(MICRO, theta))
    return out


def _pick(nodes: Sequence[str], count: int | None, min_theta: float | None,
          theta: Mapping[str, int], rng: np.random.Generator, where: str,
          seed: int) -> list[str]:
    """``count`` of ``nodes`` (those with θ >= min_theta), drawn by ``rng``, in order."""
    chosen = list(nodes)
    if min_theta is not None:
        chosen = [n for n in chosen if theta[n] >= math.ceil(min_theta * MICRO)]
    if count is not None:
        if count > len(chosen):
            raise ScenarioError(f"{where} asks for {count} nodes but with seed {seed} only "
                                f"{len(chosen)} of its nodes have θ >= {min_theta}")
        if count < len(chosen):
            pick = rng.choice(len(chosen), size=count, replace=False)
            chosen = [chosen[i] for i in sorted(int(i) for i in pick)]
    return chosen


def population(scenario: Scenario, seed: int, epochs: int | None = None) -> list[NodePlan]:
    """The nodes, location-major: names, true θ (drawn from the location's prior),
    strategies (rules never overlap: the parser refuses it) and key seeds.

    With ``types = "redraw"`` each plan also carries its true θ of epochs 0 … E (E =
    ``epochs``, default the scenario's: the played epochs and the audit cut-off), each
    epoch's profile drawn from the priors by (seed, epoch) alone. Rules and faults that
    select by ``min_theta`` read epoch 0's θ.
    """
    theta = _true_thetas(scenario, seed)
    n_epochs = scenario.epochs if epochs is None else epochs
    per_epoch = ([theta] + [_true_thetas(scenario, seed, e) for e in range(1, n_epochs + 1)]
                 if scenario.types == "redraw" else [])
    strategy: dict[str, str] = {}
    for k, rule in enumerate(scenario.strategy_rules):
        for name in _pick(rule.nodes, rule.count, rule.min_theta, theta,
                          _rng(seed, "strategy", k), f"[[strategies]] #{k}", seed):
            strategy[name] = rule.strategy
    plans: list[NodePlan] = []
    for l, loc in enumerate(scenario.locations):
        for i in range(loc.nodes):
            name = f"{loc.name}-{i}"
            plans.append(NodePlan(
                name=name, index=len(plans), location=l, theta=theta[name],
                strategy=strategy.get(name, "truthful"), capacity=_micro(loc.capacity),
                seed=key_seed(seed, name), thetas=tuple(t[name] for t in per_epoch)))
    return plans


def resolve_faults(scenario: Scenario, seed: int) -> tuple[Fault, ...]:
    """The scenario's faults with their nodes drawn (``count``, ``min_theta``) by the seed."""
    theta = _true_thetas(scenario, seed)
    out = []
    for k, f in enumerate(scenario.faults):
        if f.count is None and f.min_theta is None:
            out.append(f)
            continue
        nodes = _pick(f.nodes, f.count, f.min_theta, theta, _rng(seed, "fault", k),
                      f"[[faults]] #{k}", seed)
        out.append(Fault(kind=f.kind, epoch=f.epoch, nodes=tuple(nodes), when=f.when,
                         until=f.until))
    return tuple(out)


def roaming_script(scenario: Scenario, nodes: Sequence[NodePlan], seed: int,
                   epochs: int | None = None) -> list[list[Attempt]]:
    """Per epoch, the attempts in the order they are made (reproducible from the seed).

    Random model: each node makes Poisson(trips) trips per epoch to another location
    (chosen by the destination weights), ``attempts`` access attempts per trip, each at
    a uniform point of the destination. Scripted moves are added after the random ones
    (with ``model = "scripted"`` they are the only ones).
    """
    n_epochs = scenario.epochs if epochs is None else epochs
    L = len(scenario.locations)
    mob = scenario.mobility
    weights = np.asarray(mob.destinations, dtype=float)
    script: list[list[Attempt]] = []
    for e in range(n_epochs):
        rng = _rng(seed, "roam", e)
        out: list[Attempt] = []
        trip = 0
        if mob.model == "random" and L > 1:
            for node in nodes:
                w = weights.copy()
                w[node.location] = 0.0
                if w.sum() <= 0:
                    continue
                for _ in range(int(rng.poisson(mob.trips))):
                    dest = int(rng.choice(L, p=w / w.sum()))
                    for _ in range(mob.attempts):
                        out.append(Attempt(epoch=e, roamer=node.name, location=dest, trip=trip,
                                           u=float(rng.random()), v=float(rng.random())))
                    trip += 1
        for mv in mob.moves:
            if mv.epochs is not None and e not in mv.epochs:
                continue
            for name in mv.nodes:
                for _ in range(mv.attempts):
                    out.append(Attempt(epoch=e, roamer=name, location=mv.to, trip=trip,
                                       u=float(rng.random()), v=float(rng.random())))
                trip += 1
        script.append(out)
    return script


def node_files(scenario: Scenario, seed: int, name: str) -> list[bytes]:
    """The bytes of the files ``name`` shares (kind files), from the seed."""
    rng = _rng(seed, "files", name)
    lo, hi = scenario.access.file_bytes
    return [rng.bytes(int(rng.integers(lo, hi + 1))) for _ in range(scenario.access.files_per_node)]
