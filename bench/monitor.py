"""Memory and CPU of the server processes while a scenario runs.

`ProcessMonitor` samples `/proc/<pid>/status` VmRSS of each process every
~50 ms in a thread, and reads its CPU time (`/proc/<pid>/stat`) at start and
end: the result says how much each process grew above its idle size, and
which one was busy (a process near 100 % of one core is the bottleneck).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from services.common.config import MIB

SAMPLE_INTERVAL_SECONDS = 0.05
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may contain spaces: split after it.
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


@dataclass(frozen=True)
class ProcessUsage:
    """What one process did during a monitored interval."""

    idle_rss_mib: float
    peak_rss_mib: float
    cpu_percent: float  # of one core, over the interval
    cpu_seconds: float  # user + system, over the interval

    @property
    def rss_growth_mib(self) -> float:
        return self.peak_rss_mib - self.idle_rss_mib


class ProcessMonitor:
    """Context manager: samples the given processes while the block runs;
    `usage` holds the result afterwards."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._idle = {name: rss_bytes(pid) for name, pid in pids.items()}
        self._peak = dict(self._idle)
        self._cpu_start: dict[str, float] = {}
        self._started = 0.0
        self.usage: dict[str, ProcessUsage] = {}

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_SECONDS):
            for name, pid in self._pids.items():
                self._peak[name] = max(self._peak[name], rss_bytes(pid))

    def __enter__(self) -> ProcessMonitor:
        self._cpu_start = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        for name, pid in self._pids.items():
            self._peak[name] = max(self._peak[name], rss_bytes(pid))
            used = cpu_seconds(pid) - self._cpu_start[name]
            self.usage[name] = ProcessUsage(
                idle_rss_mib=self._idle[name] / MIB,
                peak_rss_mib=self._peak[name] / MIB,
                cpu_percent=100.0 * used / elapsed,
                cpu_seconds=used,
            )
