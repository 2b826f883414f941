"""`BlobRouter`: which replica each blob call goes to, and what a failed call
means for the next one.

The replicas are small real gRPC servers whose DescribeReplica answers as
scripted (serving, frozen, stopped), seen through a real `BlobReplicas`;
the blob calls themselves go to a fake wire that records where they went
and fails as scripted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from registry import blobstore_pb2, blobstore_pb2_grpc

from services.blobstore.tests.helpers import make_config, start_blobstore
from services.common.blob_keys import holder_of, new_archived_key, new_replica_id, new_transient_key
from services.common.errors import Unavailable
from services.launcher.ports import free_port
from services.frontend.blob_replicas import BlobMissing, BlobReplicas, BlobRouter, Replica
from services.frontend.config import FrontendConfig
from services.frontend.upstream import BlobStoreClient

MESSAGE_LIMIT = 16 * 1024 * 1024


class ScriptedDescribe(blobstore_pb2_grpc.BlobStoreServicer):
    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.frozen = False

    async def DescribeReplica(self, request, context):
        if self.frozen:
            await asyncio.Event().wait()  # accepts the call, never answers
        return blobstore_pb2.DescribeReplicaReply(replica_id=self.replica_id, serving=True)


@dataclass
class ScriptedReplica:
    """A replica process as the frontend sees it: listening, answering or not."""

    address: str
    replica_id: str
    server: grpc.aio.Server
    servicer: ScriptedDescribe

    @classmethod
    async def start(cls) -> ScriptedReplica:
        replica_id = new_replica_id()
        servicer = ScriptedDescribe(replica_id)
        server = grpc.aio.server()
        blobstore_pb2_grpc.add_BlobStoreServicer_to_server(servicer, server)
        address = f"127.0.0.1:{free_port()}"
        server.add_insecure_port(address)
        await server.start()
        return cls(address, replica_id, server, servicer)

    async def freeze(self) -> None:
        """Still accepts connections, answers nothing (SIGSTOP-like)."""
        self.servicer.frozen = True

    async def stop(self) -> None:
        """Gone: connections are refused."""
        await self.server.stop(0)

    def transient_key(self) -> str:
        return new_transient_key(self.replica_id)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"scripted {code.name}")


@dataclass
class Outcome:
    """What one wire call does: send `chunks`, then fail with `error` (after
    running `then`), or end there."""

    chunks: list[bytes] = field(default_factory=lambda: [b"data"])
    error: grpc.StatusCode | None = None
    then: Callable[[], Awaitable[None]] | None = None

    async def fail_if_scripted(self) -> None:
        if self.error is not None:
            if self.then is not None:
                await self.then()
            raise rpc_error(self.error)


class FakeWire:
    """Records every call (operation, replica address, key); each call
    plays the next scripted outcome of its operation, or succeeds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.outcomes: dict[str, list[Outcome]] = {"put": [], "get": [], "delete": []}

    def script(self, operation: str, *outcomes: Outcome) -> None:
        self.outcomes[operation].extend(outcomes)

    def addresses(self, operation: str) -> list[str]:
        return [address for op, address, _ in self.calls if op == operation]

    def _next(self, operation: str) -> Outcome:
        scripted = self.outcomes[operation]
        return scripted.pop(0) if scripted else Outcome()

    async def put(self, replica: Replica, size: int, requests: AsyncIterator[bytes]) -> None:
        outcome = self._next("put")
        messages = [message async for message in requests]
        self.calls.append(("put", replica.address, blobstore_pb2.PutBlobRequest.FromString(messages[0]).header.key))
        await outcome.fail_if_scripted()

    def get(
        self, replica: Replica, key: str, *, archived: bool, expected_size: int, expected_sha256: bytes
    ) -> AsyncIterator[bytes]:
        self.calls.append(("get", replica.address, key))
        return self._play(self._next("get"))

    async def _play(self, outcome: Outcome) -> AsyncIterator[bytes]:
        for chunk in outcome.chunks:
            yield chunk
        await outcome.fail_if_scripted()

    async def delete(self, replica: Replica, key: str, *, archived: bool) -> None:
        self.calls.append(("delete", replica.address, key))
        await self._next("delete").fail_if_scripted()


@dataclass
class Routing:
    router: BlobRouter
    replicas: BlobReplicas
    wire: FakeWire
    started: list[ScriptedReplica]


@pytest.fixture
async def routing():
    started = [await ScriptedReplica.start() for _ in range(2)]
    replicas = BlobReplicas(
        [r.address for r in started],
        max_message_bytes=MESSAGE_LIMIT,
        refresh_interval_seconds=0.1,
        describe_timeout_seconds=0.3,
    )
    await replicas.refresh()
    assert len(replicas.serving()) == 2
    wire = FakeWire()
    try:
        yield Routing(BlobRouter(replicas, wire), replicas, wire, started)
    finally:
        await replicas.close()
        for replica in started:
            await replica.stop()


async def read(router: BlobRouter, key: str, *, archived: bool) -> list[bytes]:
    return [chunk async for chunk in router.get(key, archived=archived, expected_size=4, expected_sha256=b"")]


async def header_only(key: str) -> AsyncIterator[bytes]:
    yield blobstore_pb2.PutBlobRequest(header=blobstore_pb2.PutBlobRequest.Header(key=key)).SerializeToString()


# -- placement -------------------------------------------------------------


async def test_a_new_transient_blob_is_keyed_to_the_replica_chosen_to_store_it(routing):
    ids = {r.address: r.replica_id for r in routing.started}
    for _ in range(10):
        blob = await routing.router.place(archived=False)
        assert holder_of(blob.key) == ids[blob.address]
        await blob.put(0, header_only(blob.key))
        assert routing.wire.calls[-1] == ("put", blob.address, blob.key)


async def test_a_new_archived_blob_names_no_replica(routing):
    blob = await routing.router.place(archived=True)
    assert holder_of(blob.key) is None
    assert blob.address in {r.address for r in routing.started}


async def test_new_blobs_go_to_the_replica_with_fewer_uploads_in_flight(routing):
    busy = await routing.router.place(archived=False)
    release = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        async for message in header_only(busy.key):
            yield message
        await release.wait()

    upload = asyncio.create_task(busy.put(0, stalled()))
    await asyncio.sleep(0)
    try:
        others = {(await routing.router.place(archived=True)).address for _ in range(20)}
        assert others == {r.address for r in routing.started} - {busy.address}
    finally:
        release.set()
        await upload
    assert {(await routing.router.place(archived=True)).address for _ in range(50)} == {
        r.address for r in routing.started
    }


async def test_an_upload_answered_unavailable_takes_its_replica_out_of_rotation(routing):
    blob = await routing.router.place(archived=False)
    routing.wire.script("put", Outcome(error=grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await blob.put(0, header_only(blob.key))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    (other,) = {r.address for r in routing.started} - {blob.address}
    assert [r.address for r in routing.replicas.serving()] == [other]
    assert {(await routing.router.place(archived=True)).address for _ in range(10)} == {other}


async def test_an_upload_refused_for_another_reason_leaves_its_replica_in_rotation(routing):
    blob = await routing.router.place(archived=False)
    routing.wire.script("put", Outcome(error=grpc.StatusCode.INVALID_ARGUMENT))
    with pytest.raises(grpc.aio.AioRpcError):
        await blob.put(0, header_only(blob.key))
    assert len(routing.replicas.serving()) == 2


# -- transient reads -------------------------------------------------------


async def test_a_transient_blob_is_read_from_the_replica_its_key_names(routing):
    for holder in routing.started:
        assert await read(routing.router, holder.transient_key(), archived=False) == [b"data"]
        assert routing.wire.addresses("get")[-1] == holder.address


async def test_a_transient_blob_of_a_replica_nobody_knows_is_missing_without_a_call(routing):
    with pytest.raises(BlobMissing):
        await read(routing.router, new_transient_key(new_replica_id()), archived=False)
    assert routing.wire.calls == []


@pytest.mark.parametrize("archived", [False, True])
async def test_a_blob_its_replica_does_not_have_is_missing(routing, archived):
    key = new_archived_key() if archived else routing.started[0].transient_key()
    routing.wire.script("get", Outcome(chunks=[], error=grpc.StatusCode.NOT_FOUND))
    with pytest.raises(BlobMissing):
        await read(routing.router, key, archived=archived)
    assert len(routing.wire.calls) == 1


async def test_a_holder_that_went_down_took_its_blob_with_it(routing):
    holder = routing.started[0]
    routing.wire.script("get", Outcome(chunks=[], error=grpc.StatusCode.UNAVAILABLE, then=holder.stop))
    with pytest.raises(BlobMissing):
        await read(routing.router, holder.transient_key(), archived=False)
    assert routing.wire.addresses("get") == [holder.address]


async def test_a_frozen_holder_is_unavailable_and_its_blob_not_given_up(routing):
    holder = routing.started[0]
    routing.wire.script("get", Outcome(chunks=[], error=grpc.StatusCode.UNAVAILABLE, then=holder.freeze))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read(routing.router, holder.transient_key(), archived=False)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert routing.wire.addresses("get") == [holder.address]


async def test_a_holder_that_answers_again_gets_one_more_try(routing):
    holder = routing.started[0]
    routing.wire.script("get", Outcome(chunks=[], error=grpc.StatusCode.UNAVAILABLE))
    assert await read(routing.router, holder.transient_key(), archived=False) == [b"data"]
    assert routing.wire.addresses("get") == [holder.address, holder.address]


async def test_a_holder_that_fails_twice_is_unavailable_after_the_second_try(routing):
    holder = routing.started[0]
    unavailable = Outcome(chunks=[], error=grpc.StatusCode.UNAVAILABLE)
    routing.wire.script("get", unavailable, unavailable, unavailable)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read(routing.router, holder.transient_key(), archived=False)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert routing.wire.addresses("get") == [holder.address, holder.address]


# -- archived reads --------------------------------------------------------


async def test_an_archived_read_moves_to_another_replica_before_the_first_chunk(routing):
    routing.wire.script("get", Outcome(chunks=[], error=grpc.StatusCode.UNAVAILABLE))
    assert await read(routing.router, new_archived_key(), archived=True) == [b"data"]
    first, second = routing.wire.addresses("get")
    assert {first, second} == {r.address for r in routing.started}


async def test_an_archived_read_that_sent_a_chunk_is_not_moved(routing):
    routing.wire.script("get", Outcome(chunks=[b"part"], error=grpc.StatusCode.UNAVAILABLE))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for chunk in routing.router.get(new_archived_key(), archived=True, expected_size=8, expected_sha256=b""):
            received.append(chunk)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert received == [b"part"] and len(routing.wire.calls) == 1


async def test_an_archived_read_no_replica_can_serve_is_unavailable(routing):
    unavailable = Outcome(chunks=[], error=grpc.StatusCode.UNAVAILABLE)
    routing.wire.script("get", unavailable, unavailable)
    with pytest.raises(Unavailable, match="no blobstore replica is serving"):
        await read(routing.router, new_archived_key(), archived=True)
    assert sorted(routing.wire.addresses("get")) == sorted(r.address for r in routing.started)


@pytest.mark.parametrize("archived", [False, True])
async def test_other_failures_are_answered_as_they_are(routing, archived):
    key = new_archived_key() if archived else routing.started[0].transient_key()
    routing.wire.script("get", Outcome(chunks=[], error=grpc.StatusCode.DATA_LOSS))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read(routing.router, key, archived=archived)
    assert error.value.code() == grpc.StatusCode.DATA_LOSS
    assert len(routing.wire.calls) == 1
    assert len(routing.replicas.serving()) == 2


# -- deletes ---------------------------------------------------------------


async def test_a_transient_blob_is_deleted_where_its_key_says(routing):
    holder = routing.started[1]
    key = holder.transient_key()
    await routing.router.delete(key, archived=False)
    assert routing.wire.calls == [("delete", holder.address, key)]


async def test_a_transient_blob_of_a_gone_or_frozen_replica_needs_no_delete(routing):
    await routing.router.delete(new_transient_key(new_replica_id()), archived=False)
    frozen = routing.started[0]
    await frozen.freeze()
    await routing.replicas.refresh()
    await routing.router.delete(frozen.transient_key(), archived=False)
    assert routing.wire.calls == []


async def test_an_archived_blob_is_deleted_through_any_serving_replica(routing):
    key = new_archived_key()
    await routing.router.delete(key, archived=True)
    ((operation, address, deleted),) = routing.wire.calls
    assert (operation, deleted) == ("delete", key)
    assert address in {r.address for r in routing.started}


# -- over the real wire ----------------------------------------------------


async def test_put_get_and_delete_reach_a_real_blobstore(tmp_path: Path):
    config = make_config(tmp_path, port=free_port())
    blobstore, stop = await start_blobstore(config)
    replicas = BlobReplicas(
        [f"127.0.0.1:{config.port}"],
        max_message_bytes=MESSAGE_LIMIT,
        refresh_interval_seconds=0.1,
        describe_timeout_seconds=0.5,
    )
    router = BlobRouter(replicas, BlobStoreClient(FrontendConfig.from_env({})))
    try:
        await replicas.refresh()
        for archived in (False, True):
            blob = await router.place(archived)

            async def requests() -> AsyncIterator[bytes]:
                header = blobstore_pb2.PutBlobRequest.Header(key=blob.key, size=5, archived=archived)
                yield blobstore_pb2.PutBlobRequest(header=header).SerializeToString()
                yield blobstore_pb2.PutBlobRequest(body={"data_chunk": b"hello"}).SerializeToString()
                yield blobstore_pb2.PutBlobRequest(finish={}).SerializeToString()

            await blob.put(5, requests())
            chunks = [chunk async for chunk in router.get(blob.key, archived=archived, expected_size=5, expected_sha256=b"")]
            assert chunks == [b"\x0a\x05hello"]  # RetrieveVersionDataReplyChunk, still encoded
            await router.delete(blob.key, archived=archived)
            with pytest.raises(BlobMissing):
                [chunk async for chunk in router.get(blob.key, archived=archived, expected_size=5, expected_sha256=b"")]
    finally:
        await replicas.close()
        await stop()
