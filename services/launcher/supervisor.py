"""The supervisor of a local stack: it starts every service process recorded
in the stack's state file that is not running, restarts one that exits with
exponential backoff, and stops them all, in order, when told to (SIGTERM).

`make up` runs it detached (`python -m services.launcher supervise <state
file>`, log in `<run dir>/supervisor.log`); `make run` runs the same process
in the foreground's terminal. It is the parent of the processes it starts,
so it learns their exit status from the kernel (waitpid), never by reading
/proc/<pid>/cmdline, which changes while a process execs (Envoy's console
script execs the real binary right after start). Processes it finds already
running (a supervisor killed and started again by `make up`) are adopted
and watched through /proc instead; their exit status is unknown to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from services.launcher import processes as procs
from services.launcher.state import StateFile


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts of one process: `initial`, then
    doubled per consecutive exit up to `maximum`; a process that stayed up
    `reset_after` seconds starts again from `initial`."""

    initial_seconds: float
    maximum_seconds: float
    reset_after_seconds: float

    def delay(self, consecutive_exits: int) -> float:
        return min(self.maximum_seconds, self.initial_seconds * 2 ** max(0, consecutive_exits - 1))


def describe_exit(returncode: int | None) -> str:
    """`exit status 1`, `killed by SIGKILL`, or `exit status unknown`."""
    if returncode is None:
        return "exit status unknown (adopted process)"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class _Watched:
    """What the supervisor knows of one process of the stack."""

    name: str
    child: subprocess.Popen | None = None  # None: adopted (not our child) or not running
    adopted_pid: int | None = None
    started_at: float = 0.0
    consecutive_exits: int = 0
    restart_at: float | None = None  # when the next start is due, while it is down


class Supervisor:
    """Keeps every process of one stack running (see the module docstring)."""

    def __init__(
        self,
        state_file: StateFile,
        policy: RestartPolicy,
        *,
        shutdown_grace_seconds: float,
        log: Callable[[str], None] | None = None,
        poll_seconds: float = 0.1,
    ) -> None:
        self.state_file = state_file
        self.policy = policy
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.poll_seconds = poll_seconds
        self._log = log or _log_to_stderr
        self._stopping = False
        self._start_now = False
        self._watched: dict[str, _Watched] = {}

    def request_stop(self, signum: int = 0, frame: object = None) -> None:
        self._stopping = True

    def request_start_now(self, signum: int = 0, frame: object = None) -> None:
        """SIGUSR1 (`make up` on a supervised stack, `launcher restart`):
        start whatever is down now; every backoff starts again from the
        initial delay."""
        self._start_now = True

    def run(self) -> None:
        """Supervises until SIGTERM/SIGINT, then stops every process in order."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGUSR1, self.request_start_now)
        state = self.state_file.read()
        if state is None:
            raise RuntimeError(f"no stack state in {self.state_file.path}")
        state["supervisor"] = {"pid": os.getpid(), "marker": str(self.state_file.path), "log": state.get("supervisor_log")}
        now = time.monotonic()
        for proc in state["processes"]:
            watched = _Watched(proc["name"])
            if proc.get("pid") and procs.pid_runs(proc["pid"], proc["marker"]):
                watched.adopted_pid = proc["pid"]
                watched.started_at = now
                self._log(f"{proc['name']} already runs (pid {proc['pid']}): adopted")
            else:
                watched.restart_at = now  # missing: start it at once
            self._watched[proc["name"]] = watched
        self.state_file.write(state)
        try:
            while not self._stopping:
                self._tick(state)
                time.sleep(self.poll_seconds)
        finally:
            self._stop_all(state)

    # -- one pass -------------------------------------------------------

    def _tick(self, state: dict) -> None:
        changed = False
        now = time.monotonic()
        if self._start_now:
            # An operator's `make up`: start what is down now, forget past exits.
            self._start_now = False
            for watched in self._watched.values():
                watched.consecutive_exits = 0
                if watched.restart_at is not None:
                    watched.restart_at = now
        for proc in state["processes"]:
            watched = self._watched[proc["name"]]
            if watched.restart_at is None:
                returncode = self._exited(watched, proc)
                if returncode is False:
                    continue
                up_for = now - watched.started_at
                if up_for >= self.policy.reset_after_seconds:
                    watched.consecutive_exits = 0
                watched.consecutive_exits += 1
                delay = self.policy.delay(watched.consecutive_exits)
                watched.restart_at = now + delay
                watched.child = None
                watched.adopted_pid = None
                status = describe_exit(returncode)  # type: ignore[arg-type]
                self._log(
                    f"{proc['name']} (pid {proc['pid']}) exited, {status}, after {up_for:.1f} s up; "
                    f"restarting in {delay:.1f} s (restart {proc.get('restarts', 0) + 1})"
                )
                proc["pid"] = None
                # Every exit counts (what `up` and `restart` wait on); the last few are described.
                proc["exit_count"] = proc.get("exit_count", 0) + 1
                proc["exits"] = [*proc.get("exits", []), status][-5:]
                changed = True
            elif now >= watched.restart_at:
                self._start(proc, state, watched)
                changed = True
        if changed:
            self.state_file.write(state)

    def _exited(self, watched: _Watched, proc: dict) -> int | None | bool:
        """False while it runs; its return code (None: unknown) once it exited."""
        if watched.child is not None:
            returncode = watched.child.poll()
            return False if returncode is None else returncode
        if watched.adopted_pid is not None and procs.pid_runs(watched.adopted_pid, proc["marker"]):
            return False
        return None

    def _start(self, proc: dict, state: dict, watched: _Watched) -> None:
        if watched.started_at:  # it ran under this supervisor and exited: a restart
            proc["restarts"] = proc.get("restarts", 0) + 1
        watched.child = procs.spawn(proc, {**state["base_env"], **proc["env"]})
        watched.started_at = time.monotonic()
        watched.restart_at = None
        proc["pid"] = watched.child.pid

    # -- stop -----------------------------------------------------------

    def _stop_all(self, state: dict) -> None:
        running = []
        for proc in state["processes"]:
            watched = self._watched.get(proc["name"])
            if watched is not None and (watched.child is not None or watched.adopted_pid is not None):
                running.append(proc)
        procs.stop_in_order(running, self.shutdown_grace_seconds)
        for proc in state["processes"]:
            proc["pid"] = None
        state.pop("supervisor", None)
        self.state_file.write(state)


def _log_to_stderr(message: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    print(f"{stamp} supervisor: {message}", file=sys.stderr, flush=True)


def main(state_path: str, policy: RestartPolicy, shutdown_grace_seconds: float) -> int:
    Supervisor(StateFile(Path(state_path)), policy, shutdown_grace_seconds=shutdown_grace_seconds).run()
    return 0
