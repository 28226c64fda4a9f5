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
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.mechanism import Market, market_from_dict
from coordinator.mechanism.distributions import TypeDistribution
from protocol import MICRO

KINDS = ("wlan_coverage", "wlan_channels", "files", "compute")
#: Scenario mechanism name -> the coordinator's ``--mechanism``.
MECHANISMS = {"posted_fee": "posted_fee", "optimal": "second_best"}
FAULT_KINDS = ("node_crash", "coordinator_restart", "host_silent")
STRATEGY_HEADS = ("truthful", "misreport", "free-ride")
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
    strategy_rules: tuple[tuple[str, tuple[str, ...], int | None], ...]
    faults: tuple[Fault, ...]

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


# --- parsing -----------------------------------------------------------------------------


def _table(d: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ScenarioError(f"{where} must be a table")
    unknown = set(d) - allowed
    if unknown:
        raise ScenarioError(f"unknown keys in {where}: {sorted(unknown)} (allowed: "
                            f"{sorted(allowed)})")
    return d


def _num(d: Mapping[str, Any], key: str, where: str, default: float, *, low: float,
         high: float, integer: bool = False) -> Any:
    value = d.get(key, default)
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise ScenarioError(f"{where}.{key} must be {'an integer' if integer else 'a number'}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ScenarioError(f"{where}.{key} = {value} is outside [{low}, {high}]")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise ScenarioError(f"{where} must be a name or a list of names")
    return tuple(items)


def _micro(units: float) -> int:
    return math.floor(units * MICRO)


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
    top = _table(data, "the file", {"scenario", "market", "locations", "access", "mobility",
                                    "strategies", "faults"})
    sc = _table(top.get("scenario", {}), "[scenario]",
                {"name", "description", "epochs", "seed", "mechanism", "kind"})
    name = sc.get("name", Path(path).stem)
    if not isinstance(name, str) or not name or len(name) > 80:
        raise ScenarioError("[scenario].name must be a short string")
    description = sc.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError("[scenario].description must be a string")
    epochs = _num(sc, "epochs", "[scenario]", 3, low=1, high=MAX_EPOCHS, integer=True)
    seed = _num(sc, "seed", "[scenario]", 1, low=0, high=2**63 - 1, integer=True)
    mech = sc.get("mechanism", "posted_fee")
    mechanisms = _names(mech, "[scenario].mechanism")
    for m in mechanisms:
        if m not in MECHANISMS:
            raise ScenarioError(f"[scenario].mechanism: {m!r} is not one of {sorted(MECHANISMS)}")
    if len(set(mechanisms)) != len(mechanisms):
        raise ScenarioError("[scenario].mechanism lists a mechanism twice")
    kind = sc.get("kind", "wlan_coverage")
    if kind not in KINDS:
        raise ScenarioError(f"[scenario].kind must be one of {KINDS}")

    mk = _table(top.get("market", {}), "[market]", {"payment", "exclusion", "weights"})
    payment = mk.get("payment", "in_kind")
    if payment not in ("money", "in_kind"):
        raise ScenarioError("[market].payment must be 'money' or 'in_kind'")
    exclusion = mk.get("exclusion", True)
    if not isinstance(exclusion, bool):
        raise ScenarioError("[market].exclusion must be true or false")

    raw_locs = top.get("locations")
    if not isinstance(raw_locs, list) or not raw_locs:
        raise ScenarioError("a scenario needs at least one [[locations]] table")
    locations = []
    for k, ld in enumerate(raw_locs):
        where = f"[[locations]] #{k}"
        ld = _table(ld, where, {"name", "nodes", "area", "capacity", "type", "utility", "cost"})
        lname = ld.get("name", f"loc{k}")
        if not isinstance(lname, str) or not lname.replace("_", "").isalnum():
            raise ScenarioError(f"{where}.name must be letters, digits and _")
        for key in ("type", "utility", "cost"):
            if key in ld and not isinstance(ld[key], dict):
                raise ScenarioError(f"{where}.{key} must be an inline table")
        locations.append(LocationSpec(
            name=lname,
            nodes=_num(ld, "nodes", where, 10, low=1, high=MAX_NODES, integer=True),
            area=float(_num(ld, "area", where, 1.0, low=1e-9, high=1e12)),
            capacity=float(_num(ld, "capacity", where, 10.0, low=1e-6, high=1e9)),
            type=dict(ld.get("type", {"dist": "uniform", "low": 0.0, "high": 1.0})),
            utility=dict(ld.get("utility", {"kind": "power", "A": 1.0, "alpha": 0.5})),
            cost=dict(ld.get("cost", {"kind": "power", "B": 1.0, "beta": 1.0})),
        ))
    names = [loc.name for loc in locations]
    if len(set(names)) != len(names):
        raise ScenarioError("location names must be unique")
    total = sum(loc.nodes for loc in locations)
    if total > MAX_NODES:
        raise ScenarioError(f"at most {MAX_NODES} nodes in all")
    L = len(locations)
    weights = mk.get("weights")
    wtuple: tuple[tuple[float, ...], ...] | None = None
    if weights is not None:
        try:
            wtuple = tuple(tuple(float(x) for x in row) for row in weights)
        except (TypeError, ValueError):
            raise ScenarioError("[market].weights must be an L x L matrix of numbers") from None
        if len(wtuple) != L or any(len(r) != L for r in wtuple):
            raise ScenarioError(f"[market].weights must be a {L} x {L} matrix")

    ac = _table(top.get("access", {}), "[access]",
                {"amount", "session_seconds", "files_per_node", "file_bytes", "timeout"})
    fb = ac.get("file_bytes", [1000, 20000])
    if (not isinstance(fb, list) or len(fb) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in fb)
            or not 1 <= fb[0] <= fb[1] <= 10_000_000):
        raise ScenarioError("[access].file_bytes must be [low, high] with 1 <= low <= high "
                            "<= 10000000")
    access = AccessSpec(
        amount=_micro(_num(ac, "amount", "[access]", 0.01, low=1e-6, high=1e6)),
        session_seconds=_num(ac, "session_seconds", "[access]", 1, low=1, high=3600,
                             integer=True),
        files_per_node=_num(ac, "files_per_node", "[access]", 3, low=1, high=100, integer=True),
        file_bytes=(fb[0], fb[1]),
        timeout=float(_num(ac, "timeout", "[access]", 1.5, low=0.1, high=60)),
    )

    node_names = {f"{loc.name}-{i}" for loc in locations for i in range(loc.nodes)}

    def select(value: Any, where: str) -> tuple[str, ...]:
        out: list[str] = []
        for item in _names(value, where):
            if item == "*":
                out.extend(f"{loc.name}-{i}" for loc in locations for i in range(loc.nodes))
            elif item in names:
                loc = locations[names.index(item)]
                out.extend(f"{loc.name}-{i}" for i in range(loc.nodes))
            elif item in node_names:
                out.append(item)
            else:
                raise ScenarioError(f"{where}: {item!r} is neither a location, a node "
                                    "(location-index) nor '*'")
        return tuple(dict.fromkeys(out))

    def location_index(value: Any, where: str) -> int:
        if not isinstance(value, str) or value not in names:
            raise ScenarioError(f"{where} must be one of the locations {names}")
        return names.index(value)

    mo = _table(top.get("mobility", {}), "[mobility]",
                {"model", "trips", "attempts", "destinations", "moves"})
    model = mo.get("model", "random")
    if model not in ("random", "scripted"):
        raise ScenarioError("[mobility].model must be 'random' or 'scripted'")
    dest_raw = _table(mo.get("destinations", {}), "[mobility].destinations", set(names))
    destinations = tuple(
        float(_num(dest_raw, n, "[mobility].destinations", 1.0, low=0, high=1e6)) for n in names)
    moves = []
    raw_moves = mo.get("moves", [])
    if not isinstance(raw_moves, list):
        raise ScenarioError("[[mobility.moves]] must be an array of tables")
    for k, mv in enumerate(raw_moves):
        where = f"[[mobility.moves]] #{k}"
        mv = _table(mv, where, {"nodes", "to", "epochs", "attempts"})
        ep = mv.get("epochs")
        if ep is not None and (not isinstance(ep, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < epochs for x in ep)):
            raise ScenarioError(f"{where}.epochs must list epoch indices in [0, {epochs})")
        if "nodes" not in mv or "to" not in mv:
            raise ScenarioError(f"{where} needs nodes and to")
        moves.append(Move(
            nodes=select(mv["nodes"], f"{where}.nodes"), to=location_index(mv["to"], f"{where}.to"),
            epochs=None if ep is None else tuple(ep),
            attempts=_num(mv, "attempts", where, int(mo.get("attempts", 3)), low=1, high=1000,
                          integer=True)))
    mobility = MobilitySpec(
        model=model,
        trips=float(_num(mo, "trips", "[mobility]", 1.0, low=0, high=100)),
        attempts=_num(mo, "attempts", "[mobility]", 3, low=1, high=1000, integer=True),
        destinations=destinations, moves=tuple(moves))

    rules = []
    raw_rules = top.get("strategies", [])
    if not isinstance(raw_rules, list):
        raise ScenarioError("[[strategies]] must be an array of tables")
    for k, st in enumerate(raw_rules):
        where = f"[[strategies]] #{k}"
        st = _table(st, where, {"nodes", "strategy", "count"})
        strategy = st.get("strategy")
        if not isinstance(strategy, str) or strategy.partition(":")[0] not in STRATEGY_HEADS:
            raise ScenarioError(f"{where}.strategy must be truthful, misreport:F, misreport:=V, "
                                "free-ride or free-ride:commit")
        _check_strategy(strategy, where)
        count = st.get("count")
        if count is not None:
            count = _num(st, "count", where, 1, low=0, high=MAX_NODES, integer=True)
        rules.append((strategy, select(st.get("nodes", "*"), f"{where}.nodes"), count))

    faults = []
    raw_faults = top.get("faults", [])
    if not isinstance(raw_faults, list):
        raise ScenarioError("[[faults]] must be an array of tables")
    for k, fd in enumerate(raw_faults):
        where = f"[[faults]] #{k}"
        fd = _table(fd, where, {"kind", "epoch", "nodes", "when", "until"})
        fkind = fd.get("kind")
        if fkind not in FAULT_KINDS:
            raise ScenarioError(f"{where}.kind must be one of {FAULT_KINDS}")
        ep = _num(fd, "epoch", where, 0, low=0, high=epochs - 1, integer=True)
        until = fd.get("until")
        if until is not None:
            until = _num(fd, "until", where, 0, low=ep + 1, high=MAX_EPOCHS, integer=True)
        allowed_when = {"node_crash": ("before_open", "after_commit"),
                        "coordinator_restart": ("before_open", "before_close"),
                        "host_silent": ("after_commit",)}[fkind]
        when = fd.get("when", allowed_when[0])
        if when not in allowed_when:
            raise ScenarioError(f"{where}.when must be one of {allowed_when} for {fkind}")
        nodes: tuple[str, ...] = ()
        if fkind == "coordinator_restart":
            if "nodes" in fd or until is not None:
                raise ScenarioError(f"{where}: a coordinator restart takes no nodes or until")
        else:
            if "nodes" not in fd:
                raise ScenarioError(f"{where} needs nodes")
            nodes = select(fd["nodes"], f"{where}.nodes")
        faults.append(Fault(kind=fkind, epoch=ep, nodes=nodes, when=when, until=until))

    scenario = Scenario(
        name=name, description=description, path=path, epochs=epochs, seed=seed,
        mechanisms=mechanisms, payment=payment, exclusion=exclusion, kind=kind,
        weights=wtuple, locations=tuple(locations), access=access, mobility=mobility,
        strategy_rules=tuple(rules), faults=tuple(faults))
    try:
        market = scenario.market()
    except (ValueError, TypeError, KeyError) as exc:
        raise ScenarioError(f"the market it describes is invalid: {exc}") from None
    for loc in market.locations:
        if loc.dist.low < 0 or loc.dist.high > 1:
            raise ScenarioError(f"location {loc.name}: types must lie in [0, 1] (the wire's "
                                "θ range)")
    return scenario


def _check_strategy(text: str, where: str) -> None:
    from node.strategy import parse_strategy
    from protocol import InkindError

    try:
        parse_strategy(text)
    except InkindError as exc:
        raise ScenarioError(f"{where}.strategy: {exc}") from None


# --- what the seed decides ---------------------------------------------------------------


def _rng(seed: int, *labels: str | int) -> np.random.Generator:
    """An independent stream per purpose, so adding nodes does not shift the roaming."""
    digest = hashlib.sha256(repr((seed, *labels)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def key_seed(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"inkind-testbed/{seed}/{name}".encode()).digest()


def population(scenario: Scenario, seed: int) -> list[NodePlan]:
    """The nodes, location-major: names, true θ (drawn from the location's prior),
    strategies (the last matching rule wins) and key seeds."""
    strategy: dict[str, str] = {}
    for k, (text, nodes, count) in enumerate(scenario.strategy_rules):
        chosen = list(nodes)
        if count is not None and count < len(chosen):
            pick = _rng(seed, "strategy", k).choice(len(chosen), size=count, replace=False)
            chosen = [chosen[i] for i in sorted(int(i) for i in pick)]
        for name in chosen:
            strategy[name] = text
    plans: list[NodePlan] = []
    for l, loc in enumerate(scenario.locations):
        dist = TypeDistribution.from_dict(dict(loc.type))
        thetas = dist.rvs(loc.nodes, _rng(seed, "theta", loc.name))
        for i in range(loc.nodes):
            name = f"{loc.name}-{i}"
            theta = math.floor(float(thetas[i]) * MICRO)
            theta = max(math.ceil(dist.low * MICRO), min(theta, math.floor(dist.high * MICRO)))
            plans.append(NodePlan(
                name=name, index=len(plans), location=l, theta=max(0, min(MICRO, theta)),
                strategy=strategy.get(name, "truthful"), capacity=_micro(loc.capacity),
                seed=key_seed(seed, name)))
    return plans


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
