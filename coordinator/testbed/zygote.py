"""A fork server for node processes: ``python -m coordinator.testbed.zygote``.

Starting ``python -m node`` costs about half a second of CPU, almost all of it imports
(aiohttp, cryptography); fifty nodes on two cores would spend most of a minute there.
The zygote imports :mod:`node.cli` once and forks one child per node, each a real,
separate process running ``node.cli.main(argv)`` with its own event loop, sockets and
signals (SIGTERM stops it cleanly; SIGKILL and SIGSTOP work on its pid). It imports no
numpy and starts no thread, so forking it is safe.

The launcher talks to it with JSON lines. On stdin::

    {"op": "spawn", "name": NAME, "argv": [...], "log": PATH}   # stderr goes to PATH
    {"op": "quit"}                                               # or end of input

On stdout: ``{"event": "ready"}`` once, then per child ``{"event": "up", "name", "pid",
"info"}`` when it printed its JSON line (``info``), ``{"event": "exit", "name", "pid",
"rc"}`` when it ended (``rc`` negative: killed by that signal). On quit the children get
SIGTERM, then SIGKILL after five seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
import time
from typing import Any


class Zygote:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, str] = {}
        self.pipes: dict[int, tuple[int, str, bytearray]] = {}  # fd -> (pid, name, buffer)
        self.inbuf = bytearray()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.quitting = False

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def spawn(self, name: str, argv: list[str], log: str) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: become the node
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                os.close(r)
                err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(w, 1)
                os.dup2(err, 2)
                for fd in (null, w, err, self.wake_r, self.wake_w, *self.pipes):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                from node.cli import main

                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(w)
        os.set_blocking(r, False)
        self.children[pid] = name
        self.pipes[r] = (pid, name, bytearray())
        self.sel.register(r, selectors.EVENT_READ, "child")

    def on_child_output(self, fd: int) -> None:
        pid, name, buf = self.pipes[fd]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            buf += chunk
            if b"\n" not in buf:
                return
            line = bytes(buf).split(b"\n", 1)[0]
            try:
                info = json.loads(line)
            except ValueError:
                info = {"raw": line.decode("utf-8", "replace")}
            self.emit({"event": "up", "name": name, "pid": pid, "info": info})
        self.sel.unregister(fd)
        os.close(fd)
        del self.pipes[fd]

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            name = self.children.pop(pid, "?")
            rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            self.emit({"event": "exit", "name": name, "pid": pid, "rc": rc})

    def on_command(self) -> None:
        try:
            chunk = os.read(0, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.quitting = True
            return
        self.inbuf += chunk
        while b"\n" in self.inbuf:
            line, _, rest = bytes(self.inbuf).partition(b"\n")
            self.inbuf = bytearray(rest)
            if not line.strip():
                continue
            cmd = json.loads(line)
            if cmd.get("op") == "spawn":
                self.spawn(str(cmd["name"]), [str(a) for a in cmd["argv"]], str(cmd["log"]))
            elif cmd.get("op") == "quit":
                self.quitting = True

    def stop_children(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)

    def run(self) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when to stop
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.emit({"event": "ready", "pid": os.getpid()})
        try:
            while not self.quitting:
                for key, _ in self.sel.select(timeout=1.0):
                    if key.data == "stdin":
                        self.on_command()
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self.wake_r, 4096)
                    else:
                        self.on_child_output(int(key.fd))
                self.reap()
        finally:
            self.stop_children()
        return 0


def main() -> int:
    import node.cli  # noqa: F401  (the point: import once, before forking)

    return Zygote().run()


if __name__ == "__main__":
    sys.exit(main())
