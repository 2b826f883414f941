"""grpc.health.v1 on the public port answers for the whole stack."""

from __future__ import annotations

import json
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import service_names
from services.common.grpc_server import SERVING

from conftest import Stack, running_stack


def check(stack: Stack, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(stack.channel())
    try:
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
    except grpc.RpcError as error:
        return -error.code().value[0]


def test_public_health_is_serving(stack):
    for service in ("", *service_names.PUBLIC):
        assert check(stack, service) == SERVING


@pytest.fixture
def own_stack(tmp_path):
    # A long restart backoff: these tests watch the stack without the
    # process they stopped (the supervisor would bring it back in 0.5 s).
    with running_stack(tmp_path, COGMENT_MODEL_REGISTRY_RESTART_BACKOFF_SECONDS="60") as running:
        yield running


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


def test_sigterm_drains_in_flight_streams(own_stack):
    """A frontend told to stop leaves rotation at once but finishes the
    download it is serving (within the grace period)."""
    import os as _os
    import threading
    import urllib.request

    from cogmentAPI import model_registry_pb2 as api
    from cogmentAPI import model_registry_pb2_grpc as api_grpc

    from conftest import create_version

    registry = api_grpc.ModelRegistrySPStub(own_stack.channel())
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id="drained")))
    data = _os.urandom(16 * 1024 * 1024)
    info = create_version(registry, "drained", data, archived=True)
    state = json.loads((own_stack.run_dir / "state.json").read_text())
    frontends = [p for p in state["processes"] if p["kind"] == "frontend"]

    received: list[bytes] = []
    first_chunk, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_download() -> None:
        try:
            request = api.RetrieveVersionDataRequest(model_id="drained", version_number=info.version_number)
            for chunk in registry.RetrieveVersionData(request):
                received.append(chunk.data_chunk)
                first_chunk.set()
                time.sleep(0.1)  # a slow reader: the stream outlives the SIGTERM
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            done.set()

    threading.Thread(target=slow_download, daemon=True).start()
    assert first_chunk.wait(10)
    for frontend in frontends:
        os.kill(frontend["pid"], signal.SIGTERM)

    def frontend_flags() -> list[str]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{state['admin_port']}/clusters", timeout=2).read().decode()
        return [l.rsplit("::", 1)[1] for l in text.splitlines() if l.startswith("frontend::") and "::health_flags::" in l]

    deadline = time.monotonic() + 5
    while all(flags == "healthy" for flags in frontend_flags()):
        assert time.monotonic() < deadline, "a draining frontend must leave rotation at once"
        time.sleep(0.1)
    assert done.wait(30)
    assert not errors, errors
    assert b"".join(received) == data


def test_draining_ends_version_updates_at_once(own_stack):
    """Subscriptions never end by themselves: a draining frontend ends them
    with UNAVAILABLE right away (clients resubscribe elsewhere) instead of
    holding its shutdown for the whole grace period."""
    from cogmentAPI import model_registry_pb2 as api
    from cogmentAPI import model_registry_pb2_grpc as api_grpc

    registry = api_grpc.ModelRegistrySPStub(own_stack.channel())
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id="followed")))
    call = registry.VersionUpdate(api.VersionUpdateRequest(model_id="followed"))
    time.sleep(1.0)  # the subscription reaches metadata
    state = json.loads((own_stack.run_dir / "state.json").read_text())
    started = time.monotonic()
    for frontend in [p for p in state["processes"] if p["kind"] == "frontend"]:
        os.kill(frontend["pid"], signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as error:
        next(iter(call))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    assert time.monotonic() - started < 5, "the subscription waited for the grace period"
