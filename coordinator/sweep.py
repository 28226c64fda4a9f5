"""Sweeps: a grid of market specs × mechanisms, each solved once, as rows of a table.

A sweep file (TOML) names a base market spec (the format of ``scripts/specs``), the
grid axes that vary it and the mechanisms to solve::

    [sweep]
    name = "welfare-vs-n"
    mechanisms = ["first_best", "optimal", "posted_fee"]
    draws = 200          # type profiles for E[Q] and fees where no exact value exists
    seed = 0
    tol = 1e-6           # optional: the lattice tolerance of the solvers (default 1e-6)

    [base]               # a market spec, as in scripts/specs/*.toml
    ...

    [grid]               # dotted path into the base spec -> the values it takes
    "locations.*.n" = [2, 10, 100]                   # * = every element of a list
    "locations.*.type" = [{ dist = "uniform" }, { dist = "beta", a = 1.0, b = 2.0 }]

    [plot]
    x = "locations.*.n"  # the axis on the horizontal; other axes give one panel each

:func:`load_sweep` validates everything before anything is solved (unknown keys, paths
that do not exist in the base, empty axes, unknown mechanisms, and every grid point's
spec through the market parser) and raises :class:`SweepError` with the offending key or
grid point. :func:`tasks` expands the grid; each :class:`Task` has a stable ``key``, a
hash of its spec and mechanism, so that a sweep interrupted and run again skips the rows
it already has (:func:`read_rows`, :func:`append_row`). :func:`run_task` solves one task
(this is what a worker runs) and returns its row. The distributed scheduling is the
caller's (``scripts/sweep.py`` uses Dask).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import math
import os
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.mechanism import SOLVERS, canonical, market_from_dict, solve
from coordinator.mechanism.expectations import expected_size_and_fee
from coordinator.mechanism.sums import DEFAULT_TOL

MAX_TASKS = 100_000
"""A larger grid is refused (likely a typo in an axis)."""
_TOP = {"sweep", "base", "grid", "plot"}
_SWEEP = {"name", "description", "mechanisms", "draws", "seed", "tol"}
_PLOT = {"x", "per_agent"}

RESULT_FIELDS = (
    "key", "mechanism", "n_agents", "success", "status", "welfare", "welfare_per_agent",
    "welfare_unit", "lambda", "thresholds", "expected_Q", "expected_Q_se", "expected_fee",
    "expected_fee_se", "expectation_source", "error_estimate", "seconds",
)
"""Columns of results.csv after the grid axes' columns (one per axis, JSON values)."""


class SweepError(ValueError):
    """A sweep file, or a results file, that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Sweep:
    """A validated sweep: the base spec, the axes in file order, mechanisms, plot axis."""

    name: str
    base: dict[str, Any]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    mechanisms: tuple[str, ...]
    draws: int
    seed: int
    plot_x: str | None
    per_agent: bool
    tol: float = DEFAULT_TOL

    @property
    def columns(self) -> tuple[str, ...]:
        """The header of results.csv."""
        return tuple(path for path, _ in self.axes) + RESULT_FIELDS


@dataclass(frozen=True, slots=True)
class Task:
    """One spec and mechanism to solve; ``point`` maps each axis to its value."""

    key: str
    mechanism: str
    point: tuple[tuple[str, Any], ...]
    spec: dict[str, Any]
    draws: int
    seed: int
    tol: float = DEFAULT_TOL


def _set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` (dot-separated keys, list indices or ``*`` for every element)."""
    parts = path.split(".")

    def walk(node: Any, i: int) -> None:
        part = parts[i]
        last = i == len(parts) - 1
        if isinstance(node, list):
            if part == "*":
                idx = range(len(node))
            elif part.isdigit() and int(part) < len(node):
                idx = range(int(part), int(part) + 1)
            else:
                raise SweepError(f"grid axis {path!r}: {part!r} is not an index of a list "
                                 f"of {len(node)}")
            for j in idx:
                if last:
                    node[j] = copy.deepcopy(value)
                else:
                    walk(node[j], i + 1)
        elif isinstance(node, dict):
            if part not in node:
                raise SweepError(f"grid axis {path!r}: the base spec has no {part!r} "
                                 f"(it has {sorted(node)})")
            if last:
                node[part] = copy.deepcopy(value)
            else:
                walk(node[part], i + 1)
        else:
            raise SweepError(f"grid axis {path!r}: {parts[i - 1]!r} is not a table or list")

    walk(spec, 0)


def _canonical_json(x: Any) -> str:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def task_key(spec: dict[str, Any], mechanism: str, draws: int, seed: int,
             tol: float = DEFAULT_TOL) -> str:
    """Stable hash of what determines a row: the spec, the mechanism, the Monte Carlo
    settings of its expectations and the solver's tolerance when it is not the default
    (16 hex digits of SHA-256)."""
    what: dict[str, Any] = {"spec": spec, "mechanism": mechanism, "draws": draws,
                            "seed": seed}
    if tol != DEFAULT_TOL:
        what["tol"] = tol
    blob = _canonical_json(what)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tol(table: dict[str, Any]) -> float:
    x = table.get("tol", DEFAULT_TOL)
    if isinstance(x, bool) or not isinstance(x, int | float) or not 0.0 < x < 1.0:
        raise SweepError(f"sweep.tol must be a number in (0, 1), got {x!r}")
    return float(x)


def _int(table: dict[str, Any], key: str, default: int, lo: int) -> int:
    x = table.get(key, default)
    if isinstance(x, bool) or not isinstance(x, int) or x < lo:
        raise SweepError(f"sweep.{key} must be an integer >= {lo}, got {x!r}")
    return x


def parse_sweep(data: dict[str, Any]) -> Sweep:
    """Validate a parsed sweep file (see the module docstring); SweepError if invalid."""
    if not isinstance(data, dict):
        raise SweepError("a sweep file is a table")
    unknown = set(data) - _TOP
    if unknown:
        raise SweepError(f"unknown top-level keys {sorted(unknown)}; expected {sorted(_TOP)}")
    for key in ("sweep", "base"):
        if not isinstance(data.get(key), dict):
            raise SweepError(f"the sweep file needs a [{key}] table")
    sw: dict[str, Any] = data["sweep"]
    unknown = set(sw) - _SWEEP
    if unknown:
        raise SweepError(f"unknown keys in [sweep]: {sorted(unknown)}; expected "
                         f"{sorted(_SWEEP)}")
    mechs = sw.get("mechanisms")
    if not isinstance(mechs, list) or not mechs or not all(isinstance(m, str) for m in mechs):
        raise SweepError(f"sweep.mechanisms must be a non-empty list of names from "
                         f"{sorted(SOLVERS)}")
    try:
        names = tuple(canonical(m) for m in mechs)
    except ValueError as exc:
        raise SweepError(f"sweep.mechanisms: {exc}") from exc
    if len(set(names)) != len(names):
        raise SweepError(f"sweep.mechanisms lists a mechanism twice: {mechs}")
    name = sw.get("name", "sweep")
    if not isinstance(name, str) or not name:
        raise SweepError("sweep.name must be a non-empty string")
    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise SweepError("[grid] must be a table of dotted path = [values]")
    axes = []
    for path, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid axis {path!r} must be a non-empty list of values")
        if len({_canonical_json(v) for v in values}) != len(values):
            raise SweepError(f"grid axis {path!r} repeats a value")
        _set_path(copy.deepcopy(data["base"]), path, values[0])  # the path exists
        axes.append((path, tuple(values)))
    count = math.prod(len(v) for _, v in axes) * len(names)
    if count > MAX_TASKS:
        raise SweepError(f"the grid has {count} tasks, more than {MAX_TASKS}")
    plot = data.get("plot", {})
    if not isinstance(plot, dict) or set(plot) - _PLOT:
        raise SweepError(f"[plot] may only have {sorted(_PLOT)}")
    x = plot.get("x")
    if x is not None and x not in grid:
        raise SweepError(f"plot.x = {x!r} is not a grid axis ({sorted(grid)})")
    per_agent = plot.get("per_agent", True)
    if not isinstance(per_agent, bool):
        raise SweepError("plot.per_agent must be true or false")
    sweep = Sweep(name, data["base"], tuple(axes), names, _int(sw, "draws", 200, 0),
                  _int(sw, "seed", 0, 0), x, per_agent, _tol(sw))
    for task in tasks(sweep):  # every grid point's spec must parse, before any solving
        try:
            market_from_dict(task.spec)
        except ValueError as exc:
            raise SweepError(f"grid point {dict(task.point)}: {exc}") from exc
    return sweep


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; SweepError (or OSError) if it cannot be used."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML: {exc}") from exc
    return parse_sweep(data)


def tasks(sweep: Sweep) -> Iterator[Task]:
    """Every (grid point, mechanism), grid points in file order, mechanisms innermost."""
    paths = [p for p, _ in sweep.axes]
    for values in itertools.product(*(v for _, v in sweep.axes)):
        spec = copy.deepcopy(sweep.base)
        for p, v in zip(paths, values, strict=True):
            _set_path(spec, p, v)
        for m in sweep.mechanisms:
            yield Task(task_key(spec, m, sweep.draws, sweep.seed, sweep.tol), m,
                       tuple(zip(paths, values, strict=True)), spec, sweep.draws, sweep.seed,
                       sweep.tol)


def _num(x: float) -> str:
    return repr(float(x)) if math.isfinite(float(x)) else ""


def _vec(x: Any) -> str:
    if x is None:
        return ""
    arr = np.atleast_1d(np.asarray(x, dtype=float))
    return _canonical_json([float(v) if math.isfinite(v) else None for v in arr])


def run_task(task: Task) -> dict[str, str]:
    """Solve one task; its row of results.csv (strings). Never raises for a mechanism
    that cannot be solved: the row says ``success`` false and the error in ``status``."""
    t0 = time.perf_counter()
    market = market_from_dict(copy.deepcopy(task.spec))
    n_agents = int(sum(loc.n for loc in market.locations))
    row: dict[str, str] = {p: _canonical_json(v) for p, v in task.point}
    row.update(key=task.key, mechanism=task.mechanism, n_agents=str(n_agents))
    unit = "money units" if market.payment == "money" else "resource units (in kind)"
    try:
        mech = solve(market, task.mechanism, tol=task.tol)
        r = mech.result
        rng = np.random.default_rng(task.seed)
        q, fee = expected_size_and_fee(mech, market, draws=task.draws, rng=rng)
        err = r.details.get("relative_error_estimate")
        sources = sorted({e.source for e in q + fee})
        row.update(
            success="true" if r.success else "false", status=r.status,
            welfare=_num(r.welfare), welfare_per_agent=_num(r.welfare / n_agents),
            welfare_unit=unit, **{"lambda": _vec(r.lambdas)},
            thresholds=_vec(r.thresholds),
            expected_Q=_vec([e.value for e in q]), expected_Q_se=_vec([e.se for e in q]),
            expected_fee=_vec([e.value for e in fee]),
            expected_fee_se=_vec([e.se for e in fee]),
            expectation_source="/".join(sources),
            error_estimate="" if err is None else _num(float(err)))
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        row.update(success="false", status=f"error: {exc}", welfare_unit=unit)
    row["seconds"] = f"{time.perf_counter() - t0:.4f}"
    return {k: row.get(k, "") for k in (*[p for p, _ in task.point], *RESULT_FIELDS)}


def read_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The complete rows of an existing results.csv (none if it does not exist).

    A last line cut short by an interruption is dropped and the file rewritten without
    it (atomically), so appending continues on a clean line. SweepError if the file's
    header is not ``columns`` (a different sweep wrote it).
    """
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        text = fh.read()
    lines = list(csv.reader(text.splitlines()))
    if not lines:
        return []
    if tuple(lines[0]) != columns:
        raise SweepError(f"{path} was written by a different sweep (its columns differ); "
                         "use another --out directory")
    complete = text.endswith("\n")
    rows = [dict(zip(columns, r, strict=True)) for r in lines[1:] if len(r) == len(columns)]
    if not complete or len(rows) != len(lines) - 1:
        if rows and not complete and len(lines[-1]) == len(columns):
            rows.pop()  # a full count of fields without its newline may still be cut
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return rows


def append_row(path: Path, columns: tuple[str, ...], row: dict[str, str]) -> None:
    """Append one row (writing the header first for a new file), flushed to disk, so an
    interruption loses at most the row being written."""
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        if new:
            w.writeheader()
        w.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def pending(sweep: Sweep, done: Iterable[dict[str, str]]) -> list[Task]:
    """The tasks whose key has no row yet."""
    have = {r["key"] for r in done}
    return [t for t in tasks(sweep) if t.key not in have]


__all__ = [
    "RESULT_FIELDS",
    "Sweep",
    "SweepError",
    "Task",
    "append_row",
    "load_sweep",
    "parse_sweep",
    "pending",
    "read_rows",
    "run_task",
    "task_key",
    "tasks",
]
