"""services.common.metrics: what the request interceptor, the internal
channels and the health servicer record, the hooks' bounded labels, and
the /metrics endpoint of a real service process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from services.common import metrics
from services.common.config import METADATA_READS_PORT, PREFIX, SERVICE_PORTS, ConfigError
from services.common.errors import NotFound
from services.common.grpc_client import internal_channel
from services.common.grpc_server import NOT_SERVING, SERVING, bind, create_aio_server
from services.launcher.ports import LOOPBACK, free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
SERVICE = "test.Echo"


def sample(name: str, **labels: str) -> float:
    """The current value of one series (0 when it does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def method_labels(method: str, rpc_type: str) -> dict[str, str]:
    return {"grpc_type": rpc_type, "grpc_service": SERVICE, "grpc_method": method}


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"missing":
        raise NotFound("no such thing")
    return request


async def count_to(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for number in range(int(request)):
        yield str(number).encode()
        await asyncio.sleep(0)
    if request == b"0":
        await asyncio.Event().wait()  # a stream that never ends by itself


@pytest.fixture
async def server():
    grpc_server = create_aio_server(4 * 1024 * 1024)
    grpc_server.server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "CountTo": grpc.unary_stream_rpc_method_handler(count_to),
                },
            )
        ]
    )
    port = bind(grpc_server.server, LOOPBACK, 0)
    await grpc_server.server.start()
    yield grpc_server, f"{LOOPBACK}:{port}"
    await grpc_server.server.stop(0)


async def test_the_request_interceptor_counts_calls_by_method_and_status_and_times_them(server):
    _, address = server
    unary = method_labels("Echo", "unary")
    before_ok = sample("grpc_server_handled_total", **unary, grpc_code="OK")
    before_missing = sample("grpc_server_handled_total", **unary, grpc_code="NOT_FOUND")
    before_started = sample("grpc_server_started_total", **unary)
    before_timed = sample("grpc_server_handling_seconds_count", **unary)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Echo")
        for _ in range(3):
            assert await call(b"hello") == b"hello"
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(b"missing")
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert [reply async for reply in channel.unary_stream(f"/{SERVICE}/CountTo")(b"4")] == [b"0", b"1", b"2", b"3"]
    assert sample("grpc_server_handled_total", **unary, grpc_code="OK") - before_ok == 3
    assert sample("grpc_server_handled_total", **unary, grpc_code="NOT_FOUND") - before_missing == 1
    assert sample("grpc_server_started_total", **unary) - before_started == 4
    assert sample("grpc_server_handling_seconds_count", **unary) - before_timed == 4
    assert sample("grpc_server_handled_total", **method_labels("CountTo", "server_stream"), grpc_code="OK") >= 1


async def test_internal_channels_count_the_calls_they_make_streams_included(server):
    _, address = server
    unary, stream = method_labels("Echo", "unary"), method_labels("CountTo", "server_stream")
    before = {
        "ok": sample("grpc_client_handled_total", **unary, grpc_code="OK"),
        "missing": sample("grpc_client_handled_total", **unary, grpc_code="NOT_FOUND"),
        "streamed": sample("grpc_client_handled_total", **stream, grpc_code="OK"),
        "cancelled": sample("grpc_client_handled_total", **stream, grpc_code="CANCELLED"),
        "timed": sample("grpc_client_handling_seconds_count", **stream),
    }
    channel = internal_channel(address, 4 * 1024 * 1024)
    try:
        call = channel.unary_unary(f"/{SERVICE}/Echo")
        assert await call(b"hello") == b"hello"
        with pytest.raises(grpc.aio.AioRpcError):
            await call(b"missing")
        count_to_call = channel.unary_stream(f"/{SERVICE}/CountTo")
        assert len([reply async for reply in count_to_call(b"3")]) == 3
        endless = count_to_call(b"0")
        await asyncio.sleep(0.2)  # under way, as a watch is when the frontend ends it
        endless.cancel()  # by its caller, no message read
        with pytest.raises(asyncio.CancelledError):
            async for _ in endless:
                pass
        deadline = time.monotonic() + 5
        while sample("grpc_client_handled_total", **stream, grpc_code="CANCELLED") == before["cancelled"]:
            assert time.monotonic() < deadline, "the cancelled stream was never recorded"
            await asyncio.sleep(0.01)
    finally:
        await channel.close()
    assert sample("grpc_client_handled_total", **unary, grpc_code="OK") - before["ok"] == 1
    assert sample("grpc_client_handled_total", **unary, grpc_code="NOT_FOUND") - before["missing"] == 1
    assert sample("grpc_client_handled_total", **stream, grpc_code="OK") - before["streamed"] == 1
    assert sample("grpc_client_handling_seconds_count", **stream) - before["timed"] == 2


async def test_health_statuses_are_published_until_shutdown_turns_them_off(server):
    grpc_server, _ = server
    await grpc_server.health.set("test.Echo", SERVING)
    assert sample("registry_health_serving", health_service="test.Echo") == 1
    await grpc_server.health.set("test.Echo", NOT_SERVING)
    assert sample("registry_health_serving", health_service="test.Echo") == 0
    await grpc_server.health.set("", SERVING)
    await grpc_server.health.set("test.Echo", SERVING)
    assert sample("registry_health_serving", health_service="overall") == 1
    await grpc_server.health.enter_graceful_shutdown()
    await grpc_server.health.set("test.Echo", SERVING)  # ignored while shutting down, by the servicer too
    assert sample("registry_health_serving", health_service="test.Echo") == 0
    assert sample("registry_health_serving", health_service="overall") == 0


def test_hook_labels_stay_bounded_whatever_the_caller_passes():
    name = "registry_authentication_failures_total"
    before_known = sample(name, credential="bearer", reason="unknown")
    before_other = sample(name, credential="other", reason="other")
    metrics.authentication_failed("bearer", "unknown")
    metrics.authentication_failed("token-abc123", "user alice not found")  # never a label value
    assert sample(name, credential="bearer", reason="unknown") - before_known == 1
    assert sample(name, credential="other", reason="other") - before_other == 1
    values = {value for family in REGISTRY.collect() for s in family.samples for value in s.labels.values()}
    assert not {"token-abc123", "user alice not found"} & values

    metrics.directory_registration_state(True)
    assert sample("registry_directory_registered") == 1
    metrics.directory_registration_state(False)
    assert sample("registry_directory_registered") == 0


def test_the_metrics_port_is_off_unless_set_and_must_be_a_port():
    assert metrics.metrics_port({}) == metrics.METRICS_OFF
    assert metrics.metrics_port({metrics.METRICS_PORT_VARIABLE: "9464"}) == 9464
    for bad in ("abc", "-1", "70000"):
        with pytest.raises(ConfigError, match=metrics.METRICS_PORT_VARIABLE):
            metrics.metrics_port({metrics.METRICS_PORT_VARIABLE: bad})


def _service_env(tmp_path: Path, kind: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith((PREFIX, "OTEL_"))}
    env.update({PREFIX + "ARCHIVE_DIR": str(tmp_path), PREFIX + "BIND_HOST": LOOPBACK, SERVICE_PORTS[kind][0]: "0", METADATA_READS_PORT[0]: "0"})
    env.update(extra)
    return env


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=1) as response:
            return response.read().decode()
    except OSError:
        return None


def test_a_service_serves_its_metrics_on_the_configured_port(tmp_path):
    port = free_port()
    env = _service_env(tmp_path, "metadata", **{metrics.METRICS_PORT_VARIABLE: str(port)})
    process = subprocess.Popen([sys.executable, "-m", "services.metadata"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while (text := _scrape(port)) is None or 'registry_health_serving{health_service="registry.MetadataService"} 1.0' not in text:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, f"no SERVING metadata in its metrics:\n{text}"
            time.sleep(0.1)
        assert "# TYPE registry_transient_max_versions gauge" in text
        assert "registry_blobstore_" not in text and "registry_upload_bytes" not in text, "another service's metrics"
        assert "process_resident_memory_bytes" in text
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_metrics_port_in_use_stops_the_start_naming_the_variable(tmp_path):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _service_env(tmp_path, "blobstore", **{metrics.METRICS_PORT_VARIABLE: str(port)})
        result = subprocess.run(
            [sys.executable, "-m", "services.blobstore"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"blobstore: cannot serve metrics on {LOOPBACK}:{port} ({metrics.METRICS_PORT_VARIABLE}): Address already in use"
    ]
