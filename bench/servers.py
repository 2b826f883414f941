"""The two servers under test, started as subprocesses on free ports.

- `RegistryStack`: the real stack, through `make up`'s code path
  (`python -m services.launcher up` / `down`), with its own port, archive
  dir and run dir; the PIDs of its processes come from the run dir's
  `state.json`. Tracing is off unless a collector is given, metrics on
  unless turned off (the on vs off scenarios start a second stack so).
- `IdealServer`: `python -m bench.ideal` (see `bench/ideal.py`).

Both are context managers that stop what they started, even on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc

from bench.ideal import SENT_CHUNK_SIZE
from services.common.config import GIB
from services.common.metrics import METRICS_OFF, METRICS_PORT_VARIABLE
from services.launcher.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_TIMEOUT_SECONDS = 180


class ServerError(RuntimeError):
    """A server under test could not be started or stopped."""



def _python_env() -> dict[str, str]:
    """This environment without registry or tracing settings, with the
    repository and its stubs importable (as `make` arranges)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGMENT_MODEL_REGISTRY_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), str(REPO_ROOT / "gen"), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def stack_settings(largest_transfer: int) -> dict[str, str]:
    """Registry settings for the benchmark: a transient budget that admits
    the largest transfer several times over (so a 1 GiB transient version
    fits), and download chunks of the ideal's size."""
    cache_max_bytes = max(2 * GIB, 3 * largest_transfer)
    return {
        "COGMENT_MODEL_REGISTRY_VERSION_CACHE_MAX_BYTES": str(cache_max_bytes),
        "COGMENT_MODEL_REGISTRY_BLOBSTORE_MEMORY_MAX_BYTES": str(2 * cache_max_bytes),
        "COGMENT_MODEL_REGISTRY_SENT_MODEL_VERSION_DATA_CHUNK_SIZE": str(SENT_CHUNK_SIZE),
        "COGMENT_MODEL_REGISTRY_SHUTDOWN_GRACE_SECONDS": "3",
        "COGMENT_MODEL_REGISTRY_PUBLIC_HOST": "127.0.0.1",
    }


class RegistryStack:
    """The whole registry (Envoy, frontend, metadata, blobstore) on a free port."""

    def __init__(
        self, work_dir: Path, settings: dict[str, str], *, tracing_endpoint: str | None = None, metrics: bool = True
    ) -> None:
        """`tracing_endpoint` (an OTLP/gRPC collector URL) turns tracing on in
        every process, as `OTEL_EXPORTER_OTLP_ENDPOINT` does for `make up`;
        `metrics` false turns metrics off, as METRICS_PORT=0 does."""
        self.port = free_port()
        self.archive_dir = work_dir / "archive"
        self.run_dir = work_dir / "run"
        self.settings = settings
        self.env = {
            **_python_env(),
            "COGMENT_MODEL_REGISTRY_PORT": str(self.port),
            "COGMENT_MODEL_REGISTRY_ARCHIVE_DIR": str(self.archive_dir),
            "COGMENT_MODEL_REGISTRY_RUN_DIR": str(self.run_dir),
            **settings,
        }
        if tracing_endpoint is not None:
            self.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = tracing_endpoint
        if not metrics:
            self.env[METRICS_PORT_VARIABLE] = str(METRICS_OFF)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _launcher(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.launcher", command],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=LAUNCHER_TIMEOUT_SECONDS,
        )

    def process_pids(self) -> dict[str, int]:
        """PID of each process of the stack, by name (envoy, frontend-0, …)."""
        state = json.loads((self.run_dir / "state.json").read_text())
        return {proc["name"]: proc["pid"] for proc in state["processes"]}

    def __enter__(self) -> RegistryStack:
        try:
            result = self._launcher("up")
        except BaseException:
            self._launcher("down")
            raise
        if result.returncode != 0:
            self._launcher("down")
            raise ServerError(f"`python -m services.launcher up` failed:\n{result.stdout}{result.stderr}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        result = self._launcher("down")
        if result.returncode != 0 and exc is None:
            raise ServerError(f"`python -m services.launcher down` failed:\n{result.stdout}{result.stderr}")


class IdealServer:
    """`bench.ideal` in its own process on a free port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> IdealServer:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.ideal", "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=_python_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(timeout=30.0)
        except BaseException:
            self._stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise ServerError(f"the ideal server exited at start-up (log: {self.log_path})")
                try:
                    grpc.channel_ready_future(channel).result(timeout=0.5)
                    return
                except grpc.FutureTimeoutError:
                    if time.monotonic() > deadline:
                        raise ServerError(f"the ideal server did not listen within {timeout:.0f}s") from None

    def _stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop()
