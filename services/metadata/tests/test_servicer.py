"""`registry.MetadataService` through a real gRPC server: replies and status codes."""

from __future__ import annotations

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry import metadata_pb2 as pb

from services.common.service_names import METADATA
from services.metadata.errors import StoreOpenError
from services.metadata.server import create_server
from services.metadata.tests.helpers import SERVICE_CACHE_MAX_BYTES, new_blob_key, test_config


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()


async def create_model(service, model_id: str = "m", **user_data: str) -> None:
    await service.stub.UpsertModel(api.ModelInfo(model_id=model_id, user_data=user_data))


def version_request(model_id: str = "m", *, key: str | None = None, **fields) -> pb.CommitVersionRequest:
    fields.setdefault("data_hash", "aGFzaA==")
    fields.setdefault("data_size", 10)
    return pb.CommitVersionRequest(
        version_info=api.ModelVersionInfo(model_id=model_id, **fields), blob_key=new_blob_key() if key is None else key
    )


async def test_health_is_serving_once_the_store_is_open(service):
    for name in ("", METADATA):
        reply = await service.health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_create_server_opens_the_configured_database(tmp_path):
    app = await create_server(test_config(tmp_path))
    await app.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=METADATA))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (tmp_path / "metadata.sqlite3").is_file()
    finally:
        await app.server.stop(0)
        await app.on_stop()


async def test_create_server_fails_clearly_when_the_database_is_unusable(tmp_path):
    (tmp_path / "metadata.sqlite3").write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreOpenError, match="metadata.sqlite3"):
        await create_server(test_config(tmp_path))


async def test_models_round_trip(service):
    await create_model(service, "a", type="x")
    await create_model(service, "b")
    reply = await service.stub.RetrieveModels(api.RetrieveModelsRequest())
    assert [(m.model_id, dict(m.user_data)) for m in reply.model_infos] == [("a", {"type": "x"}), ("b", {})]
    assert reply.next_model_handle == "2"
    reply = await service.stub.RetrieveModels(api.RetrieveModelsRequest(model_ids=["b"]))
    assert [m.model_id for m in reply.model_infos] == ["b"] and reply.next_model_handle == "1"
    page = await service.stub.RetrieveModels(api.RetrieveModelsRequest(models_count=1, model_handle="1"))
    assert [m.model_id for m in page.model_infos] == ["b"] and page.next_model_handle == "2"


async def test_model_errors(service):
    code, message = await status_of(service.stub.UpsertModel(api.ModelInfo(model_id="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model_id must not be empty" in message
    code, message = await status_of(service.stub.DeleteModel(pb.DeleteModelRequest(model_id="x")))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "model 'x' not found")
    code, message = await status_of(service.stub.RetrieveModels(api.RetrieveModelsRequest(model_ids=["x"])))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "model 'x' not found")
    code, message = await status_of(service.stub.RetrieveModels(api.RetrieveModelsRequest(model_handle="next")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model_handle 'next'" in message
    code, _ = await status_of(service.stub.RetrieveModels(api.RetrieveModelsRequest(model_handle="1")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # no model was ever created


async def test_delete_returns_the_blobs_to_delete(service):
    await create_model(service)
    await service.stub.CommitVersion(version_request(key="t"))
    await service.stub.CommitVersion(version_request(key="a", archived=True))
    reply = await service.stub.DeleteModel(pb.DeleteModelRequest(model_id="m"))
    assert [(b.key, b.archived) for b in reply.deleted_blobs] == [("t", False), ("a", True)]


async def test_commit_and_read_back(service):
    await create_model(service)
    request = version_request(archived=True, data_size=5, creation_timestamp=42, user_data={"k": "v"})
    request.version_info.version_number = 99  # ignored: allocated here
    reply = await service.stub.CommitVersion(request)
    info = reply.version_info
    assert (info.model_id, info.version_number, info.creation_timestamp) == ("m", 1, 42)
    assert (info.archived, info.data_size, dict(info.user_data)) == (True, 5, {"k": "v"})
    assert list(reply.evicted_blobs) == []

    listed = await service.stub.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id="m"))
    assert list(listed.version_infos) == [info] and listed.next_version_handle == "2"
    resolved = await service.stub.ResolveVersion(pb.ResolveVersionRequest(model_id="m", version_number=-1))
    assert resolved.version_info == info and resolved.blob_key == request.blob_key

    retried = await service.stub.CommitVersion(request)  # a lost reply, retried
    assert retried.version_info == info


async def test_eviction_is_reported_and_touch_counts(service):
    await create_model(service)
    for n in range(1, 4):
        await service.stub.CommitVersion(version_request(key=f"k{n}"))
    await service.stub.ResolveVersion(pb.ResolveVersionRequest(model_id="m", version_number=1, touch=True))
    reply = await service.stub.CommitVersion(version_request(key="k4"))
    assert [(b.key, b.archived) for b in reply.evicted_blobs] == [("k2", False)]


async def test_version_errors(service):
    await create_model(service)
    stub = service.stub
    code, message = await status_of(stub.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id="x")))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "model 'x' not found")
    code, message = await status_of(
        stub.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id="m", version_handle="5"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "version_handle '5'" in message
    code, message = await status_of(
        stub.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id="m", version_numbers=[-1]))
    )
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "model 'm' has no versions, -1 is out of range")
    code, message = await status_of(stub.ResolveVersion(pb.ResolveVersionRequest(model_id="m", version_number=0)))
    assert code == grpc.StatusCode.NOT_FOUND and "no version 0" in message
    code, message = await status_of(stub.ResolveVersion(pb.ResolveVersionRequest(model_id="m", version_number=7)))
    assert code == grpc.StatusCode.NOT_FOUND and "model 'm' has no version 7" in message
    code, _ = await status_of(stub.ResolveVersion(pb.ResolveVersionRequest(model_id="", version_number=1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_commit_errors(service):
    await create_model(service)
    stub = service.stub
    code, message = await status_of(stub.CommitVersion(version_request(key="", data_size=1)))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "blob_key must not be empty")
    code, message = await status_of(stub.CommitVersion(version_request(data_hash="")))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "version_info.data_hash must not be empty")
    code, _ = await status_of(stub.CommitVersion(version_request("")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, message = await status_of(stub.CommitVersion(version_request("ghost")))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "model 'ghost' not found")
    code, message = await status_of(stub.CommitVersion(version_request(data_size=SERVICE_CACHE_MAX_BYTES + 1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "COGMENT_MODEL_REGISTRY_VERSION_CACHE_MAX_BYTES" in message and "archive it instead" in message
    code, _ = await status_of(stub.CommitVersion(version_request(archived=True, data_size=2**64 - 1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # not INTERNAL: it does not fit the database


async def test_find_unreferenced_blobs(service):
    await create_model(service)
    await service.stub.CommitVersion(version_request(key="used"))
    reply = await service.stub.FindUnreferencedBlobs(pb.FindUnreferencedBlobsRequest(keys=["used", "orphan"]))
    assert list(reply.keys) == ["orphan"]
