"""Helpers of the blobstore tests: storing/reading through a tier, and a real
grpc.aio blobstore server on 127.0.0.1 (port 0) with a client."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from cogmentAPI import model_registry_pb2 as api
from registry import blobstore_pb2, blobstore_pb2_grpc

from services.blobstore.config import BlobstoreConfig
from services.blobstore.server import create_server
from services.blobstore.store import BlobTier
from services.common.config import MIB  # noqa: F401 - the tests take it from here
from services.common.service_names import BLOBSTORE
from services.common.stream_refusal import refusal_behind


async def store(tier: BlobTier, key: str, chunks: Iterable[bytes]) -> None:
    chunks = list(chunks)
    writer = await tier.open_writer(key, sum(map(len, chunks)))
    try:
        for chunk in chunks:
            await writer.write(chunk)
        await writer.commit()
    finally:
        await writer.abort()


async def read_all(tier: BlobTier, key: str, *, chunk_size: int = MIB, expected_size=None, expected_sha256=None) -> list[bytes]:
    reader = await tier.open_reader(
        key, expected_size=expected_size, expected_sha256=expected_sha256, chunk_size=chunk_size
    )
    async with reader:
        return [chunk async for chunk in reader]


def temp_files(archive_dir: Path) -> list[str]:
    """Upload temp files (not the owner locks) in the file tier's temp dir."""
    temp = archive_dir / "blobs" / ".tmp"
    return sorted(n for n in os.listdir(temp) if not n.endswith(".lock")) if temp.exists() else []


def blob_files(archive_dir: Path) -> list[str]:
    """Published blob files (outside the tier's own dot-names: temp files,
    publication records, the swept database's id)."""
    root = archive_dir / "blobs"
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def open_descriptors_of(path: Path) -> int:
    """How many descriptors of this process have `path` open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            continue
    return count


# -- the gRPC server ---------------------------------------------------------


@dataclass
class Blobstore:
    stub: blobstore_pb2_grpc.BlobStoreStub
    health: health_pb2_grpc.HealthStub
    archive_dir: Path
    config: BlobstoreConfig
    # For calls in raw bytes (what the frontend forwards), see `raw_put` / `raw_get`.
    channel: grpc.aio.Channel

    async def put(self, key: str, data: bytes, *, archived: bool, chunk_size: int = MIB) -> int:
        reply = await self.stub.PutBlob(put_requests(key, data, archived=archived, chunk_size=chunk_size))
        return reply.size

    async def get(self, key: str, *, archived: bool, **fields) -> list[bytes]:
        request = blobstore_pb2.GetBlobRequest(key=key, archived=archived, **fields)
        return [reply.data_chunk async for reply in self.stub.GetBlob(request)]

    async def get_failing(
        self, code: grpc.StatusCode, key: str, *, archived: bool, **fields
    ) -> tuple[str, list[bytes]]:
        """A GetBlob that must end with `code`: its details, and the chunks
        received before it did."""
        request = blobstore_pb2.GetBlobRequest(key=key, archived=archived, **fields)
        received: list[bytes] = []

        async def consume() -> None:
            async for reply in self.stub.GetBlob(request):
                received.append(reply.data_chunk)

        return await expect_status(code, consume()), received

    async def raw_put(self, messages: Iterable[bytes]) -> int:
        """PutBlob with the given encoded messages, sent as they are."""
        put = self.channel.stream_unary(
            f"/{BLOBSTORE}/PutBlob",
            request_serializer=None,
            response_deserializer=blobstore_pb2.PutBlobReply.FromString,
        )
        return (await put(iter(messages))).size

    async def raw_get(self, key: str, *, archived: bool, **fields) -> list[bytes]:
        """GetBlob's replies as the bytes received (not parsed)."""
        get = self.channel.unary_stream(
            f"/{BLOBSTORE}/GetBlob",
            request_serializer=blobstore_pb2.GetBlobRequest.SerializeToString,
            response_deserializer=None,
        )
        return [raw async for raw in get(blobstore_pb2.GetBlobRequest(key=key, archived=archived, **fields))]

    async def status(self, service: str = BLOBSTORE) -> int:
        return (await self.health.Check(health_pb2.HealthCheckRequest(service=service))).status


async def expect_status(code: grpc.StatusCode, awaitable, call: grpc.aio.Call | None = None) -> str:
    """The details of the status `awaitable` fails with, which must be
    `code`; read as the frontend reads a PutBlob refusal (stream_refusal.py)
    when `call` (or `awaitable` itself) is the call."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    call = call if call is not None else awaitable if isinstance(awaitable, grpc.aio.Call) else None
    error = raised.value if call is None else await refusal_behind(call, raised.value)
    assert error.code() == code, error.details()
    return error.details()


async def stalled_upload(messages, stalled: asyncio.Event) -> AsyncIterator[blobstore_pb2.PutBlobRequest]:
    """Sends `messages`, then hangs like a client that stopped sending."""
    for message in messages:
        yield message
    stalled.set()
    await asyncio.Event().wait()


async def eventually(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.01)


async def is_missing(blobstore: Blobstore, key: str, archived: bool) -> bool:
    try:
        await blobstore.get(key, archived=archived)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return True
    return False


def put_requests(
    key: str, data: bytes, *, archived: bool, chunk_size: int = MIB, size: int | None = None, finish: bool = True
) -> list[blobstore_pb2.PutBlobRequest]:
    header = blobstore_pb2.PutBlobRequest.Header(
        key=key, size=len(data) if size is None else size, archived=archived
    )
    messages = [blobstore_pb2.PutBlobRequest(header=header)]
    messages += [
        blobstore_pb2.PutBlobRequest(body=api.CreateVersionRequestChunk.Body(data_chunk=data[i : i + chunk_size])) for i in range(0, len(data), chunk_size)
    ]
    if finish:
        messages.append(blobstore_pb2.PutBlobRequest(finish=blobstore_pb2.PutBlobRequest.Finish()))
    return messages


async def wait_serving(health: health_pb2_grpc.HealthStub, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=BLOBSTORE))
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return
        if loop.time() > deadline:
            raise AssertionError("the blobstore never became SERVING")
        await asyncio.sleep(0.01)


def make_config(tmp_path: Path, **overrides) -> BlobstoreConfig:
    fields = dict(bind_host="127.0.0.1", port=0, archive_dir=tmp_path, memory_max_bytes=16 * MIB)
    fields.update(overrides)
    return BlobstoreConfig(**fields)


async def start_blobstore(config: BlobstoreConfig, *, wait: bool = True):
    app = await create_server(config)
    await app.server.start()
    limit = config.max_message_bytes
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{app.port}",
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    blobstore = Blobstore(
        blobstore_pb2_grpc.BlobStoreStub(channel),
        health_pb2_grpc.HealthStub(channel),
        config.archive_dir,
        config,
        channel,
    )
    if wait:
        await wait_serving(blobstore.health)

    async def stop() -> None:
        await channel.close()
        await app.server.stop(0)
        await app.on_stop()

    return blobstore, stop


class FakeMetadata:
    """The sweeper's view of metadata (`sweeper.MetadataView`) without a
    metadata service: a database id, version counts, a set of referenced
    keys, and failures to inject."""

    def __init__(
        self,
        referenced: set[str] = frozenset(),
        *,
        failures: int = 0,
        database_id: str = "db-1",
        archived_versions: int = 1,
        transient_versions: int = 1,
    ) -> None:
        self.referenced = set(referenced)
        self.failures = failures
        self.database_id = database_id
        self.archived_versions = archived_versions
        self.transient_versions = transient_versions
        self.batches: list[list[str]] = []

    async def describe_database(self):  # noqa: ANN201 - a sweeper.DatabaseView
        from services.blobstore.sweeper import DatabaseView

        return DatabaseView(self.database_id, self.archived_versions, self.transient_versions)

    async def find_unreferenced(self, keys: list[str]) -> list[str]:
        self.batches.append(list(keys))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("metadata is down")
        return [key for key in keys if key not in self.referenced]

    @property
    def asked(self) -> set[str]:
        return {key for batch in self.batches for key in batch}


def age_file_blob(tier, key: str, seconds: float) -> None:  # noqa: ANN001 - a FileTier
    """Makes a file blob's publication record `seconds` old."""
    stamp = time.time() - seconds
    os.utime(tier.record_path_of(key), (stamp, stamp))
