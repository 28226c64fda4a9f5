"""The local multi-node testbed (issue: testbed): scenarios, orchestration, report.

``python scripts/testbed.py`` is the command; this package holds its logic:

* :mod:`.scenario` parses and validates a scenario file (TOML) and derives everything
  that must be reproducible from ``(scenario, seed)``: node names, keys, true types,
  strategies, files, the market spec handed to the coordinator and the roaming script;
* :mod:`.fleet` starts the coordinator and the nodes on 127.0.0.1 (nodes as processes
  forked from a pre-imported zygote, as ``python -m node`` processes, or all in this
  process) and injects faults;
* :mod:`.driver` plays the epochs through the coordinator's admin endpoints and does the
  roaming on the nodes' behalf (it created their keys);
* :mod:`.report` turns what was observed into ``report.json``, ``report.md`` and plots.

Layering: the testbed sits above both ``coordinator`` and ``node`` (it is the
``scripts/`` layer of DESIGN.md, packaged here so that tests reach it); it imports the
node package, which never imports it. The zygote (:mod:`.zygote`) imports only
``node``, never numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import run_testbed as run_testbed
    from .scenario import Scenario as Scenario
    from .scenario import load_scenario as load_scenario

__all__ = ["Scenario", "load_scenario", "run_testbed"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m coordinator.testbed.zygote`` imports nothing heavy.
    if name == "run_testbed":
        from .driver import run_testbed

        return run_testbed
    if name in ("Scenario", "load_scenario"):
        from . import scenario

        return getattr(scenario, name)
    raise AttributeError(name)
