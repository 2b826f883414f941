"""Faults that used to destroy or corrupt data, on a real stack of their own
(the session's stack keeps the default sweep settings): metadata restarted
on an empty database must not make the sweeper delete archived blobs.

Rows of README's fault table ("metadata on an empty database"). Each test
starts its own stack (seconds to tens of seconds): marked `faults`, run by
`make faults`, deselected by `make test`.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from services.launcher.ports import free_port

from conftest import REPLICATED, Stack, create_version, fresh_postgres_schema, read_data, stack_env

pytestmark = pytest.mark.faults

# The sweeper runs every 0.2 s and takes blobs older than 1 s: the issue saw
# "swept 3 orphaned blobs" within 2 s of a restart on an empty database.
FAST_SWEEPS = {
    "COGMENT_MODEL_REGISTRY_BLOBSTORE_SWEEP_INTERVAL_SECONDS": "0.2",
    "COGMENT_MODEL_REGISTRY_BLOBSTORE_ORPHAN_GRACE_SECONDS": "1",
}


def blobstore_logs(stack: Stack) -> str:
    state = json.loads((stack.run_dir / "state.json").read_text())
    return "".join(Path(p["log"]).read_text() for p in state["processes"] if p["kind"] == "blobstore")


def empty_database_url(base: Path) -> str:
    if REPLICATED:
        return fresh_postgres_schema()
    return f"sqlite:///{base / 'empty' / 'metadata.sqlite3'}"


@pytest.fixture
def own_stack(tmp_path: Path):
    port = free_port()
    stack = Stack(stack_env(port, tmp_path / "archive", tmp_path / "run", **FAST_SWEEPS), port, tmp_path / "archive", tmp_path / "run")
    stack.up()
    try:
        yield stack
    finally:
        for channel in stack.channels:
            channel.close()
        stack.down()


def test_metadata_on_an_empty_database_sweeps_nothing(own_stack: Stack, tmp_path: Path):
    from cogmentAPI import model_registry_pb2 as api
    from cogmentAPI import model_registry_pb2_grpc as api_grpc

    registry = api_grpc.ModelRegistrySPStub(own_stack.channel())
    model_id = f"model-{uuid.uuid4().hex[:8]}"
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id)))
    versions = [create_version(registry, model_id, f"archived {n}".encode(), archived=True) for n in range(3)]
    time.sleep(1.5)  # older than the grace period, and swept once against the right database
    assert "orphaned blobs" not in blobstore_logs(own_stack)

    right_url = own_stack.env.get("COGMENT_MODEL_REGISTRY_METADATA_URL")
    own_stack.down()
    own_stack.env["COGMENT_MODEL_REGISTRY_METADATA_URL"] = empty_database_url(tmp_path)
    started = time.monotonic()
    own_stack.up()
    print(f"\nstack on an empty database serving after {time.monotonic() - started:.1f} s")
    # Ten sweeps' worth, and more.
    deadline = time.monotonic() + 10
    while "refusing to sweep the archive tier" not in blobstore_logs(own_stack):
        assert time.monotonic() < deadline, "the sweeper should say it refuses to sweep"
        time.sleep(0.1)
    time.sleep(2)
    logs = blobstore_logs(own_stack)
    assert "orphaned blobs" not in logs, logs[-2000:]
    refusal = next(line for line in logs.splitlines() if "refusing to sweep the archive tier" in line)
    print(f"blobstore: {refusal}")
    assert "COGMENT_MODEL_REGISTRY_BLOBSTORE_ACCEPT_DATABASE_ID=" in refusal

    own_stack.down()
    if right_url is None:
        del own_stack.env["COGMENT_MODEL_REGISTRY_METADATA_URL"]
    else:
        own_stack.env["COGMENT_MODEL_REGISTRY_METADATA_URL"] = right_url
    own_stack.up()
    registry = api_grpc.ModelRegistrySPStub(own_stack.channel())
    for n, info in enumerate(versions):
        assert read_data(registry, model_id, info.version_number) == f"archived {n}".encode()
    # Sweeping resumes against the right database: still nothing to delete.
    time.sleep(1)
    for n, info in enumerate(versions):
        assert read_data(registry, model_id, info.version_number) == f"archived {n}".encode()
