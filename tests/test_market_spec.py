"""Market specs (coordinator.mechanism.market): TOML and JSON files, validation of every
field with a clear ValueError, and validation of declared types."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.mechanism.distributions import TypeDistribution
from coordinator.mechanism.market import (
    MAX_SPEC_BYTES,
    Location,
    Market,
    PowerCost,
    PowerUtility,
    load_market,
    market_from_dict,
    slides_market,
)

ROOT = Path(__file__).resolve().parent.parent

TOML_SPEC = """\
# two towns sharing WLANs, payments in kind
weights = [[1.0, 0.5], [0.25, 1.0]]

[market]
name = "two towns"
description = "a test market"
payment = "in_kind"
exclusion = false
q_max = 1000.0

[[locations]]
name = "centre"
n = 40
type = { dist = "uniform", low = 0.0, high = 2.0 }
utility = { kind = "power", A = 1.5, alpha = 0.5 }
cost = { kind = "power", B = 2.0, delta = 0.5, beta = 1.25 }

[[locations]]
name = "campus"
n = 7
type = { dist = "beta", a = 2.0, b = 3.0 }
utility = { A = 0.75, alpha = 0.25 }
cost = { B = 1.0, beta = 1.0 }

[[locations]]
name = "suburb"
n = 3

[locations.type]
dist = "scipy"
name = "truncnorm"
params = { a = -2.0, b = 2.0, loc = 0.5, scale = 0.25 }
low = 0.0
high = 1.0
"""

JSON_SPEC: dict[str, Any] = {
    "weights": [[1.0, 0.5], [0.25, 1.0]],
    "market": {"name": "two towns", "description": "a test market", "payment": "in_kind",
               "exclusion": False, "q_max": 1000.0},
    "locations": [
        {"name": "centre", "n": 40, "type": {"dist": "uniform", "low": 0.0, "high": 2.0},
         "utility": {"kind": "power", "A": 1.5, "alpha": 0.5},
         "cost": {"kind": "power", "B": 2.0, "delta": 0.5, "beta": 1.25}},
        {"name": "campus", "n": 7, "type": {"dist": "beta", "a": 2.0, "b": 3.0},
         "utility": {"A": 0.75, "alpha": 0.25}, "cost": {"B": 1.0, "beta": 1.0}},
        {"name": "suburb", "n": 3,
         "type": {"dist": "scipy", "name": "truncnorm",
                  "params": {"a": -2.0, "b": 2.0, "loc": 0.5, "scale": 0.25},
                  "low": 0.0, "high": 1.0}},
    ],
}


def _three_by_three(spec: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(spec))
    out["weights"] = [[1.0, 0.5, 0.0], [0.25, 1.0, 0.0], [0.0, 0.125, 1.0]]
    return out


def _toml_three_by_three() -> str:
    return TOML_SPEC.replace("weights = [[1.0, 0.5], [0.25, 1.0]]",
                             "weights = [[1.0, 0.5, 0.0], [0.25, 1.0, 0.0], [0.0, 0.125, 1.0]]")


def assert_same_market(a: Market, b: Market, *, names: bool = True) -> None:
    assert a.L == b.L
    np.testing.assert_array_equal(a.weights, b.weights)
    assert (a.payment, a.exclusion, a.levels, a.q_max) == (b.payment, b.exclusion, b.levels,
                                                          b.q_max)
    for la, lb in zip(a.locations, b.locations, strict=True):
        assert not names or la.name == lb.name
        assert (la.n, la.utility, la.cost) == (lb.n, lb.utility, lb.cost)
        assert la.dist.spec == lb.dist.spec and la.dist.label == lb.dist.label
        assert (la.dist.low, la.dist.high) == (lb.dist.low, lb.dist.high)
        x = np.linspace(la.dist.low, la.dist.high, 33)
        np.testing.assert_array_equal(la.dist.cdf(x), lb.dist.cdf(x))


# ---------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------
def test_toml_and_json_files_parse_to_the_same_market(tmp_path: Path) -> None:
    toml_path = tmp_path / "m.toml"
    json_path = tmp_path / "m.json"
    toml_path.write_text(_toml_three_by_three(), encoding="utf-8")
    json_path.write_text(json.dumps(_three_by_three(JSON_SPEC)), encoding="utf-8")
    a = load_market(toml_path)
    b = load_market(json_path)
    assert_same_market(a, b)
    assert a.spec == b.spec  # the raw tables round-trip as well


def test_spec_fields_reach_the_market(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text(_toml_three_by_three(), encoding="utf-8")
    m = load_market(p)
    assert m.payment == "in_kind" and m.exclusion is False and m.q_max == 1000.0
    assert [loc.name for loc in m.locations] == ["centre", "campus", "suburb"]
    assert m.sizes.tolist() == [40, 7, 3]
    c, k, s = m.locations
    assert c.utility == PowerUtility(1.5, 0.5) and c.cost == PowerCost(2.0, 1.25, 0.5)
    assert k.utility == PowerUtility(0.75, 0.25) and k.cost == PowerCost(1.0, 1.0, 0.0)
    # Defaults: u = Q^(1/2), c = Q.
    assert s.utility == PowerUtility(1.0, 0.5) and s.cost == PowerCost(1.0, 1.0, 0.0)
    assert (c.dist.low, c.dist.high) == (0.0, 2.0)
    assert k.dist.mean() == pytest.approx(0.4, rel=1e-12)
    assert float(s.dist.cdf(0.5)) == pytest.approx(0.5, abs=1e-12)  # symmetric truncnorm


def test_defaults_are_one_uniform_location_identity_weights_money_and_exclusion() -> None:
    m = market_from_dict({"locations": [{"n": 3}]})
    assert m.L == 1 and m.locations[0].name == "location-0"
    assert m.payment == "money" and m.exclusion is True and m.levels is None
    np.testing.assert_array_equal(m.weights, np.eye(1))
    assert m.locations[0].dist.spec["dist"] == "uniform"
    two = market_from_dict({"locations": [{"n": 3, "name": "a"}, {"n": 4, "name": "b"}]})
    np.testing.assert_array_equal(two.weights, np.eye(2))


def test_levels_are_sorted_deduplicated_and_start_at_zero() -> None:
    m = market_from_dict({"market": {"levels": [3, 1, 1]}, "locations": [{"n": 2}]})
    assert m.levels == (0.0, 1.0, 3.0)


def test_shipped_slides_spec_is_the_slides_market() -> None:
    assert_same_market(load_market(ROOT / "scripts" / "specs" / "slides.toml"),
                       slides_market(100), names=False)


def test_weights_after_a_table_header_in_toml_get_a_hint(tmp_path: Path) -> None:
    p = tmp_path / "late.toml"
    p.write_text("[[locations]]\nn = 2\nweights = [[1.0]]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="before the first"):
        load_market(p)


@pytest.mark.parametrize("name, content", [
    ("m.yaml", "locations: []"),
    ("m.json", "{not json"),
    ("m.toml", "[[locations]\nn = 2"),
    ("m.toml", "[[locations]]\nn = 2\nn = 3\n"),  # duplicate key
    ("m.json", "[]"),
])
def test_unreadable_files_are_value_errors(tmp_path: Path, name: str, content: str) -> None:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError):
        load_market(p)


def test_oversized_spec_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    p.write_bytes(b" " * (MAX_SPEC_BYTES + 1))
    with pytest.raises(ValueError, match="larger than"):
        load_market(p)


# ---------------------------------------------------------------------------------
# bad specs
# ---------------------------------------------------------------------------------
def _one(**loc: Any) -> dict[str, Any]:
    return {"locations": [{"n": 3, **loc}]}


@pytest.mark.parametrize("spec, message", [
    ({"locations": [{"n": 3}], "colour": 1}, r"unknown top-level keys: \['colour'\]"),
    ({"market": {"paymnet": "money"}, "locations": [{"n": 3}]}, r"unknown keys in \[market\]"),
    (_one(colour="red"), r"unknown keys in locations\[0\]: \['colour'\]"),
    (_one(type={"dist": "uniform", "mean": 0.5}), r"unknown keys in type table: \['mean'\]"),
    (_one(utility={"A": 1.0, "beta": 0.5}), r"unknown keys in locations\[0\]\.utility"),
    (_one(cost={"B": 1.0, "alpha": 0.5}), r"unknown keys in locations\[0\]\.cost"),
])
def test_unknown_keys_are_refused_and_named(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market_from_dict(spec)


@pytest.mark.parametrize("n, message", [
    (0, r"n must be in \[1, "),
    (-1, r"n must be in \[1, "),
    (10**8, r"n must be in \[1, "),
    ("3", "n must be an integer, got '3'"),
    (True, "n must be an integer, got True"),
    (3.0, "n must be an integer, got 3.0"),
    (None, "n must be an integer"),
])
def test_bad_agent_counts_are_refused(n: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market_from_dict({"locations": [{"n": n}]})


def test_missing_agent_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"locations\[0\] needs n"):
        market_from_dict({"locations": [{"name": "x"}]})


@pytest.mark.parametrize("type_table, message", [
    ({"dist": "cauchy"}, "type.dist must be one of"),
    ({}, "type.dist must be one of"),
    ({"dist": "scipy", "name": "not_a_distribution"}, "not a continuous scipy.stats"),
    ({"dist": "scipy", "name": "binom", "params": {"n": 3, "p": 0.5}}, "not a continuous"),
    ({"dist": "scipy", "name": "norm", "params": {"shape": 1.0}}, "bad parameters"),
    ({"dist": "scipy", "name": "norm", "params": 3}, "params must be a table"),
    ({"dist": "beta", "a": -1.0, "b": 2.0}, "Beta parameters must be positive"),
    ({"dist": "uniform", "low": 1.0, "high": 1.0}, "finite interval"),
    ({"dist": "uniform", "low": 2.0, "high": 1.0}, "finite interval"),
    ({"dist": "scipy", "name": "uniform", "params": {"loc": 2.0}, "low": 0.0, "high": 1.0},
     "no probability mass"),
])
def test_bad_type_distributions_are_refused(type_table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market_from_dict(_one(type=type_table))


@pytest.mark.parametrize("type_table", [
    {"dist": "beta", "b": 3.0},  # a missing
    {"dist": "beta", "a": 2.0},  # b missing
    {"dist": "scipy", "params": {"loc": 0.5}},  # name missing
])
def test_missing_distribution_parameters_are_value_errors(type_table: dict[str, Any]) -> None:
    # A bad spec must surface as ValueError (scripts/solve.py turns that into exit code 2
    # and a one-line message), not as a KeyError traceback.
    with pytest.raises(ValueError):
        market_from_dict(_one(type=type_table))


@pytest.mark.parametrize("spec", [
    _one(type="uniform"),
    _one(utility=3),
    _one(cost=[1.0, 1.0]),
    {"market": 5, "locations": [{"n": 3}]},
    {"market": {}, "locations": ["not a table"]},
])
def test_tables_of_the_wrong_kind_are_value_errors(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        market_from_dict(spec)


@pytest.mark.parametrize("utility, cost, message", [
    ({"A": 0.0}, {}, "A > 0"),
    ({"alpha": 1.5}, {}, "0 < alpha <= 1"),
    ({"alpha": 0.0}, {}, "0 < alpha <= 1"),
    ({}, {"B": -1.0}, "B > 0"),
    ({}, {"beta": 0.5}, "beta >= 1"),
    ({}, {"delta": -0.1}, "delta >= 0"),
    ({}, {"kind": "log"}, "cost.kind must be 'power'"),
])
def test_bad_utilities_and_costs_are_refused(utility: dict[str, Any], cost: dict[str, Any],
                                             message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market_from_dict(_one(utility=utility, cost=cost))


def test_unknown_utility_kind_message_names_the_kind() -> None:
    with pytest.raises(ValueError, match="got 'log'"):
        market_from_dict(_one(utility={"kind": "log"}))


@pytest.mark.parametrize("weights, message", [
    ([[1.0, 0.0], [0.0, 1.0]], r"1x1 matrix, got shape \(2, 2\)"),
    ([1.0, 1.0], r"1x1 matrix, got shape \(2,\)"),
    ([[-1.0]], "nonnegative"),
    ([[math.nan]], "finite"),
    ([[math.inf]], "finite"),
])
def test_bad_weights_are_refused_for_one_location(weights: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market_from_dict({"locations": [{"n": 3}], "weights": weights})


@pytest.mark.parametrize("weights, message", [
    ([[1.0, 0.5]], r"2x2 matrix, got shape \(1, 2\)"),
    ([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0]], r"2x2 matrix, got shape \(2, 3\)"),
    (1.0, r"2x2 matrix, got shape \(\)"),
    ([[1.0, -0.5], [0.5, 1.0]], "nonnegative"),
])
def test_bad_weights_are_refused_for_two_locations(weights: object, message: str) -> None:
    spec = {"locations": [{"n": 3, "name": "a"}, {"n": 2, "name": "b"}], "weights": weights}
    with pytest.raises(ValueError, match=message):
        market_from_dict(spec)


@pytest.mark.parametrize("weights", [[[1.0, 0.0], [0.0]], [["x", 0.0], [0.0, 1.0]]])
def test_malformed_weights_are_value_errors(weights: object) -> None:
    spec = {"locations": [{"n": 3, "name": "a"}, {"n": 2, "name": "b"}], "weights": weights}
    with pytest.raises(ValueError):
        market_from_dict(spec)


@pytest.mark.parametrize("market_table, message", [
    ({"payment": "cash"}, "payment must be 'money' or 'in_kind'"),
    ({"levels": [-1.0, 1.0]}, "levels must be finite nonnegative"),
    ({"levels": []}, "levels must be finite nonnegative"),
    ({"levels": [1.0, math.inf]}, r"levels\[1\] is inf: spec numbers must be finite"),
])
def test_bad_market_table_values_are_refused(market_table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market_from_dict({"market": market_table, "locations": [{"n": 3}]})


@pytest.mark.parametrize("exclusion", ["false", "no", 0.5, [True]])
def test_exclusion_must_be_a_boolean(exclusion: object) -> None:
    # bool("false") is True: a quoted "false" must not silently allow exclusion.
    with pytest.raises(ValueError, match="exclusion"):
        market_from_dict({"market": {"exclusion": exclusion}, "locations": [{"n": 3}]})


def test_duplicate_location_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        market_from_dict({"locations": [{"n": 3, "name": "a"}, {"n": 2, "name": "a"}]})


def test_a_spec_needs_a_location() -> None:
    for spec in ({}, {"locations": []}, {"locations": {"n": 3}}):
        with pytest.raises(ValueError, match="at least one"):
            market_from_dict(spec)
    with pytest.raises(ValueError, match="a market spec is a table"):
        market_from_dict([{"n": 3}])  # type: ignore[arg-type]


def test_direct_construction_validates_too() -> None:
    loc = Location("a", 2, TypeDistribution.uniform(), PowerUtility(1.0, 0.5),
                   PowerCost(1.0, 1.0))
    with pytest.raises(ValueError, match="1 to"):
        Market((), np.eye(0))
    with pytest.raises(ValueError, match="n must be an integer"):
        Location("b", True, TypeDistribution.uniform(), PowerUtility(1.0, 0.5),
                 PowerCost(1.0, 1.0))
    with pytest.raises(ValueError, match="payment"):
        Market((loc,), np.eye(1), "barter")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unique"):
        Market((loc, loc), np.eye(2))


# ---------------------------------------------------------------------------------
# declared types
# ---------------------------------------------------------------------------------
def _mixed_market() -> Market:
    locs = (Location("a", 2, TypeDistribution.uniform(), PowerUtility(1.0, 0.5),
                     PowerCost(1.0, 1.0)),
            Location("b", 3, TypeDistribution.uniform(1.0, 2.0), PowerUtility(1.0, 0.5),
                     PowerCost(1.0, 1.0)))
    return Market(locs, np.eye(2))


def test_split_types_accepts_a_valid_vector_in_location_order() -> None:
    m = _mixed_market()
    t = m.split_types([0.0, 1.0, 1.0, 1.5, 2.0])
    assert t.dtype == np.float64
    np.testing.assert_array_equal(t, [0.0, 1.0, 1.0, 1.5, 2.0])
    np.testing.assert_array_equal(m.agent_locations(), [0, 0, 1, 1, 1])


@pytest.mark.parametrize("types, message", [
    ([0.5, 0.5, 1.5, 1.5], r"expected 5 declared types, got shape \(4,\)"),
    ([0.5, 0.5, 1.5, 1.5, 1.5, 1.5], r"expected 5 declared types, got shape \(6,\)"),
    ([[0.5, 0.5, 1.5, 1.5, 1.5]], r"expected 5 declared types, got shape \(1, 5\)"),
    (0.5, r"expected 5 declared types, got shape \(\)"),
    ([0.5, math.nan, 1.5, 1.5, 1.5], "finite"),
    ([0.5, 0.5, 1.5, math.inf, 1.5], "finite"),
    ([-0.01, 0.5, 1.5, 1.5, 1.5], "outside its location's type support"),
    ([0.5, 0.5, 1.5, 1.5, 2.01], "outside its location's type support"),
    # Valid for location b but not for location a, and vice versa.
    ([1.5, 0.5, 1.5, 1.5, 1.5], "outside its location's type support"),
    ([0.5, 0.5, 0.5, 1.5, 1.5], "outside its location's type support"),
])
def test_split_types_refuses_bad_declarations(types: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _mixed_market().split_types(types)  # type: ignore[arg-type]


def test_allocate_refuses_bad_declarations_before_computing_anything() -> None:
    from coordinator.mechanism.posted_fee import posted_fee

    mech = posted_fee(slides_market(3))
    with pytest.raises(ValueError, match="declared types"):
        mech.allocate([0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        mech.allocate([0.5, math.nan, 0.5])
    with pytest.raises(ValueError, match="outside"):
        mech.allocate([0.5, 1.5, 0.5])


def test_sample_types_respects_each_location_support_and_shape() -> None:
    m = _mixed_market()
    rng = np.random.default_rng(0)
    one = m.sample_types(rng)
    many = m.sample_types(rng, 100)
    assert one.shape == (5,) and many.shape == (100, 5)
    for row in many:
        m.split_types(row)  # every draw is a valid declaration
    assert np.all(many[:, :2] <= 1.0) and np.all(many[:, 2:] >= 1.0)
    again = _mixed_market().sample_types(np.random.default_rng(0))
    np.testing.assert_array_equal(one, again)  # seeded: reproducible
