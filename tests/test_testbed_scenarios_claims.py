"""Every shipped scenario does what its header says, and checks what it is about.

Each scenario is played (nodes in one process, no plots) with its own seed, and the
claim of its header is asserted from report.json: the right number of free riders, all
caught; the crashed host included and found unreachable; enough channel attempts that
capacity-limited service is judged; and every check the scenario names as what it is
about is ``ok`` (not merely "not failed").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.testbed.driver import run_testbed
from coordinator.testbed.scenario import load_scenario, population, resolve_faults

SCENARIOS = Path(__file__).resolve().parent.parent / "scripts" / "scenarios"
pytestmark = pytest.mark.slow


def play(name: str, tmp_path: Path) -> dict[str, Any]:
    return run_testbed(SCENARIOS / f"{name}.toml", out=tmp_path / name, mode="inproc",
                       plots=False)


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["summary"]["checks"]}


@pytest.mark.parametrize("name", sorted(p.stem for p in SCENARIOS.glob("*.toml")))
def test_every_shipped_scenario_checks_what_it_is_about(name: str, tmp_path: Path) -> None:
    report = play(name, tmp_path)
    by = checks(report)
    about = report["summary"]["checks_about"]
    assert about == list(load_scenario(SCENARIOS / f"{name}.toml").about)
    for c in about:
        assert by[c]["status"] == "ok", by[c]
    assert report["summary"]["ok"], report["summary"]["verdict"]
    if name == "free-riders":
        sc = load_scenario(SCENARIOS / "free-riders.toml")
        riders = {p.name for p in population(sc, sc.seed) if p.strategy.startswith("free-ride")}
        assert len(riders) == 10  # "10 free riders", as the header says
        assert set(report["summary"]["free_riders"]["nodes"]) == riders  # all caught
        assert by["free_riders_caught"]["checked"] >= 10
        # Restitution: caught in epoch 0 and out of 1-2, the riders are readmitted in 3
        # owing their contribution plus what they withheld in 0 (never before).
        charged = {e["epoch"]: sum(loc["restitution_charged"] for loc in e["locations"])
                   for e in report["epochs"]}
        assert charged[0] == charged[1] == charged[2] == 0 and charged[3] > 0
    if name == "grid-computing":
        sc = load_scenario(SCENARIOS / "grid-computing.toml")
        (crash,) = resolve_faults(sc, sc.seed)
        (host,) = crash.nodes
        e1 = next(e for e in report["epochs"] if e["epoch"] == 1)
        e2 = next(e for e in report["epochs"] if e["epoch"] == 2)
        assert host in e1["down_at_probe"] and host in e1["probes_unanswered"]
        assert {"node": host, "reason": "unreachable"}.items() <= next(
            d for d in report["summary"]["free_riders_detected"] if d["node"] == host).items()
        assert host in e2["excluded_nodes"]
    if name == "channels":
        service = by["service_consistent"]
        assert service["checked"] == service["of"] and "capacity-limited" in service["why"]
