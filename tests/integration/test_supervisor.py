"""The supervisor under `make up`, on a stack of its own: a killed service
comes back by itself with one log line; `make up` repairs a stack whose
supervisor and Envoy were killed; `make down` stops everything, the
supervisor included."""

from __future__ import annotations

import json
import os
import signal
import time

import grpc
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from services.launcher.processes import pid_runs

from conftest import create_version, read_data, stack_under


def serves_within(registry, model_id: str, version_number: int, data: bytes, timeout: float) -> float:
    started = time.monotonic()
    while True:
        try:
            assert read_data(registry, model_id, version_number) == data
            return time.monotonic() - started
        except grpc.RpcError:
            assert time.monotonic() - started < timeout, "the stack did not serve again"
            time.sleep(0.1)


def test_supervisor_restarts_repairs_and_stops(tmp_path):
    stack = stack_under(tmp_path)
    stack.up()
    try:
        registry = api_grpc.ModelRegistrySPStub(stack.channel())
        registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id="supervised")))
        info = create_version(registry, "supervised", b"kept", archived=True)

        stack.kill("metadata-0")  # returns once the supervisor runs it again
        assert stack.processes("metadata")[0]["restarts"] == 1
        stack.up()  # returns once every replica is back in rotation
        serves_within(registry, "supervised", info.version_number, b"kept", timeout=20)
        lines = (stack.run_dir / "supervisor.log").read_text().splitlines()
        (line,) = [l for l in lines if "restarting in" in l]
        assert "metadata-0" in line and "killed by SIGKILL" in line and "restarting in 0.5 s" in line, line

        # Supervisor and Envoy killed: nothing restarts Envoy until `make up` repairs.
        state = stack.processes()
        supervisor = json.loads((stack.run_dir / "state.json").read_text())["supervisor"]
        (envoy,) = [p for p in state if p["kind"] == "envoy"]
        os.kill(supervisor["pid"], signal.SIGKILL)
        os.kill(envoy["pid"], signal.SIGKILL)
        stack.up()
        after = {p["name"]: p["pid"] for p in stack.processes()}
        assert after["envoy"] != envoy["pid"]
        assert all(after[p["name"]] == p["pid"] for p in state if p["kind"] != "envoy"), "running ones are adopted"
        assert read_data(registry, "supervised", info.version_number) == b"kept"
        everything = [*stack.processes(), json.loads((stack.run_dir / "state.json").read_text())["supervisor"]]
    finally:
        for channel in stack.channels:
            channel.close()
        stack.down()
    assert not any(pid_runs(p["pid"], p["marker"]) for p in everything), "make down stops all, supervisor included"
    assert not (stack.run_dir / "state.json").exists()
