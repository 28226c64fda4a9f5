"""The local multi-node testbed (issue: testbed): scenarios, orchestration, report.

``python scripts/testbed.py`` is the command; this package holds its logic:

* :mod:`.scenario` validates a scenario file (TOML, pydantic) into a :class:`Scenario`
  and derives everything that must be reproducible from ``(scenario, seed)``: node
  names, keys, true types, strategies, files, the market spec handed to the coordinator
  and the roaming script;
* :mod:`.fleet` starts the coordinator and the nodes on 127.0.0.1 as processes (nodes
  forked by the node-side runner ``python -m node.fleet``, hosted all in that runner, or
  as ``python -m node`` processes) and injects faults;
* :mod:`.driver` plays the epochs through the coordinator's admin endpoints and does the
  roaming on the nodes' behalf (it created their keys) with :mod:`.wire`, built on
  ``protocol`` alone;
* :mod:`.records` holds what was observed, :mod:`.checks` the invariants judged on it,
  and :mod:`.report` turns both into ``report.json`` (typed and validated by
  :mod:`.schema`), ``report.md`` and plots.

Layering: the testbed is the ``scripts/`` layer of DESIGN.md, packaged here so that
tests reach it. It imports ``protocol`` and the mechanism library (for its reports),
never ``node``: nodes are reached through their command lines, the runner's pipe and the
wire, as an operator would (tests/test_testbed_layers.py holds it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import run_testbed as run_testbed
    from .scenario import Scenario as Scenario
    from .scenario import load_scenario as load_scenario

__all__ = ["Scenario", "load_scenario", "run_testbed"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package (for the scenario alone) stays light.
    if name == "run_testbed":
        from .driver import run_testbed

        return run_testbed
    if name in ("Scenario", "load_scenario"):
        from . import scenario

        return getattr(scenario, name)
    raise AttributeError(name)
