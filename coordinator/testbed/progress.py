"""A one-line progress display on stderr (a plain log of phases when not a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self.prefix = ""
        self._last = ""
        self._last_write = 0.0
        #: Called with every status text (the live dashboard shows it).
        self.listener: Callable[[str], None] | None = None

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.t0:6.1f}s"

    def set_prefix(self, prefix: str) -> None:
        self.prefix = prefix

    def update(self, text: str, *, force: bool = False) -> None:
        """Replace the status line (a terminal), or log it (throttled) otherwise."""
        if self.listener is not None:
            self.listener(f"{self.prefix}{text}")
        if not self.enabled:
            return
        line = f"[{self._elapsed()}] {self.prefix}{text}"
        now = time.monotonic()
        if self.tty:
            if force or now - self._last_write > 0.05:
                self.stream.write("\r\x1b[K" + line[:200])
                self.stream.flush()
                self._last_write = now
        elif force:
            self.stream.write(line + "\n")
            self.stream.flush()
        self._last = line

    def phase(self, text: str) -> None:
        self.update(text, force=True)

    def log(self, text: str) -> None:
        """A line that stays (above the status line on a terminal)."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"[{self._elapsed()}] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
