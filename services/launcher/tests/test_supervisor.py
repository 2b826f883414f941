"""The supervisor on real processes (small Python sleepers standing in for
services): restarts with backoff and one log line each, reset after a
stable run, adoption of running processes, ordered stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from services.launcher.processes import REPO_ROOT, pid_runs
from services.launcher.state import StateFile
from services.launcher.supervisor import RestartPolicy, describe_exit


def test_backoff_doubles_up_to_its_maximum():
    policy = RestartPolicy(initial_seconds=0.5, maximum_seconds=4.0, reset_after_seconds=60)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_exit_descriptions():
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "exit status 2"
    assert describe_exit(None).startswith("exit status unknown")


class Sleepers:
    """A state file of sleeper processes and the supervisor started on it."""

    def __init__(self, tmp_path: Path, names: list[str], **policy: str) -> None:
        self.tmp_path = tmp_path
        self.marker = f"sleeper-{uuid.uuid4().hex[:8]}"
        self.state_file = StateFile(tmp_path / "state.json")
        self.log = tmp_path / "supervisor.log"
        self.state_file.write(
            {
                "base_env": dict(os.environ),
                "processes": [
                    {
                        "name": name,
                        "kind": "metadata" if name != "envoy" else "envoy",
                        "argv": [sys.executable, "-c", "import time; time.sleep(600)", self.marker],
                        "marker": self.marker,
                        "env": {},
                        "log": str(tmp_path / f"{name}.log"),
                        "pid": None,
                    }
                    for name in names
                ],
            }
        )
        self.env = {**os.environ, **{f"COGMENT_MODEL_REGISTRY_{k}": v for k, v in policy.items()}}
        self.supervisor: subprocess.Popen | None = None

    def start_supervisor(self) -> None:
        with open(self.log, "ab") as log:
            self.supervisor = subprocess.Popen(
                [sys.executable, "-m", "services.launcher", "supervise", str(self.state_file.path)],
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )

    def pids(self) -> dict[str, int | None]:
        return {p["name"]: p["pid"] for p in self.state_file.read()["processes"]}

    def wait(self, condition, timeout: float = 10.0, what: str = ""):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            assert time.monotonic() < deadline, what or "timed out"
            time.sleep(0.02)
        return result

    def all_running(self) -> dict[str, int] | None:
        pids = self.pids()
        return pids if all(pid_runs(pid, self.marker) for pid in pids.values()) else None

    def restart_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "restarting in" in line]

    def stop(self) -> int:
        assert self.supervisor is not None
        self.supervisor.send_signal(signal.SIGTERM)
        return self.supervisor.wait(timeout=30)


@pytest.fixture
def sleepers(tmp_path):
    made: list[Sleepers] = []

    def make(names, **policy):  # type: ignore[no-untyped-def]
        made.append(Sleepers(tmp_path, names, **policy))
        return made[-1]

    yield make
    for s in made:
        if s.supervisor is not None and s.supervisor.poll() is None:
            s.stop()
        for pid in s.pids().values():
            if pid_runs(pid, s.marker):
                os.kill(pid, signal.SIGKILL)


def test_a_killed_process_is_restarted_with_growing_delays_and_one_line_each(sleepers):
    s = sleepers(["metadata-0", "blobstore-0"], RESTART_BACKOFF_SECONDS="0.2", RESTART_BACKOFF_MAX_SECONDS="0.8",
                 RESTART_RESET_SECONDS="30")
    s.start_supervisor()
    pids = s.wait(s.all_running, what="the supervisor starts every missing process")
    delays = []
    for round_ in range(4):
        os.kill(pids["metadata-0"], signal.SIGKILL)
        killed_at = time.monotonic()
        pids = s.wait(lambda: (p := s.all_running()) and p["metadata-0"] != pids["metadata-0"] and p)
        delays.append(time.monotonic() - killed_at)
    lines = s.restart_lines()
    assert len(lines) == 4, lines
    assert all("metadata-0" in line and "killed by SIGKILL" in line for line in lines), lines
    assert [line.split("restarting in ")[1].split(" s")[0] for line in lines] == ["0.2", "0.4", "0.8", "0.8"]
    assert delays[2] >= 0.75, delays  # the delay is really waited
    assert s.pids()["blobstore-0"] == pids["blobstore-0"], "the others are left alone"
    assert s.stop() == 0
    assert not any(pid_runs(pid, s.marker) for pid in pids.values()), "SIGTERM to the supervisor stops everything"


def test_backoff_resets_after_a_stable_run(sleepers):
    s = sleepers(["metadata-0"], RESTART_BACKOFF_SECONDS="0.2", RESTART_RESET_SECONDS="1")
    s.start_supervisor()
    pids = s.wait(s.all_running)
    for _ in range(2):
        os.kill(pids["metadata-0"], signal.SIGKILL)
        pids = s.wait(lambda: (p := s.all_running()) and p["metadata-0"] != pids["metadata-0"] and p)
    time.sleep(1.2)  # stays up longer than RESTART_RESET_SECONDS
    os.kill(pids["metadata-0"], signal.SIGKILL)
    s.wait(lambda: len(s.restart_lines()) == 3)
    assert [line.split("restarting in ")[1].split(" s")[0] for line in s.restart_lines()] == ["0.2", "0.4", "0.2"]


def test_a_new_supervisor_adopts_what_runs_and_starts_what_is_missing(sleepers):
    s = sleepers(["metadata-0", "blobstore-0"], RESTART_BACKOFF_SECONDS="0.2")
    s.start_supervisor()
    pids = s.wait(s.all_running)
    s.supervisor.kill()
    s.supervisor.wait()
    os.kill(pids["blobstore-0"], signal.SIGKILL)
    s.start_supervisor()
    now = s.wait(lambda: (p := s.all_running()) and p["blobstore-0"] != pids["blobstore-0"] and p)
    assert now["metadata-0"] == pids["metadata-0"], "a running process is adopted, not started twice"
    assert "metadata-0 already runs" in s.log.read_text()
    # An adopted process that dies is restarted too (its status unknown: not our child).
    os.kill(now["metadata-0"], signal.SIGKILL)
    s.wait(lambda: any("metadata-0" in line and "unknown" in line for line in s.restart_lines()))
    s.wait(s.all_running)


def test_sigusr1_starts_a_process_in_backoff_at_once(sleepers):
    s = sleepers(["metadata-0"], RESTART_BACKOFF_SECONDS="30")
    s.start_supervisor()
    pids = s.wait(s.all_running)
    os.kill(pids["metadata-0"], signal.SIGKILL)
    s.wait(lambda: s.restart_lines())
    time.sleep(0.3)
    assert not s.all_running(), "waits its 30 s backoff"
    s.supervisor.send_signal(signal.SIGUSR1)
    s.wait(s.all_running, timeout=3, what="SIGUSR1 starts it now")


def test_a_process_in_the_middle_of_exec_counts_as_running(tmp_path):
    """Envoy's console script execs the real binary: the PID's command line
    changes (and reads empty for a moment). Neither is an exit."""
    marker = f"exec-{uuid.uuid4().hex[:8]}"
    script = f"import os, sys, time; time.sleep(0.3); os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(5)', '{marker}'])"
    child = subprocess.Popen([sys.executable, "-c", script, marker])
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert pid_runs(child.pid, marker)
        child.kill()
        child.wait()
        assert not pid_runs(child.pid, marker)
    finally:
        child.kill()
        child.wait()


def test_a_zombie_is_not_running():
    child = subprocess.Popen([sys.executable, "-c", "pass", "zombie-marker"])
    deadline = time.monotonic() + 5
    while "\nState:\tZ" not in Path(f"/proc/{child.pid}/status").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not pid_runs(child.pid, "zombie-marker")
    child.wait()
