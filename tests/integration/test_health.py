"""grpc.health.v1 on the public port answers for the whole stack."""

from __future__ import annotations

import json
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import Stack, free_port, stack_env

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(stack: Stack, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(stack.channel())
    try:
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
    except grpc.RpcError as error:
        return -error.code().value[0]


def test_public_health_is_serving(stack):
    for service in ("", "cogmentAPI.ModelRegistrySP", "cogment.ModelRegistrySP"):
        assert check(stack, service) == SERVING


@pytest.fixture
def own_stack(tmp_path):
    port = free_port()
    running = Stack(stack_env(port, tmp_path / "archive", tmp_path / "run"), port, tmp_path / "archive", tmp_path / "run")
    running.up()
    yield running
    for channel in running.channels:
        channel.close()
    running.down()


def test_health_reflects_the_upstreams(own_stack):
    assert check(own_stack) == SERVING
    state = json.loads((own_stack.run_dir / "state.json").read_text())
    for metadata in [p for p in state["processes"] if p["kind"] == "metadata"]:
        os.kill(metadata["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while check(own_stack) == SERVING:
        assert time.monotonic() < deadline, "still SERVING with metadata dead"
        time.sleep(0.2)
    # `make down` still stops everything it started, the dead one included.
    own_stack.down()
    assert not (own_stack.run_dir / "state.json").exists()
    for proc in state["processes"]:
        assert not is_running(proc["pid"]), proc["name"]


def is_running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to reap it."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
