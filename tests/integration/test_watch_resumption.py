"""Issue 16, "watch resumption without gaps", on a real stack: metadata
restarts under a VersionUpdate subscriber, and the frontend's renewed
internal watch resumes after the last version it received (0 included),
of the same model incarnation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
from cogmentAPI import model_registry_pb2 as api

from conftest import REPO_ROOT, Stack, create_version
from test_version_update import subscribe


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def restart_metadata(stack: Stack, *, before_start=None) -> None:
    """Stops every metadata process of the stack (SIGTERM), calls
    `before_start()` while none runs, then starts each again with the same
    command line and environment, recording the new PIDs in the launcher's
    state file (so that `make down` stops them)."""
    state_path = stack.run_dir / "state.json"
    state = json.loads(state_path.read_text())
    metadata = [p for p in state["processes"] if p["kind"] == "metadata"]
    commands = []
    for proc in metadata:
        argv = Path(f"/proc/{proc['pid']}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        environ = Path(f"/proc/{proc['pid']}/environ").read_bytes().rstrip(b"\0").split(b"\0")
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        commands.append((proc, [a.decode() for a in argv], env))
        os.kill(proc["pid"], signal.SIGTERM)
    for proc in metadata:
        deadline = time.monotonic() + 20
        while _alive(proc["pid"]):
            assert time.monotonic() < deadline, f"{proc['name']} did not stop"
            time.sleep(0.05)
    if before_start is not None:
        before_start()
    for proc, argv, env in commands:
        with open(proc["log"], "ab") as log:
            child = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc["pid"] = child.pid
    state_path.write_text(json.dumps(state, indent=2))


def until_served(registry, model_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            registry.RetrieveModels(api.RetrieveModelsRequest(model_ids=[model_id]), timeout=2)
            return
        except grpc.RpcError:
            assert time.monotonic() < deadline, "metadata did not come back"
            time.sleep(0.05)


def test_a_subscriber_of_a_model_without_versions_gets_1_2_3_committed_right_after_a_metadata_restart(
    stack, registry, model_id
):
    """The scenario of issue 16: before, the renewed watch asked for
    "after 0", which meant "the latest only", and the subscriber got 3."""
    call, received = subscribe(registry, model_id)
    time.sleep(1.0)  # the subscription reaches metadata
    restart_metadata(stack)
    until_served(registry, model_id)
    for data in (b"1", b"2", b"3"):
        create_version(registry, model_id, data)
    assert [received.get(timeout=30) for _ in range(3)] == [1, 2, 3]
    create_version(registry, model_id, b"4")
    assert received.get(timeout=10) == 4
    call.cancel()


def test_a_model_deleted_and_recreated_while_metadata_was_away_is_not_found_not_followed(stack, registry, model_id):
    create_version(registry, model_id, b"1")
    call, received = subscribe(registry, model_id)
    assert received.get(timeout=10) == 1
    restart_metadata(stack)
    until_served(registry, model_id)
    # Re-created under the same id: its versions are another model's.
    registry.DeleteModel(api.DeleteModelRequest(model_id=model_id))
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id)))
    for data in (b"a", b"b"):
        create_version(registry, model_id, data)
    error = received.get(timeout=30)
    assert isinstance(error, grpc.RpcError), f"followed the new model: got version {error}"
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "was deleted" in error.details()
