"""Starting, stopping and breaking the coordinator and the nodes on 127.0.0.1.

* :class:`CoordinatorProcess`: ``python -m coordinator --manual`` on an ephemeral port
  (the same port again after a restart, same database and key, so nodes keep their
  URL); the admin token travels in the environment, never on the command line.
* Node fleets, one interface (:class:`Fleet`), three ways to run a node:

  - ``process`` (default): one process per node, forked from a zygote that imported the
    node code once (:mod:`.zygote`): real processes, but fast to start;
  - ``exec``: one ``python -m node`` per node (the plain command, slow to start);
  - ``inproc``: every node in this process and event loop (:func:`node.launch.start_node`),
    stepped by the driver; the cheapest way to run hundreds of nodes.

  Process nodes run their own epoch loop (``--roam-moves 0``: the driver roams for them)
  and poll the coordinator every ``poll`` seconds; in-process nodes are stepped
  explicitly in each phase, so they need no polling.

Faults: ``crash`` (SIGKILL; in process: the listener closed and the agent dropped),
``restart`` (same key and arguments, a new port, registers again), ``silence`` (SIGSTOP;
in process: the listener replaced by one that accepts and never answers) and
``resume``. Every process is started in its own session so that a Ctrl-C in the
terminal reaches only the launcher, which then stops everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from protocol import MICRO, Identity

from .scenario import NodePlan

START_TIMEOUT = 120.0
#: The coordinator's probes (coordinator/probe.py): the driver runs one round per epoch
#: (POST /v1/admin/probe) after the audit reports, while faults are still in force.
PROBE_ATTEMPTS = 3
PROBE_TIMEOUT = 1.0
STOP_TIMEOUT = 10.0


class FleetError(RuntimeError):
    pass


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
        argv = [sys.executable, "-m", "coordinator", "--spec", str(self.spec),
                "--mechanism", self.mechanism, "--db", str(self.db), "--key", str(self.key),
                "--host", "127.0.0.1", "--port", str(self.port), "--manual",
                "--epoch-seconds", "86400", "--grace-seconds", "86400",
                "--probe-attempts", str(PROBE_ATTEMPTS), "--probe-timeout", str(PROBE_TIMEOUT),
                "--log-level", "WARNING"]
        env = dict(os.environ, INKIND_ADMIN_TOKEN=self.token)
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL,
                env=env, start_new_session=True)
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
        key = self.run_dir / "keys" / f"{p.name}.pem"
        argv = ["--coordinator", self.coordinator_url, "--coordinator-key", self.coordinator_key,
                "--key", str(key), "--location", str(p.location), "--kind", self.kind,
                "--capacity", units(p.capacity), "--theta", units(p.theta),
                "--strategy", p.strategy, "--session-seconds", str(self.session_seconds),
                "--roam-moves", "0", "--poll", f"{poll:g}", "--seed", "0",
                "--log-level", "WARNING"]
        if p.name in self.files_dirs:
            argv += ["--files-dir", str(self.files_dirs[p.name])]
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
    """Shared by the zygote and exec fleets: nodes are pids."""

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


class ZygoteFleet(_ProcessFleet):
    """One process per node, forked from :mod:`.zygote`."""

    mode = "process"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self.up: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.exits: dict[int, asyncio.Future[int]] = {}
        self.write_lock = asyncio.Lock()

    def start_parallelism(self) -> int:
        return 1_000_000  # forking is cheap; the zygote serialises it anyway

    async def start(self, coordinator_url: str, coordinator_key: str) -> None:
        await self.boot()
        await super().start(coordinator_url, coordinator_key)

    async def boot(self) -> None:
        """Start the zygote (it imports the node code once; call early, it takes a while)."""
        if self.proc is not None:
            return
        self.write_keys()
        with (self.run_dir / "logs" / "zygote.log").open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "coordinator.testbed.zygote",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                start_new_session=True)
        assert self.proc.stdout is not None
        ready = await _read_json_line(self.proc.stdout, START_TIMEOUT, "the node zygote")
        if ready.get("event") != "ready":
            raise FleetError(f"unexpected zygote answer {ready!r}")
        self.reader = asyncio.create_task(self._read_events(self.proc.stdout))

    async def _read_events(self, stdout: asyncio.StreamReader) -> None:
        while True:
            line = await stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event.get("event") == "up":
                fut = self.up.pop(str(event["name"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(event)
            elif event.get("event") == "exit":
                pid = int(event["pid"])
                fut2 = self.exits.setdefault(pid, asyncio.get_running_loop().create_future())
                if not fut2.done():
                    fut2.set_result(int(event["rc"]))
                name = str(event["name"])
                upf = self.up.pop(name, None)
                if upf is not None and not upf.done():
                    upf.set_exception(FleetError(f"node {name} exited with {event['rc']} "
                                                 "before it listened (see its log)"))
        pending: list[asyncio.Future[Any]] = [*self.up.values(), *self.exits.values()]
        for fut in pending:
            if not fut.done():
                fut.set_exception(FleetError("the node zygote exited"))

    async def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        async with self.write_lock:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            await self.proc.stdin.drain()

    async def start_node(self, h: NodeHandle) -> None:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.up[h.plan.name] = fut
        log = self.run_dir / "logs" / f"{h.plan.name}.log"
        await self._send({"op": "spawn", "name": h.plan.name,
                          "argv": self.node_argv(h, self.poll_seconds()), "log": str(log)})
        event = await asyncio.wait_for(fut, START_TIMEOUT)
        h.pid = int(event["pid"])
        h.url = str(event["info"]["url"])
        h.alive, h.silent = True, False
        h.starts += 1
        self.exits.setdefault(h.pid, asyncio.get_running_loop().create_future())

    async def wait_exit(self, h: NodeHandle) -> None:
        if h.pid is None:
            return
        fut = self.exits.get(h.pid)
        if fut is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(fut), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), STOP_TIMEOUT)

    async def stop(self) -> None:
        if self.proc is None:
            return
        try:
            await super().stop()
        finally:
            proc, self.proc = self.proc, None
            if proc.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    proc.stdin.write(b'{"op": "quit"}\n')
                    await proc.stdin.drain()
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            if self.reader is not None:
                with contextlib.suppress(asyncio.CancelledError, FleetError):
                    await self.reader
            for fut in self.exits.values():
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved, so asyncio does not warn about it


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
                start_new_session=True)
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


class InProcessFleet(Fleet):
    """Every node in this event loop; the driver steps their agents phase by phase."""

    mode = "inproc"
    stepped = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: aiohttp.ClientSession | None = None
        self.running: dict[str, Any] = {}  # name -> node.launch.RunningNode
        self.holes: dict[str, asyncio.Server] = {}

    def start_parallelism(self) -> int:
        return 32

    async def start(self, coordinator_url: str, coordinator_key: str) -> None:
        connector = aiohttp.TCPConnector(limit=256)
        self.session = aiohttp.ClientSession(connector=connector)
        await super().start(coordinator_url, coordinator_key)

    async def start_node(self, h: NodeHandle) -> None:
        from node.launch import NodeSpec, start_node
        from node.strategy import parse_strategy

        assert self.session is not None
        p = h.plan
        files_dir = self.files_dirs.get(p.name)
        spec = NodeSpec(
            coordinator=self.coordinator_url, location=p.location, kind=self.kind,
            capacity=p.capacity, theta=p.theta, strategy=parse_strategy(p.strategy),
            coordinator_key=self.coordinator_key,
            files_dir=None if files_dir is None else str(files_dir),
            session_seconds=self.session_seconds, roam_moves=0, seed=0)
        running = await start_node(spec, Identity.from_seed(p.seed), self.session)
        self.running[p.name] = running
        h.url = running.url
        h.alive, h.silent = True, False
        h.starts += 1

    async def crash(self, name: str) -> None:
        h = self.nodes[name]
        running = self.running.pop(name, None)
        await self._close_hole(name)
        if running is not None:
            await running.stop()
        h.alive = h.silent = False

    async def silence(self, name: str) -> None:
        """Swap the listener for one that accepts connections and never answers."""
        h = self.nodes[name]
        running = self.running.get(name)
        if running is None or h.silent:
            return
        await running.runner.cleanup()
        host, _, port = running.bound.rpartition(":")

        async def hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
            writer.close()

        self.holes[name] = await asyncio.start_server(hole, host, int(port))
        h.silent = True

    async def _close_hole(self, name: str) -> None:
        server = self.holes.pop(name, None)
        if server is not None:
            server.close()
            if hasattr(server, "close_clients"):  # pragma: no cover (3.13)
                server.close_clients()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def resume(self, name: str) -> None:
        from node.launch import wall_clock
        from node.service import make_app, start_site

        h = self.nodes[name]
        running = self.running.get(name)
        if running is None or not h.silent:
            h.silent = False
            return
        await self._close_hole(name)
        host, _, port = running.bound.rpartition(":")
        running.runner, _ = await start_site(make_app(running.host, clock=wall_clock),
                                             host=host, port=int(port))
        h.silent = False

    async def _step_all(self, done: Callable[[Any], bool]) -> None:
        sem = asyncio.Semaphore(64)

        async def one(name: str) -> None:
            agent = self.running[name].agent
            async with sem:
                for _ in range(12):
                    if done(agent):
                        return
                    outcome = await agent.run_epoch_step()
                    if outcome == "waiting":
                        return
        names = [h.plan.name for h in self.live() if h.plan.name in self.running]
        await asyncio.gather(*(one(n) for n in names))

    async def register_phase(self) -> None:
        await self._step_all(lambda a: a.registered)

    async def declare_phase(self, epoch: int) -> None:
        def declared(agent: Any) -> bool:
            cur = agent.current
            return agent.registered and cur is not None and cur.epoch >= epoch and (
                cur.declared_theta is not None or cur.declaration_refused is not None)

        await self._step_all(declared)

    async def provide_phase(self, epoch: int) -> None:
        await self._step_all(
            lambda a: a.current is not None and a.current.epoch >= epoch and a.current.provided)

    async def finish_phase(self, epoch: int) -> None:
        await self._step_all(
            lambda a: a.current is not None and a.current.epoch >= epoch and a.current.reported)

    async def stop(self) -> None:
        for name in list(self.running):
            with contextlib.suppress(Exception):
                await self.crash(name)
        if self.session is not None:
            await self.session.close()
            self.session = None


FLEETS: dict[str, type[Fleet]] = {"process": ZygoteFleet, "exec": ExecFleet,
                                  "inproc": InProcessFleet}


def make_fleet(mode: str, *args: Any, **kwargs: Any) -> Fleet:
    try:
        cls = FLEETS[mode]
    except KeyError:
        raise FleetError(f"unknown node mode {mode!r}; choose from {sorted(FLEETS)}") from None
    return cls(*args, **kwargs)


AsyncFn = Callable[[], Awaitable[None]]
