"""Metadata's public reads listener through real gRPC servers: the two
reads under both API names, the frontend's request checks, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from cogment import model_registry_pb2_grpc as legacy_grpc
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from registry import metadata_pb2 as pb
from registry import metadata_pb2_grpc

from services.common.limits import RequestLimits
from services.common.service_names import LEGACY_MODEL_REGISTRY, METADATA, MODEL_REGISTRY
from services.frontend.models import Models
from services.metadata.records import Model
from services.metadata.server import create_server
from services.metadata.tests.helpers import new_blob_key, test_config


@asynccontextmanager
async def serving(config) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    """(a channel to the internal API, one to the public reads) of one metadata process."""
    app = await create_server(config)
    for server in app.servers:
        await server.start()
    (reads,) = app.more_servers
    internal = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    public = grpc.aio.insecure_channel(f"127.0.0.1:{reads.port}")
    try:
        yield internal, public
    finally:
        await internal.close()
        await public.close()
        for server in app.servers:
            await server.stop(0)
        await app.on_stop()


def commit_request(model_id: str = "m") -> pb.CommitVersionRequest:
    return pb.CommitVersionRequest(
        version_info=api.ModelVersionInfo(model_id=model_id, data_hash="aGFzaA==", data_size=10),
        blob_key=new_blob_key(),
    )


@pytest.fixture
async def servers(database, tmp_path):
    """(the internal API's stub, the public reads' channel), model "m" with
    two versions; on SQLite and on PostgreSQL."""
    async with serving(database.config(tmp_path, MAX_VERSION_NUMBERS="3")) as (internal, public):
        stub = metadata_pb2_grpc.MetadataServiceStub(internal)
        await stub.UpsertModel(api.ModelInfo(model_id="m", user_data={"k": "v"}))
        for _ in range(2):
            await stub.CommitVersion(commit_request())
        yield stub, public


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()


async def test_both_reads_answer_as_the_internal_api_under_both_names(servers):
    internal, public = servers
    latest = api.RetrieveVersionInfosRequest(model_id="m", version_numbers=[-1])
    expected = await internal.RetrieveVersionInfos(latest)
    assert [v.version_number for v in expected.version_infos] == [2]
    assert await api_grpc.ModelRegistrySPStub(public).RetrieveVersionInfos(latest) == expected
    # The 1.x name takes the same messages.
    assert await legacy_grpc.ModelRegistrySPStub(public).RetrieveVersionInfos(latest) == expected
    models = await api_grpc.ModelRegistrySPStub(public).RetrieveModels(api.RetrieveModelsRequest())
    assert models == await internal.RetrieveModels(api.RetrieveModelsRequest())
    assert [(m.model_id, dict(m.user_data)) for m in models.model_infos] == [("m", {"k": "v"})]


async def test_a_request_over_a_limit_is_refused_with_the_frontends_words(servers):
    _, public = servers
    request = api.RetrieveVersionInfosRequest(model_id="m", version_numbers=[1, 1, 1, 1])
    code, message = await status_of(api_grpc.ModelRegistrySPStub(public).RetrieveVersionInfos(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # The frontend's check is the same function: the same message.
    with pytest.raises(Exception) as refused:
        await Models(None, None, RequestLimits(max_version_numbers=3)).retrieve_version_infos(request)  # type: ignore[arg-type]
    assert message == refused.value.message
    code, message = await status_of(
        api_grpc.ModelRegistrySPStub(public).RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=""))
    )
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "model_id must not be empty")
    code, _ = await status_of(
        api_grpc.ModelRegistrySPStub(public).RetrieveModels(api.RetrieveModelsRequest(model_ids=["m", "nul\0"]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_nothing_else_is_served_there(servers):
    """Writes and the internal API never reach the public reads port."""
    _, public = servers
    code, _ = await status_of(api_grpc.ModelRegistrySPStub(public).DeleteModel(api.DeleteModelRequest(model_id="m")))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    code, _ = await status_of(metadata_pb2_grpc.MetadataServiceStub(public).DeleteModel(pb.DeleteModelRequest(model_id="m")))
    assert code == grpc.StatusCode.UNIMPLEMENTED


async def test_its_health_is_metadatas(servers):
    _, public = servers
    for name in ("", METADATA):
        reply = await health_pb2_grpc.HealthStub(public).Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- the reply cache (reply_cache.py) --------------------------------------------------------


def cache_lookups(outcome: str) -> float:
    return REGISTRY.get_sample_value("registry_public_read_cache_lookups_total", {"outcome": outcome}) or 0.0


async def test_a_repeated_read_is_answered_from_the_cache_until_anything_changes(servers):
    internal, public = servers
    stub = api_grpc.ModelRegistrySPStub(public)
    latest = api.RetrieveVersionInfosRequest(model_id="m", version_numbers=[-1])
    first = await stub.RetrieveVersionInfos(latest)
    hits = cache_lookups("hit")
    assert await stub.RetrieveVersionInfos(latest) == first
    assert await legacy_grpc.ModelRegistrySPStub(public).RetrieveVersionInfos(latest) == first
    assert cache_lookups("hit") == hits + 2
    # Every kind of write is seen by the next read, through the cache.
    await internal.CommitVersion(commit_request())
    (latest_info,) = (await stub.RetrieveVersionInfos(latest)).version_infos
    assert latest_info.version_number == 3
    models = await stub.RetrieveModels(api.RetrieveModelsRequest())
    await internal.UpsertModel(api.ModelInfo(model_id="m", user_data={"k": "w"}))
    (model,) = (await stub.RetrieveModels(api.RetrieveModelsRequest())).model_infos
    assert dict(model.user_data) == {"k": "w"} and models.model_infos[0].user_data["k"] == "v"
    await internal.DeleteModel(pb.DeleteModelRequest(model_id="m"))
    assert (await stub.RetrieveModels(api.RetrieveModelsRequest())).model_infos == []
    code, _ = await status_of(stub.RetrieveVersionInfos(latest))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_change_made_by_another_process_is_seen_at_once(servers, database):
    """The cache asks the database whether anything committed, whoever
    committed it: here another connection, as another process (SQLite) or
    another replica (PostgreSQL) would."""
    _, public = servers
    stub = api_grpc.ModelRegistrySPStub(public)
    request = api.RetrieveModelsRequest()
    assert [m.model_id for m in (await stub.RetrieveModels(request)).model_infos] == ["m"]
    hits = cache_lookups("hit")
    assert [m.model_id for m in (await stub.RetrieveModels(request)).model_infos] == ["m"]
    assert cache_lookups("hit") == hits + 1
    other = database.open(close_at_end=False)
    try:
        other.upsert_model(Model("written-elsewhere"))
    finally:
        other.close()
    assert [m.model_id for m in (await stub.RetrieveModels(request)).model_infos] == ["m", "written-elsewhere"]


@pytest.mark.postgres
async def test_a_commit_through_one_replica_is_seen_by_the_next_read_on_another(postgres_url, tmp_path):
    """Two metadata replicas on one PostgreSQL database, each with its reply
    cache: once one replica has answered a commit or a deletion, the other's
    next read sees it, although the same request was cached there."""
    config = test_config(tmp_path, METADATA_URL=postgres_url)
    async with serving(config) as (internal_a, _), serving(config) as (_, public_b):
        writer = metadata_pb2_grpc.MetadataServiceStub(internal_a)
        reader = api_grpc.ModelRegistrySPStub(public_b)
        await writer.UpsertModel(api.ModelInfo(model_id="m"))
        latest = api.RetrieveVersionInfosRequest(model_id="m", version_numbers=[-1])
        hits = cache_lookups("hit")
        for number in range(1, 6):
            await writer.CommitVersion(commit_request())
            for _ in range(3):  # the first read fills the cache, the others hit it
                (info,) = (await reader.RetrieveVersionInfos(latest)).version_infos
                assert info.version_number == number
        # Mostly from the cache (10 of the 15 could be; a write elsewhere
        # on the server, such as autovacuum's, only costs a miss).
        assert cache_lookups("hit") >= hits + 5
        await writer.DeleteModel(pb.DeleteModelRequest(model_id="m"))
        code, _ = await status_of(reader.RetrieveVersionInfos(latest))
        assert code == grpc.StatusCode.NOT_FOUND


async def test_without_a_cache_the_reads_are_the_same(tmp_path):
    async with serving(test_config(tmp_path, METADATA_READ_CACHE_BYTES="0")) as (internal, public):
        await metadata_pb2_grpc.MetadataServiceStub(internal).UpsertModel(api.ModelInfo(model_id="m"))
        misses = cache_lookups("miss")
        for _ in range(2):
            (model,) = (await api_grpc.ModelRegistrySPStub(public).RetrieveModels(api.RetrieveModelsRequest())).model_infos
            assert model.model_id == "m"
        assert cache_lookups("miss") == misses  # not looked up at all


async def test_bytes_that_are_no_request_are_refused_every_time(servers):
    """The reads decode their requests themselves (a cached request is not
    decoded again): bytes that are no such message are INVALID_ARGUMENT,
    the first time and the next, and never kept."""
    _, public = servers
    for service in (MODEL_REGISTRY, LEGACY_MODEL_REGISTRY):
        for method in ("RetrieveVersionInfos", "RetrieveModels"):
            call = public.unary_unary(f"/{service}/{method}")
            for _ in range(2):
                code, message = await status_of(call(b"\x0a\x05ab"))  # a string field cut short
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                # Named as the caller's service names it.
                package = service.rpartition(".")[0]
                assert message.startswith(f"the request is not a valid {package}.{method}Request:"), message
