"""Many nodes behind one pipe: ``python -m node.fleet --mode inproc|process``.

The testbed launches this runner as a process and talks to it in JSON lines over its
stdin and stdout, so the launcher never imports ``node``. Every node is configured with
the very arguments of ``inkind-node`` (parsed by :mod:`node.cli`), so a node behaves the
same however it is hosted:

* ``--mode inproc``: every node in this process and event loop, each with its own
  listener on 127.0.0.1; their agents do nothing until stepped (``step``), so one
  process holds thousands of nodes and the launcher decides when each phase happens.
  They share one HTTP session and one :class:`node.client.SharedDocuments`: an epoch's
  allocation and directory are fetched, verified and parsed once for the whole process;
* ``--mode process``: every node its own process running ``node.cli.main(argv)``,
  forked by the standard library's forkserver after it imported :mod:`node.cli` once
  (``set_forkserver_preload``): real processes (SIGKILL and SIGSTOP work on their pids)
  that start in milliseconds instead of half a second of imports each.

Commands (one JSON object per line; ``id``, if given, is echoed in the answer)::

    {"op": "start", "name": N, "argv": [inkind-node arguments], "log": PATH}
        -> {"event": "up", "name": N, "url": URL, "pid": PID}
    {"op": "step", "phase": "register" | "declare" | "provide" | "finish"}   (inproc)
        -> {"event": "stepped", "phase": P, "outcomes": {N: last outcome}}
    {"op": "crash" | "silence" | "resume", "name": N} -> {"event": "done", "op", "name"}
    {"op": "quit"}   (or end of input): stop every node, then exit 0

A command that fails is answered ``{"event": "error", "name", "message"}``. Unprompted:
``{"event": "ready", "mode", "pid"}`` once, and in process mode ``{"event": "exit",
"name", "pid", "rc"}`` when a node process ends (``rc`` < 0: killed by that signal).

Nothing outlives the launcher: it starts this runner with ``PR_SET_PDEATHSIG`` set (the
kernel kills the runner when the launcher dies), the forkserver exits when the runner
does, and each node process asks the kernel the same of the forkserver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

import aiohttp

log = logging.getLogger("inkind.node.fleet")

#: The step outcome (:meth:`node.agent.Agent.run_epoch_step`) each phase waits for.
PHASES = {"register": "registered", "declare": "declared", "provide": "provided",
          "finish": "reported"}
#: Steps one node may take in one phase (a phase is at most a handful of steps; this
#: bounds a node that keeps failing).
MAX_STEPS = 12
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux); if the
    parent is already gone (we were reparented to init), exit now."""
    expected = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if expected == 1 or os.getppid() != expected:
        os._exit(1)


class _LineSender:
    """A text stream whose lines go to a multiprocessing connection (a node process's
    stdout: its one JSON line when it listens)."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.buf = ""

    def write(self, text: str) -> int:
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            with contextlib.suppress(OSError):
                self.conn.send_bytes(line.encode())
        return len(text)

    def flush(self) -> None:
        return None


def _node_process(argv: list[str], log_path: str,
                  conn: multiprocessing.connection.Connection) -> None:
    """A forked node process: stderr to its log, stdout to the runner, then the CLI."""
    die_with_parent()  # the forkserver, which exits with the runner
    # Keep only stdio and the pipe to the runner. The forkserver hands each child its
    # "alive" pipe, and stays up as long as any holder lives: held here, a node would
    # keep the forkserver alive, and the forkserver the node, after the runner died.
    keep = conn.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    err = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(err, 2)
    os.close(err)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stdout = _LineSender(conn)
    from node.cli import main

    sys.exit(main(argv))


class Runner:
    def __init__(self, mode: str, out: TextIO) -> None:
        self.mode = mode
        self.out = out
        self.session: aiohttp.ClientSession | None = None
        self.running: dict[str, Any] = {}  # inproc: name -> node.launch.RunningNode
        self.silenced: dict[str, asyncio.Server] = {}
        self.procs: dict[str, multiprocessing.process.BaseProcess] = {}
        self.ctx: Any = None
        self.outcomes: dict[str, str] = {}
        self.documents: Any = None  # inproc: node.client.SharedDocuments, made on first use
        self.parser: argparse.ArgumentParser | None = None  # inproc: inkind-node's arguments

    def emit(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    # --- starting a node ------------------------------------------------------------------

    async def start(self, name: str, argv: list[str], log_path: str) -> dict[str, Any]:
        if name in self.running or name in self.procs:
            raise ValueError(f"node {name} is already running")
        if self.mode == "inproc":
            return await self._start_inproc(name, argv)
        return await self._start_process(name, argv, log_path)

    async def _start_inproc(self, name: str, argv: list[str]) -> dict[str, Any]:
        from node.cli import build_parser, key_path, load_or_create_key, spec_from_args
        from node.client import SharedDocuments
        from node.launch import start_node

        if self.parser is None:  # built once: thousands of nodes parse their arguments
            self.parser = build_parser()
        args = self.parser.parse_args(argv)
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
            self.documents = SharedDocuments()
        node = await start_node(spec_from_args(args), load_or_create_key(key_path(args)),
                                self.session, documents=self.documents)
        self.running[name] = node
        return {"url": node.url, "pid": os.getpid()}

    async def _start_process(self, name: str, argv: list[str], log_path: str) -> dict[str, Any]:
        if self.ctx is None:
            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(["node.cli"])
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_node_process, name=f"inkind-node {name}",
                                args=(argv, log_path, send))
        await asyncio.to_thread(proc.start)
        send.close()
        self.procs[name] = proc
        loop = asyncio.get_running_loop()
        loop.add_reader(proc.sentinel, self._reaped, name, proc)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(recv.recv_bytes), 120.0)
        except (EOFError, OSError, TimeoutError):
            raise RuntimeError(f"node {name} exited before it listened (see its log)") from None
        finally:
            recv.close()
        info = json.loads(line)
        return {"url": str(info["url"]), "pid": proc.pid}

    def _reaped(self, name: str, proc: multiprocessing.process.BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(proc.sentinel)
        proc.join(0)
        if self.procs.get(name) is proc:
            del self.procs[name]
        self.emit({"event": "exit", "name": name, "pid": proc.pid, "rc": proc.exitcode})

    # --- stepping in-process agents --------------------------------------------------------

    async def step(self, phase: str) -> dict[str, str]:
        """Step every in-process node until it reaches the phase's outcome, has nothing
        to do (``waiting``) or failed (``error``, logged by the agent)."""
        if self.mode != "inproc":
            raise ValueError("nodes in their own processes step themselves")
        target = PHASES[phase]
        sem = asyncio.Semaphore(64)
        out: dict[str, str] = {}

        async def one(name: str) -> None:
            agent = self.running[name].agent
            outcome = "waiting"
            async with sem:
                for _ in range(MAX_STEPS):
                    outcome = await agent.run_epoch_step()
                    if outcome in (target, "waiting", "error"):
                        break
            out[name] = outcome

        names = [n for n in self.running if n not in self.silenced]
        await asyncio.gather(*(one(n) for n in names))
        return out

    # --- faults ------------------------------------------------------------------------------

    async def crash(self, name: str) -> None:
        if name in self.procs:
            os.kill(self.procs[name].pid or 0, signal.SIGKILL)
            return
        await self._close_hole(name)
        node = self.running.pop(name, None)
        if node is not None:
            await node.stop()

    async def silence(self, name: str) -> None:
        """Stop answering and keep the port: SIGSTOP a process; in process, swap the
        listener for one that accepts connections and never answers."""
        if name in self.procs:
            os.kill(self.procs[name].pid or 0, signal.SIGSTOP)
            return
        node = self.running[name]
        if name in self.silenced:
            return
        await node.runner.cleanup()
        host, _, port = node.bound.rpartition(":")

        async def hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
            writer.close()

        self.silenced[name] = await asyncio.start_server(hole, host, int(port))

    async def resume(self, name: str) -> None:
        if name in self.procs:
            os.kill(self.procs[name].pid or 0, signal.SIGCONT)
            return
        if name not in self.silenced:
            return
        from node.launch import wall_clock
        from node.service import make_app, start_site

        await self._close_hole(name)
        node = self.running[name]
        host, _, port = node.bound.rpartition(":")
        node.runner, _ = await start_site(make_app(node.host, clock=wall_clock),
                                          host=host, port=int(port))

    async def _close_hole(self, name: str) -> None:
        server = self.silenced.pop(name, None)
        if server is not None:
            server.close()
            if hasattr(server, "close_clients"):  # pragma: no cover (3.13)
                server.close_clients()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def stop(self) -> None:
        for name in list(self.running):
            with contextlib.suppress(Exception):
                await self.crash(name)
        procs = list(self.procs.items())
        for _, proc in procs:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(proc.pid or 0, signal.SIGCONT)
                os.kill(proc.pid or 0, signal.SIGTERM)
        for _, proc in procs:
            await asyncio.to_thread(proc.join, 10.0)
            if proc.exitcode is None:
                proc.kill()
                await asyncio.to_thread(proc.join, 5.0)
        if self.session is not None:
            await self.session.close()
            self.session = None

    # --- the command loop ----------------------------------------------------------------------

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        name = str(cmd.get("name", ""))
        answer: dict[str, Any]
        if op == "start":
            info = await self.start(name, [str(a) for a in cmd["argv"]], str(cmd["log"]))
            answer = {"event": "up", "name": name, **info}
        elif op == "step":
            outcomes = await self.step(str(cmd["phase"]))
            answer = {"event": "stepped", "phase": cmd["phase"], "outcomes": outcomes}
        elif op in ("crash", "silence", "resume"):
            fault: Callable[[str], Any] = getattr(self, str(op))
            await fault(name)
            answer = {"event": "done", "op": op, "name": name}
        else:
            raise ValueError(f"unknown op {op!r}")
        if "id" in cmd:
            answer["id"] = cmd["id"]
        return answer

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.emit({"event": "ready", "mode": self.mode, "pid": os.getpid()})
        tasks: set[asyncio.Task[None]] = set()

        async def run(cmd: dict[str, Any]) -> None:
            try:
                self.emit(await self.handle(cmd))
            except Exception as exc:  # every failure is answered, none ends the runner
                log.warning("%s failed: %r", cmd.get("op"), exc)
                self.emit({"event": "error", "name": cmd.get("name"), "id": cmd.get("id"),
                           "message": str(exc) or repr(exc)})

        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                cmd = json.loads(line)
                if cmd.get("op") == "quit":
                    break
                task = asyncio.create_task(run(cmd))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m node.fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("inproc", "process"), default="inproc")
    p.add_argument("--log-level", default="WARNING", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when to stop
    return asyncio.run(Runner(args.mode, sys.stdout).serve())


if __name__ == "__main__":
    sys.exit(main())
