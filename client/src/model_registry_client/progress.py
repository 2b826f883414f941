"""A one-line progress bar for the terminal: bytes, percentage, rate, ETA."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_MIN_BAR, _MIN_LABEL = 10, 8


def format_bytes(count: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in _UNITS:
        if abs(count) < 1024 or unit == _UNITS[-1]:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """``75`` → ``"1:15"``, ``3725`` → ``"1:02:05"``; unknown → ``"--:--"``."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(label: str, done: int, total: int, elapsed: float, width: int) -> str:
    """The progress line, at most `width` characters."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    fraction = min(done / total, 1.0) if total else 1.0
    # Fixed-width fields, so that the bar does not jump as the numbers grow.
    stats = (
        f" {fraction:4.0%} {format_bytes(done):>9}/{format_bytes(total)}"
        f" {format_bytes(rate):>9}/s ETA {format_duration(eta):>5}"
    )
    room = width - len(stats) - 3  # " [" and "]"
    if room - len(label) < _MIN_BAR:
        if room < _MIN_BAR + _MIN_LABEL:
            return (label + stats)[:width]
        label = label[: room - _MIN_BAR - 1] + "…"
    bar_width = room - len(label)
    filled = int(fraction * bar_width)
    return f"{label} [{'#' * filled}{'.' * (bar_width - filled)}]{stats}"


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to (80 if unknown)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns if columns > 0 else shutil.get_terminal_size((80, 24)).columns


class ProgressBar:
    """A `progress(done, total)` callback that redraws one line of `stream`,
    at most every `interval` seconds (and always at the end)."""

    def __init__(
        self,
        label: str,
        stream: TextIO = sys.stderr,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.stream, self.interval, self.clock = label, stream, interval, clock
        self._start = clock()
        self._last_draw = float("-inf")
        self._drawn = False
        self._state = (0, 0)

    def __call__(self, done: int, total: int) -> None:
        self._state = (done, total)
        now = self.clock()
        if done >= total or now - self._last_draw >= self.interval:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        width = max(terminal_columns(self.stream) - 1, 20)
        line = render(self.label, *self._state, now - self._start, width)
        self.stream.write("\r" + line.ljust(width))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Ends the line (after a last redraw), if anything was drawn."""
        if self._drawn:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
