"""Scenario files: the shipped ones load, bad ones are refused with a clear message, and
everything random is a function of (scenario, seed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.testbed.scenario import (
    ScenarioError,
    load_scenario,
    parse_strategy,
    population,
    resolve_faults,
    roaming_script,
    scenario_from_dict,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "scripts" / "scenarios"
REQUIRED = ("commuters", "free-riders", "posted-vs-optimal", "file-sharing", "grid-computing")


def small(**over: object) -> dict[str, object]:
    d: dict[str, object] = {
        "scenario": {"name": "t", "epochs": 2, "seed": 1},
        "locations": [{"name": "a", "nodes": 4}, {"name": "b", "nodes": 3}],
    }
    d.update(over)
    return d


def test_shipped_scenarios_load() -> None:
    found = {p.stem for p in SCENARIOS.glob("*.toml")}
    assert set(REQUIRED) <= found
    for path in sorted(SCENARIOS.glob("*.toml")):
        sc = load_scenario(path)
        assert sc.n_nodes > 0 and sc.epochs >= 1
        sc.market()  # the coordinator's spec is valid


def test_default_scenario_is_large_enough() -> None:
    sc = load_scenario(SCENARIOS / "commuters.toml")
    assert sc.n_nodes >= 50 and len(sc.locations) == 3 and sc.epochs >= 3


def test_kinds_and_mechanisms_covered() -> None:
    scs = [load_scenario(p) for p in SCENARIOS.glob("*.toml")]
    assert {s.kind for s in scs} == {"wlan_coverage", "wlan_channels", "files", "compute"}
    assert {m for s in scs for m in s.mechanisms} == {"posted_fee", "optimal"}
    assert {s.payment for s in scs} == {"money", "in_kind"}
    assert {f.kind for s in scs for f in s.faults} == {
        "node_crash", "coordinator_restart", "host_silent"}


@pytest.mark.parametrize(("patch", "words"), [
    ({"bogus": 1}, "unknown key 'bogus' in the file"),
    ({"scenario": {"epochs": 0}}, "epochs"),
    ({"scenario": {"mechanism": "vickrey"}}, "mechanism"),
    ({"scenario": {"kind": "bluetooth"}}, "kind"),
    ({"market": {"payment": "barter"}}, "payment"),
    ({"locations": []}, "[[locations]]: List should have at least 1 item"),
    ({"locations": [{"name": "a", "nodes": 2}, {"name": "a", "nodes": 2}]}, "unique"),
    ({"locations": [{"name": "a", "nodes": 2, "area": -1}]}, "area"),
    ({"locations": [{"name": "a", "nodes": 2, "colour": "red"}]},
     "unknown key 'colour' in [[locations]] #0"),
    ({"strategies": [{"nodes": "a", "strategy": "bribe"}]}, "strategy"),
    ({"strategies": [{"nodes": "zz-1", "strategy": "free-ride"}]}, "neither a location"),
    ({"faults": [{"kind": "meteor", "epoch": 0}]}, "kind"),
    ({"faults": [{"kind": "node_crash", "epoch": 5, "nodes": "a-0"}]}, "epoch"),
    ({"faults": [{"kind": "node_crash", "epoch": 0}]}, "needs nodes"),
    ({"faults": [{"kind": "host_silent", "epoch": 0, "nodes": "a-0", "when": "before_open"}]},
     "when"),
    ({"mobility": {"moves": [{"nodes": "a", "to": "nowhere"}]}}, "to must be one of"),
    ({"market": {"weights": [[1.0]]}}, "2 x 2"),
    ({"locations": [{"name": "a", "nodes": 2,
                     "type": {"dist": "uniform", "low": 0.0, "high": 2.0}}]}, "[0, 1]"),
])
def test_bad_scenarios_refused(patch: dict[str, object], words: str) -> None:
    d = small()
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}  # type: ignore[dict-item]
        else:
            d[key] = value
    with pytest.raises(ScenarioError, match=None) as info:
        scenario_from_dict(d)
    assert words in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError):
        load_scenario(tmp_path / "missing.toml")


def test_seed_decides_everything() -> None:
    sc = scenario_from_dict(small(
        strategies=[{"nodes": "*", "count": 2, "strategy": "free-ride"}],
        mobility={"trips": 2.0, "attempts": 3, "moves": [{"nodes": "b", "to": "a"}]}))
    a, b, c = population(sc, 7), population(sc, 7), population(sc, 8)
    assert a == b and a != c
    assert sum(p.strategy == "free-ride" for p in a) == 2
    assert roaming_script(sc, a, 7) == roaming_script(sc, b, 7)
    assert roaming_script(sc, a, 7) != roaming_script(sc, c, 8)
    script = roaming_script(sc, a, 7)
    assert len(script) == sc.epochs
    for epoch in script:
        for att in epoch:
            assert 0.0 <= att.u < 1.0
            home = next(p.location for p in a if p.name == att.roamer)
            assert att.location != home  # random trips and the scripted move leave home


def test_overlapping_strategy_rules_are_an_error() -> None:
    """A node picked by two rules would silently follow the last one: refused instead."""
    with pytest.raises(ScenarioError, match=r"#1 overlaps \[\[strategies\]\] #0 on a-2"):
        scenario_from_dict(small(strategies=[
            {"nodes": "a", "count": 1, "strategy": "free-ride"},
            {"nodes": ["a-2", "b-0"], "strategy": "misreport:0.5"}]))
    sc = scenario_from_dict(small(strategies=[
        {"nodes": "a", "count": 2, "strategy": "free-ride"},
        {"nodes": "b", "count": 3, "strategy": "free-ride:commit"}]))
    plans = population(sc, 3)
    assert sum(p.strategy == "free-ride" for p in plans) == 2
    assert sum(p.strategy == "free-ride:commit" for p in plans) == 3


@pytest.mark.parametrize("seed", range(6))
def test_min_theta_picks_exactly_count_among_high_types(seed: int) -> None:
    sc = scenario_from_dict(small(
        locations=[{"name": "a", "nodes": 40}],
        strategies=[{"nodes": "a", "count": 5, "min_theta": 0.5, "strategy": "free-ride"}]))
    riders = [p for p in population(sc, seed) if p.strategy == "free-ride"]
    assert len(riders) == 5
    assert all(p.theta >= 500_000 for p in riders)


def test_a_selection_that_cannot_be_met_is_an_error() -> None:
    sc = scenario_from_dict(small(strategies=[
        {"nodes": "a", "count": 4, "min_theta": 0.99, "strategy": "free-ride"}]))
    with pytest.raises(ScenarioError, match="asks for 4 nodes but with seed 1 only"):
        population(sc, 1)


def test_fault_nodes_drawn_by_the_seed() -> None:
    sc = scenario_from_dict(small(faults=[
        {"kind": "node_crash", "nodes": "a", "count": 1, "min_theta": 0.3, "epoch": 1}]))
    (fault,) = resolve_faults(sc, 5)
    (name,) = fault.nodes
    plan = next(p for p in population(sc, 5) if p.name == name)
    assert name.startswith("a-") and plan.theta >= 300_000
    assert resolve_faults(sc, 5) == resolve_faults(sc, 5)


@pytest.mark.parametrize("spelling", ["truthful", "misreport:0.5", "misreport:=0.3",
                                      "free-ride", "free-ride:commit"])
def test_strategy_spellings_the_node_accepts(spelling: str) -> None:
    assert parse_strategy(spelling).spelling == spelling


@pytest.mark.parametrize("spelling", ["bribe", "misreport", "misreport:-1", "misreport:=2",
                                      "free-ride:always", "truthful:1", "misreport:x"])
def test_strategy_spellings_refused(spelling: str) -> None:
    with pytest.raises(ValueError, match="is not truthful"):
        parse_strategy(spelling)


def test_checks_named_by_a_scenario_exist() -> None:
    with pytest.raises(ScenarioError, match="checks: 'vibes'"):
        scenario_from_dict(small(scenario={"name": "t", "checks": ["vibes"]}))
    for path in SCENARIOS.glob("*.toml"):
        assert load_scenario(path).about, path


@given(theta=st.integers(0, 1_000_000),
       spelling=st.sampled_from(["truthful", "misreport:0.5", "misreport:3/2", "misreport:=0.3",
                                 "misreport:0", "free-ride", "free-ride:commit"]))
def test_the_launcher_expects_what_the_node_plays(theta: int, spelling: str) -> None:
    """The launcher's reading of a spelling (declared θ, commits) is the node's."""
    from node.strategy import parse_strategy as node_strategy

    mine, node = parse_strategy(spelling), node_strategy(spelling)
    assert mine.declare(theta) == node.declare(theta)
    assert (mine.commits, mine.opens) == (node.commits, node.opens_contribution)


def test_shipped_scenario_names_resolve() -> None:
    """``--scenario free-riders`` finds scripts/scenarios/free-riders.toml; a path that
    exists is taken as it is."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("testbed_cli", SCENARIOS.parent / "testbed.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    for path in SCENARIOS.glob("*.toml"):
        assert cli.resolve_scenario(Path(path.stem)) == path
        assert cli.resolve_scenario(Path(path.name)) == path
    assert cli.resolve_scenario(Path("nope")) == Path("nope")
    assert cli.resolve_scenario(SCENARIOS / "channels.toml") == SCENARIOS / "channels.toml"


def test_types_drawn_once_unless_redrawn() -> None:
    """``types = "redraw"``: every epoch (and the audit cut-off) has its own profile, drawn
    by (seed, epoch) alone; epoch 0's is the profile drawn once otherwise."""
    fixed = scenario_from_dict(small())
    redraw = scenario_from_dict(small(scenario={"name": "t", "epochs": 3, "seed": 1,
                                                "types": "redraw"}))
    assert fixed.types == "fixed" and redraw.types == "redraw"
    once = population(fixed, 4)
    assert all(p.thetas == () and p.theta_at(2) == p.theta for p in once)
    plans = population(redraw, 4)
    assert all(len(p.thetas) == 4 and p.theta_at(0) == p.theta for p in plans)
    assert [p.theta for p in plans] == [p.theta for p in once]
    assert population(redraw, 4) == plans  # reproducible
    longer = population(redraw, 4, epochs=6)
    assert all(a.thetas == b.thetas[:4] for a, b in zip(plans, longer, strict=True))
    # the profiles differ from epoch to epoch, and stay in the prior's support
    for e in range(1, 4):
        assert [p.theta_at(e) for p in plans] != [p.theta_at(e - 1) for p in plans]
    assert all(0 <= t <= 1_000_000 for p in longer for t in p.thetas)


def test_types_must_be_fixed_or_redraw() -> None:
    with pytest.raises(ScenarioError, match="types"):
        scenario_from_dict(small(scenario={"name": "t", "types": "sometimes"}))
