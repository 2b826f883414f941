"""Issue 16, "watch resumption without gaps", on a real stack: metadata
restarts under a VersionUpdate subscriber, and the frontend's renewed
internal watch resumes after the last version it received (0 included),
of the same model incarnation."""

from __future__ import annotations

import time

import grpc
from cogmentAPI import model_registry_pb2 as api

from conftest import Stack, create_version
from test_version_update import subscribe


def restart_metadata(stack: Stack) -> None:
    """Restarts every metadata process through the stack's supervisor
    (SIGTERM, started again at once), as an operator's restart would."""
    stack.restart("metadata")


def until_served(registry, model_id: str, timeout: float = 30) -> None:
    """Until metadata answers on both of its paths: the public reads Envoy
    routes to it, and a frontend's calls through Envoy's internal listener
    (a version that does not exist: NOT_FOUND is metadata's answer)."""
    deadline = time.monotonic() + timeout
    missing = api.RetrieveVersionDataRequest(model_id=model_id, version_number=1_000_000)
    while True:
        try:
            registry.RetrieveModels(api.RetrieveModelsRequest(model_ids=[model_id]), timeout=2)
            try:
                list(registry.RetrieveVersionData(missing, timeout=2))
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return
                raise
            raise AssertionError("a version that does not exist was read")
        except grpc.RpcError as error:
            assert time.monotonic() < deadline, f"metadata did not come back: {error.code()}: {error.details()}"
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
