"""Restarting one process of a running stack the way a supervisor would:
the same command line and environment, its log appended to, the launcher's
state file updated (so `make down` stops the new process). One helper, so
that tests restart services one way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import REPO_ROOT, Stack


def stack_processes(stack: Stack, kind: str) -> list[dict]:
    state = json.loads((stack.run_dir / "state.json").read_text())
    return [p for p in state["processes"] if p["kind"] == kind]


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def kill_process(stack: Stack, name: str, sig: int = signal.SIGKILL) -> tuple[list[str], dict[str, str]]:
    """Sends `sig` to the stack's process `name`, waits until it is gone, and
    returns its command line and environment (to start it again)."""
    (proc,) = [p for p in json.loads((stack.run_dir / "state.json").read_text())["processes"] if p["name"] == name]
    pid = proc["pid"]
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]
    environ = Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    os.kill(pid, sig)
    deadline = time.monotonic() + 20
    while _alive(pid):
        assert time.monotonic() < deadline, f"{name} did not stop"
        time.sleep(0.02)
    return argv, env


def start_process(stack: Stack, name: str, argv: list[str], env: dict[str, str]) -> int:
    """Starts `name` again with `argv` and `env`; returns the new PID."""
    state_path = stack.run_dir / "state.json"
    state = json.loads(state_path.read_text())
    (proc,) = [p for p in state["processes"] if p["name"] == name]
    with open(proc["log"], "ab") as log:
        child = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc["pid"] = child.pid
    state_path.write_text(json.dumps(state, indent=2))
    return child.pid


def restart_process(stack: Stack, name: str, sig: int = signal.SIGKILL) -> int:
    """Kills `name` with `sig` and starts it again at once; the new PID."""
    argv, env = kill_process(stack, name, sig)
    return start_process(stack, name, argv, env)
