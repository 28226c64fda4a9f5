"""Starting, stopping and breaking the coordinator and the nodes on 127.0.0.1.

The launcher reaches every process only through its command line, its stdin/stdout and
the wire; it imports nothing of ``node``.

* :class:`CoordinatorProcess`: ``python -m coordinator --manual`` on an ephemeral port
  (the same port again after a restart, same database and key, so nodes keep their
  URL); the admin token travels in the environment, never on the command line.
* Node fleets, one interface (:class:`Fleet`), three ways to run a node:

  - ``process`` (default): one process per node, forked by the node-side runner
    (``python -m node.fleet --mode process``, a forkserver that imported the node code
    once): real processes, fast to start;
  - ``exec``: one ``python -m node`` per node (the plain command, slow to start);
  - ``inproc``: every node inside one runner process (``python -m node.fleet --mode
    inproc``), stepped by the launcher phase by phase; the cheapest way to run hundreds
    of nodes.

  Process nodes run their own epoch loop (``--roam-moves 0 --no-shopping``: the
  launcher roams and shops for them) and poll the coordinator every ``poll`` seconds;
  in-process nodes are stepped explicitly in each phase, so they need no polling.

Faults: ``crash`` (SIGKILL; in process: the listener closed and the agent dropped),
``restart`` (same key and arguments, a new port, registers again), ``silence`` (SIGSTOP;
in process: the listener replaced by one that accepts and never answers) and
``resume``. Every process is started in its own session so that a Ctrl-C in the
terminal reaches only the launcher, which then stops everything in order; and every
process the launcher starts is killed by the kernel when the launcher dies, however it
dies (``PR_SET_PDEATHSIG``, set between fork and exec), so nothing outlives a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import MICRO, Identity

from .scenario import NodePlan

START_TIMEOUT = 120.0
#: How long one in-process phase (every node stepped) may take.
PHASE_STEP_TIMEOUT = 600.0
#: The nodes' log level in their log files: warnings and errors only (the launcher records
#: every step and decision itself; INFO, one line per step and decision, is for by hand).
NODE_LOG_LEVEL = "WARNING"
PR_SET_PDEATHSIG = 1
#: The coordinator's probes (coordinator/probe.py): the driver runs one round per epoch
#: (POST /v1/admin/probe) after the audit reports, while faults are still in force.
PROBE_ATTEMPTS = 3
PROBE_TIMEOUT = 1.0
#: The hosts' rebuttal window the testbed's coordinator runs with (seconds): a refusal
#: filed later than this before a close is not judged at it, so the driver waits it out
#: between the roamers' audit reports and the next close (hosts file their ledgers at
#: their next step, well within it).
REBUTTAL_SECONDS = 1
STOP_TIMEOUT = 10.0


class FleetError(RuntimeError):
    pass


def die_with_launcher() -> Callable[[], None]:
    """A ``preexec_fn``: the child asks the kernel for SIGKILL when the launcher (this
    process) exits, and exits at once if it already has."""
    launcher = os.getpid()

    def guard() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != launcher:
            os._exit(1)

    return guard


def units(micro: int) -> str:
    """Micro-units as the exact decimal the node CLI parses."""
    return f"{micro // MICRO}.{micro % MICRO:06d}"


async def _read_json_line(stream: asyncio.StreamReader, timeout: float, what: str) -> Any:
    try:
        line = await asyncio.wait_for(stream.readline(), timeout)
    except TimeoutError:
        raise FleetError(f"{what} did not start within {timeout:.0f} s") from None
    if not line:
        raise FleetError(f"{what} exited before it started (see its log)")
    return json.loads(line)


# --- the coordinator ---------------------------------------------------------------------


class CoordinatorProcess:
    def __init__(self, *, spec: Path, mechanism: str, db: Path, key: Path, log: Path,
                 token: str) -> None:
        self.spec, self.mechanism, self.db, self.key, self.log = spec, mechanism, db, key, log
        self.token = token
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.url = ""
        self.public_key = ""
        self.restarts = 0

    async def start(self) -> None:
        # absolute paths: relative ones would be read inside the coordinator's --data-dir
        argv = [sys.executable, "-m", "coordinator", "--spec", str(self.spec),
                "--mechanism", self.mechanism, "--db", str(self.db.resolve()),
                "--key", str(self.key.resolve()),
                "--host", "127.0.0.1", "--port", str(self.port), "--manual",
                "--epoch-seconds", "86400", "--grace-seconds", "86400",
                "--probe-attempts", str(PROBE_ATTEMPTS), "--probe-timeout", str(PROBE_TIMEOUT),
                "--rebuttal-seconds", str(REBUTTAL_SECONDS),
                "--log-level", "WARNING"]
        env = dict(os.environ, INKIND_ADMIN_TOKEN=self.token)
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL,
                env=env, start_new_session=True, preexec_fn=die_with_launcher())
        assert self.proc.stdout is not None
        try:
            info = await _read_json_line(self.proc.stdout, START_TIMEOUT, "the coordinator")
        except BaseException:
            await self.kill()
            raise
        self.url = str(info["coordinator"])
        self.port = int(self.url.rsplit(":", 1)[1])
        self.public_key = str(info["public_key"])

    async def _end(self, sig: int) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return await proc.wait()

    async def kill(self) -> None:
        await self._end(signal.SIGKILL)

    async def stop(self) -> int | None:
        return await self._end(signal.SIGTERM)

    async def restart(self) -> None:
        """Crash (SIGKILL) and start again on the same port, database and key."""
        await self.kill()
        self.restarts += 1
        await self.start()


# --- nodes -------------------------------------------------------------------------------


@dataclass(slots=True)
class NodeHandle:
    plan: NodePlan
    node_id: str
    url: str = ""
    pid: int | None = None
    alive: bool = False
    silent: bool = False
    starts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Fleet:
    """What the driver needs from the nodes, however they run."""

    mode = "abstract"
    stepped = False  # in-process nodes are stepped by the driver

    def __init__(self, plans: list[NodePlan], *, run_dir: Path, kind: str, session_seconds: int,
                 files_dirs: Mapping[str, Path]) -> None:
        self.plans = plans
        self.run_dir = run_dir
        self.kind = kind
        self.session_seconds = session_seconds
        self.files_dirs = dict(files_dirs)
        self.coordinator_url = ""
        self.coordinator_key = ""
        self.nodes: dict[str, NodeHandle] = {
            p.name: NodeHandle(plan=p, node_id=Identity.from_seed(p.seed).node_id) for p in plans}
        self.on_progress: Callable[[int, int], None] = lambda done, total: None

    def live(self) -> list[NodeHandle]:
        """Nodes that are running and answering."""
        return [h for h in self.nodes.values() if h.alive and not h.silent]

    async def start(self, coordinator_url: str, coordinator_key: str) -> None:
        self.coordinator_url, self.coordinator_key = coordinator_url, coordinator_key
        done = 0
        total = len(self.nodes)
        sem = asyncio.Semaphore(self.start_parallelism())

        async def one(h: NodeHandle) -> None:
            nonlocal done
            async with sem:
                await self.start_node(h)
            done += 1
            self.on_progress(done, total)

        await asyncio.gather(*(one(h) for h in self.nodes.values()))

    def start_parallelism(self) -> int:
        return 64

    async def start_node(self, h: NodeHandle) -> None:
        raise NotImplementedError

    async def crash(self, name: str) -> None:
        raise NotImplementedError

    async def restart(self, name: str) -> None:
        h = self.nodes[name]
        if h.alive:
            await self.crash(name)
        await self.start_node(h)

    async def silence(self, name: str) -> None:
        raise NotImplementedError

    async def resume(self, name: str) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    # In-process fleets do the node's work in these; process nodes do it on their own.
    async def register_phase(self) -> None:
        return None

    async def declare_phase(self, epoch: int) -> None:
        return None

    async def provide_phase(self, epoch: int) -> None:
        return None

    async def finish_phase(self, epoch: int) -> None:
        return None

    def node_argv(self, h: NodeHandle, poll: float) -> list[str]:
        p = h.plan
        key = (self.run_dir / "keys" / f"{p.name}.pem").resolve()  # absolute: not --data-dir's
        argv = ["--coordinator", self.coordinator_url, "--coordinator-key", self.coordinator_key,
                "--key", str(key), "--location", str(p.location), "--kind", self.kind,
                "--capacity", units(p.capacity), "--theta", units(p.theta),
                "--strategy", p.strategy, "--session-seconds", str(self.session_seconds),
                "--roam-moves", "0", "--no-shopping", "--poll", f"{poll:g}", "--seed", "0",
                "--log-level", NODE_LOG_LEVEL]
        if p.name in self.files_dirs:
            argv += ["--files-dir", str(self.files_dirs[p.name])]
        if p.thetas:  # types redrawn every epoch: the node declares epoch e's θ
            argv += ["--theta-per-epoch", ",".join(units(t) for t in p.thetas)]
        return argv

    def write_keys(self) -> None:
        keys = self.run_dir / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        for p in self.plans:
            path = keys / f"{p.name}.pem"
            if not path.exists():
                Identity.from_seed(p.seed).save(path)

    def poll_seconds(self) -> float:
        """Idle poll of process nodes: fast for small fleets, gentler for large ones."""
        return round(max(0.05, min(1.0, len(self.nodes) / 400)), 3)


class _ProcessFleet(Fleet):
    """The exec fleet's process handling: nodes are pids."""

    async def crash(self, name: str) -> None:
        h = self.nodes[name]
        if h.pid is not None and h.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.pid, signal.SIGCONT)
                os.kill(h.pid, signal.SIGKILL)
            await self.wait_exit(h)
        h.alive = False
        h.silent = False

    async def silence(self, name: str) -> None:
        h = self.nodes[name]
        if h.pid is not None and h.alive:
            os.kill(h.pid, signal.SIGSTOP)
            h.silent = True

    async def resume(self, name: str) -> None:
        h = self.nodes[name]
        if h.pid is not None and h.alive and h.silent:
            os.kill(h.pid, signal.SIGCONT)
        h.silent = False

    async def wait_exit(self, h: NodeHandle) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        running = [h for h in self.nodes.values() if h.alive and h.pid is not None]
        for h in running:
            with contextlib.suppress(ProcessLookupError):
                assert h.pid is not None
                os.kill(h.pid, signal.SIGCONT)
                os.kill(h.pid, signal.SIGTERM)
        await asyncio.gather(*(self.wait_exit(h) for h in running), return_exceptions=True)
        for h in running:
            h.alive = False


class RunnerFleet(Fleet):
    """Nodes hosted by the node-side runner (``python -m node.fleet``), driven over its
    stdin and stdout: ``process`` mode (one process per node, forked by the runner's
    forkserver) or ``inproc`` mode (every node in the runner's event loop, stepped by
    the launcher phase by phase)."""

    def __init__(self, *args: Any, runner_mode: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = runner_mode
        self.stepped = runner_mode == "inproc"
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.exits: dict[str, asyncio.Future[int]] = {}
        self.next_id = 0
        self.write_lock = asyncio.Lock()

    def start_parallelism(self) -> int:
        return 64

    async def start(self, coordinator_url: str, coordinator_key: str) -> None:
        await self.boot()
        await super().start(coordinator_url, coordinator_key)

    async def boot(self) -> None:
        """Start the runner (it imports the node code once; call early, it takes a while)."""
        if self.proc is not None:
            return
        self.write_keys()
        with (self.run_dir / "logs" / "fleet.log").open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "node.fleet", "--mode", self.mode,
                "--log-level", NODE_LOG_LEVEL,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                start_new_session=True, limit=1 << 24, preexec_fn=die_with_launcher())
        assert self.proc.stdout is not None
        ready = await _read_json_line(self.proc.stdout, START_TIMEOUT, "the node runner")
        if ready.get("event") != "ready":
            raise FleetError(f"unexpected node runner answer {ready!r}")
        self.reader = asyncio.create_task(self._read_events(self.proc.stdout))

    async def _read_events(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            event = json.loads(line)
            if event.get("event") == "exit":
                name = str(event["name"])
                fut = self.exits.get(name)
                if fut is not None and not fut.done():
                    fut.set_result(int(event["rc"]))
                h = self.nodes.get(name)
                if h is not None and h.pid == event.get("pid"):
                    h.alive = False
                continue
            waiter = self.pending.pop(int(event.get("id", -1)), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
        gone = FleetError("the node runner exited (see logs/fleet.log)")
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(gone)
        for exit_ in self.exits.values():
            if not exit_.done():
                exit_.set_exception(gone)

    async def call(self, timeout: float = START_TIMEOUT, **cmd: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (FleetError if it failed)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.next_id += 1
        cmd["id"] = self.next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        async with self.write_lock:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            await self.proc.stdin.drain()
        try:
            answer = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise FleetError(f"the node runner did not answer {cmd['op']} in {timeout:.0f} s")\
                from None
        if answer.get("event") == "error":
            raise FleetError(f"{cmd['op']} {cmd.get('name', '')}: {answer.get('message')} "
                             "(see the logs)")
        return answer

    async def start_node(self, h: NodeHandle) -> None:
        log = self.run_dir / "logs" / f"{h.plan.name}.log"
        self.exits[h.plan.name] = asyncio.get_running_loop().create_future()
        up = await self.call(op="start", name=h.plan.name, log=str(log),
                             argv=self.node_argv(h, self.poll_seconds()))
        h.pid, h.url = int(up["pid"]), str(up["url"])
        h.alive, h.silent = True, False
        h.starts += 1

    async def crash(self, name: str) -> None:
        h = self.nodes[name]
        if h.alive:
            exited = self.exits.get(name)
            await self.call(op="crash", name=name)
            if not self.stepped and exited is not None:
                with contextlib.suppress(TimeoutError, FleetError):
                    await asyncio.wait_for(asyncio.shield(exited), STOP_TIMEOUT)
        h.alive = h.silent = False

    async def silence(self, name: str) -> None:
        h = self.nodes[name]
        if h.alive and not h.silent:
            await self.call(op="silence", name=name)
            h.silent = True

    async def resume(self, name: str) -> None:
        h = self.nodes[name]
        if h.alive and h.silent:
            await self.call(op="resume", name=name)
        h.silent = False

    async def _step(self, phase: str) -> None:
        if self.stepped:
            await self.call(op="step", phase=phase, timeout=PHASE_STEP_TIMEOUT)

    async def register_phase(self) -> None:
        await self._step("register")

    async def declare_phase(self, epoch: int) -> None:
        await self._step("declare")

    async def provide_phase(self, epoch: int) -> None:
        await self._step("provide")

    async def finish_phase(self, epoch: int) -> None:
        await self._step("finish")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(b'{"op": "quit"}\n')
                await proc.stdin.drain()
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 3 * STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, FleetError):
                await self.reader
        for fut in self.exits.values():
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved, so asyncio does not warn about it
        for h in self.nodes.values():
            h.alive = False


class ExecFleet(_ProcessFleet):
    """One ``python -m node`` per node: what a user would type, slow to start."""

    mode = "exec"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def start_parallelism(self) -> int:
        return max(2, os.cpu_count() or 2)

    async def start(self, coordinator_url: str, coordinator_key: str) -> None:
        self.write_keys()
        await super().start(coordinator_url, coordinator_key)

    async def start_node(self, h: NodeHandle) -> None:
        log = (self.run_dir / "logs" / f"{h.plan.name}.log").open("ab")
        with log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "node", *self.node_argv(h, self.poll_seconds()),
                stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_launcher())
        assert proc.stdout is not None
        try:
            info = await _read_json_line(proc.stdout, START_TIMEOUT, f"node {h.plan.name}")
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        self.procs[h.plan.name] = proc
        h.pid, h.url = proc.pid, str(info["url"])
        h.alive, h.silent = True, False
        h.starts += 1

    async def wait_exit(self, h: NodeHandle) -> None:
        proc = self.procs.get(h.plan.name)
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()


MODES = ("process", "exec", "inproc")


def make_fleet(mode: str, *args: Any, **kwargs: Any) -> Fleet:
    if mode == "exec":
        return ExecFleet(*args, **kwargs)
    if mode in ("process", "inproc"):
        return RunnerFleet(*args, runner_mode=mode, **kwargs)
    raise FleetError(f"unknown node mode {mode!r}; choose from {list(MODES)}")

