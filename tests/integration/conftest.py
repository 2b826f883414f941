"""The whole stack, started once per test session through the same code path
as `make up` (`python -m services.launcher up`), on free ports and a fresh
archive dir; every call goes through Envoy's public port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc
from services.launcher.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

# Small enough that tests see eviction and chunking, big enough for 64 MiB.
CACHE_MAX_ITEMS = 10
SENT_CHUNK_SIZE = 1024 * 1024
MESSAGE_LIMIT = 32 * 1024 * 1024



@dataclass
class Stack:
    """A running stack and how to drive it like `make up` / `make down`."""

    env: dict[str, str]
    port: int
    archive_dir: Path
    run_dir: Path
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def launcher(self, command: str, *targets: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.launcher", command, *targets],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def up(self) -> None:
        result = self.launcher("up")
        assert result.returncode == 0, f"make up failed:\n{result.stdout}\n{result.stderr}"

    def down(self) -> None:
        result = self.launcher("down")
        assert result.returncode == 0, f"make down failed:\n{result.stdout}\n{result.stderr}"

    def restart(self, *targets: str) -> None:
        """Restarts processes (names like `metadata-0`, or kinds) through the
        stack's supervisor, and returns once the stack is healthy again: a
        test never restarts a service behind the supervisor's back."""
        result = self.launcher("restart", *targets)
        assert result.returncode == 0, f"restart failed:\n{result.stdout}\n{result.stderr}"

    def kill(self, name: str, signum: int = signal.SIGKILL, timeout: float = 30) -> int:
        """Sends `signum` to the process `name` (e.g. `blobstore-0`) and waits
        until the supervisor runs it again under a new PID, which it returns
        (after its first restart delay; the stack may not be healthy yet:
        `up()` waits for that)."""
        from services.launcher.processes import pid_runs

        (old,) = [p for p in self.processes() if p["name"] == name]
        os.kill(old["pid"], signum)
        deadline = time.monotonic() + timeout
        while True:
            (now,) = [p for p in self.processes() if p["name"] == name]
            if now["pid"] and now["pid"] != old["pid"] and pid_runs(now["pid"], now["marker"]):
                return now["pid"]
            assert time.monotonic() < deadline, f"the supervisor did not restart {name}"
            time.sleep(0.05)

    def processes(self, kind: str | None = None) -> list[dict]:
        """The stack's processes as its state file records them (PIDs change on restarts)."""
        state = json.loads((self.run_dir / "state.json").read_text())
        return [p for p in state["processes"] if kind is None or p["kind"] == kind]

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", MESSAGE_LIMIT),
                ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ],
        )
        self.channels.append(channel)
        return channel


# `make test` runs this suite twice: on the default shape (one process each,
# SQLite, local archive) and on the production shape (REGISTRY_TEST_SHAPE=replicated).
SHAPE = os.environ.get("REGISTRY_TEST_SHAPE", "single")
REPLICATED = SHAPE == "replicated"
# For a test whose subject is the same on both shapes (a timer of the
# frontend or of Envoy, whichever replica answers) and which mostly waits:
# once is enough, and `make test` stays under 10 minutes.
single_shape_only = pytest.mark.skipif(REPLICATED, reason="shape-independent timers: run once, on the single shape")


POSTGRES_URL = os.environ.get("REGISTRY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_schemas: list[str] = []


def fresh_postgres_schema() -> str:
    """A metadata URL on a new, empty schema of the test database (dropped at exit)."""
    import psycopg

    schema = f"it_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    _schemas.append(schema)
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


def drop_postgres_schemas() -> None:
    if not _schemas:
        return
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        for schema in _schemas:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    _schemas.clear()


class S3Server:
    """A real S3-compatible server (moto's) on loopback, for the whole session."""

    BUCKET = "registry-tests"
    _server = None

    @classmethod
    def env(cls) -> dict[str, str]:
        if cls._server is None:
            import boto3
            from moto.server import ThreadedMotoServer

            cls._server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
            cls._server.start()
            cls._endpoint = f"http://127.0.0.1:{cls._server._port}"
            boto3.client("s3", endpoint_url=cls._endpoint, **cls._credentials()).create_bucket(Bucket=cls.BUCKET)
        return {
            "AWS_ENDPOINT_URL": cls._endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            # A prefix per stack: stacks share the bucket, never their blobs.
            "COGMENT_MODEL_REGISTRY_ARCHIVE_URL": f"s3://{cls.BUCKET}/{uuid.uuid4().hex[:12]}",
        }

    @staticmethod
    def _credentials() -> dict[str, str]:
        return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}

    @classmethod
    def stop(cls) -> None:
        if cls._server is not None:
            cls._server.stop()
            cls._server = None


def shape_env() -> dict[str, str]:
    """Launcher settings of the shape under test: one process each on SQLite
    and the local archive dir, or the production shape (3 blobstores,
    2 frontends, 2 metadata on PostgreSQL, archive on S3)."""
    if not REPLICATED:
        return {"BLOBSTORE_REPLICAS": "1", "FRONTEND_REPLICAS": "1", "METADATA_REPLICAS": "1"}
    return {
        "BLOBSTORE_REPLICAS": "3",
        "FRONTEND_REPLICAS": "2",
        "METADATA_REPLICAS": "2",
        "COGMENT_MODEL_REGISTRY_METADATA_URL": fresh_postgres_schema(),
        **S3Server.env(),
    }


def stack_env(port: int, archive_dir: Path, run_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COGMENT_MODEL_REGISTRY_", "OTEL_", "AWS_")) and not k.endswith("_REPLICAS")
    }
    env.update(
        {
            "COGMENT_MODEL_REGISTRY_PORT": str(port),
            "COGMENT_MODEL_REGISTRY_ARCHIVE_DIR": str(archive_dir),
            "COGMENT_MODEL_REGISTRY_RUN_DIR": str(run_dir),
            "COGMENT_MODEL_REGISTRY_PUBLIC_HOST": "127.0.0.1",
            "COGMENT_MODEL_REGISTRY_VERSION_CACHE_MAX_ITEMS": str(CACHE_MAX_ITEMS),
            "COGMENT_MODEL_REGISTRY_SENT_MODEL_VERSION_DATA_CHUNK_SIZE": str(SENT_CHUNK_SIZE),
            "COGMENT_MODEL_REGISTRY_GRPC_REFLECTION": "1",
            "COGMENT_MODEL_REGISTRY_SHUTDOWN_GRACE_SECONDS": "10",
        }
    )
    env.update(shape_env())
    env.update(extra)
    return env


def stack_under(base: Path, *, archive_dir: Path | None = None, **extra: str) -> Stack:
    """A stack, not started, on a free port: the shape under test's
    settings plus `extra`, its run directory (and archive, unless given)
    under `base`."""
    port = free_port()
    archive_dir = archive_dir or base / "archive"
    return Stack(stack_env(port, archive_dir, base / "run", **extra), port, archive_dir, base / "run")


@contextlib.contextmanager
def running_stack(base: Path, **extra: str) -> Iterator[Stack]:
    """`stack_under(base, **extra)`, up for the block (`make up`), then
    its channels closed and the stack down (`make down`)."""
    running = stack_under(base, **extra)
    running.up()
    try:
        yield running
    finally:
        for channel in running.channels:
            channel.close()
        running.down()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        with running_stack(tmp_path_factory.mktemp("stack")) as running:
            yield running
    finally:
        drop_postgres_schemas()
        S3Server.stop()


@pytest.fixture(scope="session")
def registry(stack: Stack) -> api_grpc.ModelRegistrySPStub:
    return api_grpc.ModelRegistrySPStub(stack.channel())


@pytest.fixture
def model_id(registry: api_grpc.ModelRegistrySPStub) -> str:
    """A fresh model, unique to the test."""
    name = f"model-{uuid.uuid4().hex[:12]}"
    registry.CreateOrUpdateModel(
        api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=name, user_data={"owner": "tests"}))
    )
    return name


def version_chunks(
    model_id: str,
    data: bytes,
    *,
    archived: bool = False,
    chunk_size: int = 1024 * 1024,
    data_size: int | None = None,
    data_hash: str = "",
    user_data: dict[str, str] | None = None,
    creation_timestamp: int = 0,
) -> Iterator[api.CreateVersionRequestChunk]:
    yield api.CreateVersionRequestChunk(
        header=api.CreateVersionRequestChunk.Header(
            version_info=api.ModelVersionInfo(
                model_id=model_id,
                archived=archived,
                data_size=len(data) if data_size is None else data_size,
                data_hash=data_hash,
                user_data=user_data or {},
                creation_timestamp=creation_timestamp,
            )
        )
    )
    view = memoryview(data)
    for start in range(0, len(data), chunk_size):
        yield api.CreateVersionRequestChunk(body=api.CreateVersionRequestChunk.Body(data_chunk=bytes(view[start : start + chunk_size])))


def create_version(registry: api_grpc.ModelRegistrySPStub, model_id: str, data: bytes, **kwargs) -> api.ModelVersionInfo:  # type: ignore[no-untyped-def]
    return registry.CreateVersion(version_chunks(model_id, data, **kwargs)).version_info


def read_data(registry: api_grpc.ModelRegistrySPStub, model_id: str, version_number: int) -> bytes:
    return b"".join(
        chunk.data_chunk
        for chunk in registry.RetrieveVersionData(
            api.RetrieveVersionDataRequest(model_id=model_id, version_number=version_number)
        )
    )
