"""Fixtures of the client's tests.

Stack-backed tests get a whole registry, started once per session through
the repository's launcher (`python -m services.launcher up`, what `make up`
runs) on a free port with fresh archive and run directories, stopped with
`down` at the end. Unit tests use no server, or the small scripted fake
below (for what a real stack cannot be made to do on demand, such as
dropping a subscription or sending corrupt bytes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from model_registry_client import RegistryClient
from model_registry_client._proto import pb, pb_grpc
from services.launcher.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]



@dataclass
class Stack:
    """A registry started by the launcher, and how to stop and restart it."""

    env: dict[str, str]
    port: int
    archive_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def launcher(self, command: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "services.launcher", command],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"launcher {command} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("client-stack")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGMENT_MODEL_REGISTRY_", "OTEL_", "MODEL_REGISTRY_"))}
    env.update(
        {
            "COGMENT_MODEL_REGISTRY_PORT": str(port),
            "COGMENT_MODEL_REGISTRY_ARCHIVE_DIR": str(base / "archive"),
            "COGMENT_MODEL_REGISTRY_RUN_DIR": str(base / "run"),
            "COGMENT_MODEL_REGISTRY_PUBLIC_HOST": "127.0.0.1",
            "COGMENT_MODEL_REGISTRY_SHUTDOWN_GRACE_SECONDS": "3",
        }
    )
    running = Stack(env, port, base / "archive")
    running.launcher("up")
    try:
        yield running
    finally:
        running.launcher("down")


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[RegistryClient]:
    with RegistryClient(stack.address, token="") as registry:
        yield registry


@pytest.fixture
def model_id(client: RegistryClient) -> str:
    """A fresh model, unique to the test."""
    name = f"model-{uuid.uuid4().hex[:12]}"
    client.create_model(name, {"owner": "client-tests"})
    return name


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    """32 MiB of random bytes."""
    path = tmp_path / "model.bin"
    with open(path, "wb") as f:
        for _ in range(32):
            f.write(os.urandom(1024 * 1024))
    return path


CliRunner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(stack: Stack) -> CliRunner:
    """Runs `model-registry ARGS…` against the stack (through $MODEL_REGISTRY_ADDRESS)."""

    def run(*args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_REGISTRY_")}
        env["MODEL_REGISTRY_ADDRESS"] = stack.address
        return subprocess.run(
            [sys.executable, "-m", "model_registry_client", *args],
            env=env,
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    return run


# -- a scripted fake registry --------------------------------------------------


@dataclass
class FakeRegistry(pb_grpc.ModelRegistrySPServicer):
    """Answers from scripts the test sets:

    - `subscriptions`: one entry per VersionUpdate call, in order: the version
      numbers to send, then how the stream ends (None: it just ends, or a
      StatusCode to fail with). Past the script, NOT_FOUND.
    - `version`: the info of the only version; `data`: the bytes sent for it
      (possibly not matching the info); `data_error`: a status to fail with
      after the data.
    - `calls`: (method, metadata dict) of every call received;
      `data_requests`: the version numbers RetrieveVersionData was asked for.
    """

    subscriptions: list[tuple[list[int], grpc.StatusCode | None]] = field(default_factory=list)
    version: Any = None
    data: bytes = b""
    data_error: grpc.StatusCode | None = None
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    data_requests: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append((method, dict(context.invocation_metadata())))

    def RetrieveModels(self, request, context):  # noqa: N802
        self._record("RetrieveModels", context)
        return pb.RetrieveModelsReply(model_infos=[pb.ModelInfo(model_id=i) for i in request.model_ids])

    def RetrieveVersionInfos(self, request, context):  # noqa: N802
        self._record("RetrieveVersionInfos", context)
        return pb.RetrieveVersionInfosReply(version_infos=[self.version] if self.version else [])

    def RetrieveVersionData(self, request, context):  # noqa: N802
        self._record("RetrieveVersionData", context)
        self.data_requests.append(request.version_number)
        for start in range(0, len(self.data), 1000):
            yield pb.RetrieveVersionDataReplyChunk(data_chunk=self.data[start : start + 1000])
        if self.data_error is not None:
            context.abort(self.data_error, "scripted failure")

    def VersionUpdate(self, request, context):  # noqa: N802
        self._record("VersionUpdate", context)
        with self._lock:
            script = self.subscriptions.pop(0) if self.subscriptions else ([], grpc.StatusCode.NOT_FOUND)
        numbers, end = script
        for number in numbers:
            yield pb.VersionUpdateReply(version_info=pb.ModelVersionInfo(model_id=request.model_id, version_number=number))
        if end is not None:
            context.abort(end, f"scripted {end.name}")


@dataclass
class ServedFake:
    """A FakeRegistry served on a local port, which it keeps across
    `stop()` and `start()` (a registry that goes away and comes back)."""

    servicer: FakeRegistry = field(default_factory=FakeRegistry)
    port: int = 0  # 0 until the first start: a free port
    _server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_ModelRegistrySPServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port(self.address)
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(None)
            self._server = None


@pytest.fixture
def served_fake() -> Iterator[ServedFake]:
    served = ServedFake()
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def fake(served_fake: ServedFake) -> tuple[FakeRegistry, str]:
    """A FakeRegistry served on a free local port: (servicer, address)."""
    return served_fake.servicer, served_fake.address
