"""How the launcher tells that a process it started still runs (a zombie's
and a process mid-exec's cases are in test_supervisor.py), and which Envoy
executable it starts."""

from __future__ import annotations

import subprocess
import sys
import time

from services.launcher.processes import pid_runs as _pid_runs
from services.launcher.stack import envoy_binary


def test_a_running_process_with_its_marker_runs():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-1234"])
    try:
        assert _pid_runs(child.pid, "marker-1234")
        # Right after Popen returns the kernel may not have set up the new
        # command line yet (it reads empty: "ours, mid-exec"); once it has,
        # another marker is not ours.
        deadline = time.monotonic() + 5
        while not open(f"/proc/{child.pid}/cmdline", "rb").read():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _pid_runs(child.pid, "marker-1234")
        assert not _pid_runs(child.pid, "another-marker")
    finally:
        child.kill()
        child.wait()


def test_envoy_is_started_as_the_binary_itself():
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0
    assert "envoy" in version.stdout.lower()
    assert not envoy_binary().endswith("/bin/envoy"), "the console script exec's the binary: start the binary"
