"""A small terminal progress bar (stderr) shared by pull, load and quantize.

On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints the label once and
a final line, so logs stay readable."""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

ProgressFn = Callable[[float], Optional[bool]]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    """``bar = ProgressBar(total, "extracting"); bar.update(n); bar.close()``.

    ``unit``: "bytes" (``total`` in bytes, shown as MiB and MiB/s), "percent" (``total`` is 100;
    shows the percentage only, and ``close`` says "MESSAGE in 0.4 s") or "count" (a plain count)."""

    def __init__(self, total: float, label: str, *, unit: str = "bytes",
                 stream: Optional[TextIO] = None, width: int = 28):
        self.total = max(float(total), 1.0)
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._closed = False
        if not self.tty:
            self.stream.write(f"{label} ...\n")
            self.stream.flush()

    def _fmt(self, n: float) -> str:
        return human_bytes(n) if self.unit == "bytes" else f"{n:.0f}"

    def update(self, n: float) -> None:
        self.set(self.done + n)

    def set(self, done: float) -> None:
        self.done = min(float(done), self.total)
        now = time.monotonic()
        if self.tty and (now - self._last_draw > 0.1 or self.done >= self.total):
            self._last_draw = now
            frac = self.done / self.total
            filled = int(frac * self.width)
            rate = self.done / max(now - self._t0, 1e-9)
            rate_s = f"{human_bytes(rate)}/s" if self.unit == "bytes" else f"{rate:.1f}/s"
            amounts = "" if self.unit == "percent" else f" {self._fmt(self.done)}/{self._fmt(self.total)} {rate_s}"
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                              f"{frac * 100:5.1f}%{amounts}  ")
            self.stream.flush()

    def close(self, message: str = "done") -> None:
        if self._closed:
            return
        self._closed = True
        secs = time.monotonic() - self._t0
        if self.tty:
            self.stream.write("\n")
        if self.unit == "percent":
            self.stream.write(f"{self.label}: {message} in {secs:.1f} s\n")
        else:
            self.stream.write(f"{self.label}: {message} ({self._fmt(self.done)} in {secs:.1f} s)\n")
        self.stream.flush()
