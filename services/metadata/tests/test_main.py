"""`python -m services.metadata` as a process: start, kill -9, restart, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry import metadata_pb2 as pb
from registry import metadata_pb2_grpc

from services.common.config import PREFIX
from services.common.service_names import METADATA
from services.launcher.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]



def service_env(archive_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    env.update(
        {
            PREFIX + "ARCHIVE_DIR": str(archive_dir),
            PREFIX + "BIND_HOST": "127.0.0.1",
            PREFIX + "METADATA_PORT": str(port),
            PREFIX + "METADATA_READS_PORT": "0",
            PREFIX + "SHUTDOWN_GRACE_SECONDS": "1",
            **{PREFIX + key: value for key, value in extra.items()},
        }
    )
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    return env


def start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.metadata"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_serving(channel: grpc.Channel, process: subprocess.Popen, timeout: float = 20.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=METADATA), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError("the metadata service did not become SERVING in time")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def database_env(database) -> dict[str, str]:
    return {"METADATA_URL": database.url} if database.is_postgres else {}


def test_acknowledged_versions_survive_kill_9_and_numbering_continues(tmp_path, processes, database):
    port = free_port()
    env = service_env(tmp_path, port, **database_env(database))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = metadata_pb2_grpc.MetadataServiceStub(channel)
        first = start(env)
        processes.append(first)
        wait_serving(channel, first)
        stub.UpsertModel(api.ModelInfo(model_id="m"), timeout=5)
        for n in range(1, 6):
            request = pb.CommitVersionRequest(
                version_info=api.ModelVersionInfo(model_id="m", archived=True, data_hash="h", data_size=1),
                blob_key=f"key-{n}",
            )
            assert stub.CommitVersion(request, timeout=5).version_info.version_number == n
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        second = start(env)
        processes.append(second)
        wait_serving(channel, second)
        listed = stub.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id="m"), timeout=5)
        assert [v.version_number for v in listed.version_infos] == [1, 2, 3, 4, 5]
        request = pb.CommitVersionRequest(
            version_info=api.ModelVersionInfo(model_id="m", data_hash="h", data_size=1), blob_key="key-6"
        )
        assert stub.CommitVersion(request, timeout=5).version_info.version_number == 6

        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    assert (tmp_path / "metadata.sqlite3").is_file() != database.is_postgres


@pytest.mark.postgres
def test_two_replica_processes_share_numbers_and_wake_each_others_watchers(tmp_path, processes, postgres_url):
    ports = [free_port(), free_port()]
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    try:
        for port, channel in zip(ports, channels):
            process = start(service_env(tmp_path, port, METADATA_URL=postgres_url))
            processes.append(process)
        for process, channel in zip(processes, channels):
            wait_serving(channel, process)
        one, two = (metadata_pb2_grpc.MetadataServiceStub(channel) for channel in channels)
        one.UpsertModel(api.ModelInfo(model_id="m"), timeout=5)
        watch = one.WatchVersions(pb.WatchVersionsRequest(model_id="m"), timeout=10)
        committed = []
        for n in range(1, 7):
            stub = (one, two)[n % 2]
            request = pb.CommitVersionRequest(
                version_info=api.ModelVersionInfo(model_id="m", data_hash="h", data_size=1), blob_key=f"key-{n}"
            )
            committed.append(stub.CommitVersion(request, timeout=5).version_info.version_number)
        assert committed == [1, 2, 3, 4, 5, 6]
        received = []
        for reply in watch:
            if reply.WhichOneof("event") == "started":
                continue
            received.append(reply.version_info.version_number)
            if reply.version_info.version_number == 6:
                break
        assert received == list(range(received[0], 7))
        watch.cancel()
    finally:
        for channel in channels:
            channel.close()


def test_sigterm_stops_promptly_even_with_a_watch_open(tmp_path, processes):
    port = free_port()
    process = start(service_env(tmp_path, port))
    processes.append(process)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        wait_serving(channel, process)
        stub = metadata_pb2_grpc.MetadataServiceStub(channel)
        stub.UpsertModel(api.ModelInfo(model_id="m"), timeout=5)
        watch = stub.WatchVersions(pb.WatchVersionsRequest(model_id="m"))
        time.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert time.monotonic() - started < 10  # the grace period is 1 s
        with pytest.raises(grpc.RpcError):
            list(watch)  # `started`, then the end


@pytest.mark.parametrize(
    "variable,value",
    [
        ("METADATA_URL", "postgresql://registry:secret@db:port/registry"),
        ("METADATA_URL", "postgresql://registry:secret@127.0.0.1:1/registry"),  # nobody listens
        ("VERSION_CACHE_MAX_ITEMS", "0"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_the_variable(tmp_path, processes, variable, value):
    process = start(service_env(tmp_path, free_port(), **{variable: value}))
    processes.append(process)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0
    assert PREFIX + variable in stderr
    assert "secret" not in stderr
    assert "Traceback" not in stderr
