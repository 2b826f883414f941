"""Starting, recognising and stopping the processes of a local stack, by PID.

One decision lives here: whether a recorded PID still runs our process.
A PID is ours while it is alive, not a zombie, and its command line holds
the marker it was started with (PIDs get reused). An empty command line on
a live process is read as "ours": the kernel shows one while a process
execs (Envoy's console script, which the launcher once started, execs the
real binary right after start), and concluding "it exited" in that window
made `make up` fail with an empty log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Stop order: frontends drain first (while Envoy and the internal services
# still serve them), then metadata and blobstores, then Envoy.
STOP_STAGES = {"frontend": 0, "metadata": 1, "blobstore": 1, "envoy": 2}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_runs(pid: int | None, marker: str) -> bool:
    """True if `pid` is alive, not a zombie, and still runs our command."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return pid_alive(pid)
    try:
        status = (proc / "status").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    if "\nState:\tZ" in status or "\nState:\tX" in status:
        return False
    if not cmdline:
        return True  # exec in progress (see the module docstring)
    return marker in cmdline.replace(b"\0", b" ").decode(errors="replace")


def spawn(proc: dict, env: dict[str, str]) -> subprocess.Popen:
    """Starts one recorded process, its output appended to its log."""
    with open(proc["log"], "ab") as log:
        return subprocess.Popen(
            proc["argv"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
        )


def reap(pid: int, block: bool = False) -> None:
    """Collects our own exited children so they do not linger as zombies."""
    try:
        os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        pass


def stop_in_order(processes: list[dict], grace_seconds: float) -> list[str]:
    """SIGTERM by stage (STOP_STAGES), SIGKILL what outlives the grace
    period; returns the names of those that were running."""
    stopped: list[str] = []
    for stage in sorted(set(STOP_STAGES.values())):
        group = [p for p in processes if STOP_STAGES[p["kind"]] == stage and pid_runs(p.get("pid"), p["marker"])]
        for proc in group:
            _signal(proc["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds + 5
        for proc in group:
            while pid_runs(proc["pid"], proc["marker"]) and time.monotonic() < deadline:
                reap(proc["pid"])
                time.sleep(0.05)
            if pid_runs(proc["pid"], proc["marker"]):
                _signal(proc["pid"], signal.SIGKILL)
                while pid_runs(proc["pid"], proc["marker"]):
                    reap(proc["pid"])
                    time.sleep(0.02)
            reap(proc["pid"])
            stopped.append(proc["name"])
    return stopped


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
