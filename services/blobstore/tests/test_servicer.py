"""`registry.BlobStore` through a real grpc.aio server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from cogmentAPI import model_registry_pb2 as api
from registry import blobstore_pb2, metadata_pb2, metadata_pb2_grpc

from services.blobstore.store import FileTier
from services.common.blob_keys import holder_of, new_archived_key, new_transient_key
from services.blobstore.store.filesystem import FileReader
from services.blobstore.tests.helpers import (
    MIB,
    Blobstore,
    blob_files,
    eventually,
    expect_status,
    is_missing,
    make_config,
    open_descriptors_of,
    put_requests,
    stalled_upload,
    start_blobstore,
    temp_files,
    wait_serving,
)
from services.common.service_names import BLOBSTORE

BOTH_TIERS = pytest.mark.parametrize("archived", [False, True], ids=["memory", "archive"])


@BOTH_TIERS
async def test_round_trip_of_a_few_mib(blobstore: Blobstore, archived: bool):
    data = os.urandom(5 * MIB + 123)
    digest = hashlib.sha256(data).digest()
    assert await blobstore.put("round-trip", data, archived=archived, chunk_size=MIB) == len(data)
    chunks = await blobstore.get("round-trip", archived=archived, expected_size=len(data), expected_sha256=digest)
    # chunk_size 0: the configured default (5 MiB).
    assert max(map(len, chunks)) <= blobstore.config.sent_chunk_size
    assert b"".join(chunks) == data
    chunks = await blobstore.get("round-trip", archived=archived, chunk_size=MIB // 2)
    assert [len(c) for c in chunks] == [MIB // 2] * 10 + [123]
    assert b"".join(chunks) == data
    await blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key="round-trip", archived=archived))
    await blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key="round-trip", archived=archived))
    assert await is_missing(blobstore, "round-trip", archived)


async def test_tiers_are_separate(blobstore: Blobstore):
    await blobstore.put("tiered", b"memory", archived=False)
    assert await is_missing(blobstore, "tiered", archived=True)
    assert blob_files(blobstore.archive_dir) == []
    await blobstore.put("tiered", b"archive", archived=True)
    assert b"".join(await blobstore.get("tiered", archived=False)) == b"memory"
    assert b"".join(await blobstore.get("tiered", archived=True)) == b"archive"


@BOTH_TIERS
async def test_zero_byte_blob_has_no_chunk(blobstore: Blobstore, archived: bool):
    await blobstore.put("empty", b"", archived=archived)
    empty_sha = hashlib.sha256(b"").digest()
    assert await blobstore.get("empty", archived=archived, expected_size=0, expected_sha256=empty_sha) == []


@BOTH_TIERS
async def test_first_message_must_be_a_header(blobstore: Blobstore, archived: bool):
    body = put_requests("headless", b"abc", archived=archived)[1:]
    details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, blobstore.stub.PutBlob(iter(body)))
    assert "header" in details
    details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, blobstore.stub.PutBlob(iter([])))
    assert "no message" in details


@BOTH_TIERS
async def test_unusual_body_encodings_take_the_slow_path(blobstore: Blobstore, archived: bool):
    """Canonical bodies are read without protobuf; any other valid encoding
    (another runtime's, a hand-written client's) still stores the right bytes."""
    header = put_requests("unusual", b"x" * 12, archived=archived)[0]
    raw = [
        header.SerializeToString(),
        b"\x12\x05\x0a\x03abc",  # canonical
        b"\x12\x00",  # empty body (proto3 leaves empty data out)
        b"\x12\x02\x0a\x00",  # explicitly empty data
        b"\x12\x07\x18\x01\x0a\x03def",  # an unknown field first
        b"\x12\x0a\x0a\x03xxx\x0a\x03ghi",  # data_chunk twice: the last counts
        b"\x12\x85\x00\x0a\x03jkl",  # a non-minimal length
        blobstore_pb2.PutBlobRequest(finish=blobstore_pb2.PutBlobRequest.Finish()).SerializeToString(),
    ]
    assert await blobstore.raw_put(raw) == 12
    assert b"".join(await blobstore.get("unusual", archived=archived)) == b"abcdefghijkl"


@BOTH_TIERS
async def test_a_message_that_is_not_protobuf_is_invalid(blobstore: Blobstore, archived: bool):
    header = put_requests("garbled", b"abc", archived=archived)[0].SerializeToString()
    truncated_body = b"\x12\x05\x0a\x03ab"
    details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, blobstore.raw_put([header, truncated_body]))
    assert "not a valid PutBlobRequest" in details
    assert await is_missing(blobstore, "garbled", archived)
    assert temp_files(blobstore.archive_dir) == []


@BOTH_TIERS
async def test_get_blob_replies_are_the_protobuf_encoding(blobstore: Blobstore, archived: bool):
    """Replies are encoded by hand; the frontend forwards them as they are."""
    data = os.urandom(2 * MIB + 5)
    await blobstore.put("encoded", data, archived=archived, chunk_size=MIB)
    # Half the stored chunks: the memory tier re-chunks (by slicing views).
    replies = await blobstore.raw_get("encoded", archived=archived, chunk_size=MIB // 2)
    assert replies == [
        api.RetrieveVersionDataReplyChunk(data_chunk=data[i : i + MIB // 2]).SerializeToString()
        for i in range(0, len(data), MIB // 2)
    ]


@BOTH_TIERS
async def test_bytes_beyond_size_fail_at_once(blobstore: Blobstore, archived: bool):
    messages = put_requests("too-long", b"x" * 20, archived=archived, size=10, chunk_size=5, finish=False)
    # The client never ends its stream: the error must not wait for it.
    call = blobstore.stub.PutBlob(stalled_upload(messages, asyncio.Event()))
    details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, asyncio.wait_for(call, 5), call)
    assert "more than the 10 bytes" in details
    assert await is_missing(blobstore, "too-long", archived)
    assert temp_files(blobstore.archive_dir) == []


@BOTH_TIERS
async def test_finish_before_all_bytes(blobstore: Blobstore, archived: bool):
    messages = put_requests("short", b"x" * 7, archived=archived, size=10)
    details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, blobstore.stub.PutBlob(iter(messages)))
    assert "received 7 bytes but the header announced 10" in details
    assert await is_missing(blobstore, "short", archived)
    assert temp_files(blobstore.archive_dir) == []


@BOTH_TIERS
async def test_stream_without_finish_is_aborted(blobstore: Blobstore, archived: bool):
    messages = put_requests("unfinished", b"x" * 10, archived=archived, finish=False)
    details = await expect_status(grpc.StatusCode.ABORTED, blobstore.stub.PutBlob(iter(messages)))
    assert "ended before finish" in details
    assert await is_missing(blobstore, "unfinished", archived)
    assert temp_files(blobstore.archive_dir) == [] and blob_files(blobstore.archive_dir) == []


async def test_a_stalled_upload_holds_only_what_it_sent_and_a_cancel_keeps_nothing(blobstore: Blobstore):
    budget = blobstore.config.memory_max_bytes
    stalled = asyncio.Event()
    messages = put_requests("cancelled", b"x" * MIB, archived=False, size=budget, finish=False)
    call = blobstore.stub.PutBlob(stalled_upload(messages, stalled))
    await stalled.wait()
    # The stalled upload holds what it sent (1 MiB), not what it announced:
    # the rest of the budget is free for others...
    await blobstore.put("others", b"x" * (budget - MIB), archived=False)
    await eventually(lambda: budget_is_taken(blobstore))
    await blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key="others"))
    call.cancel()
    # ... and released once the client is gone.
    await eventually(lambda: budget_is_free(blobstore, budget))
    assert await is_missing(blobstore, "cancelled", False)


async def budget_is_taken(blobstore: Blobstore) -> bool:
    try:
        await blobstore.put("probe", b"x", archived=False)
    except grpc.aio.AioRpcError as error:
        return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key="probe"))
    return False


async def budget_is_free(blobstore: Blobstore, budget: int) -> bool:
    try:
        await blobstore.put("probe-full", b"x" * budget, archived=False)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False
    await blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key="probe-full"))
    return True


async def test_client_cancel_mid_upload_keeps_no_file(blobstore: Blobstore):
    stalled = asyncio.Event()
    messages = put_requests("cancelled", b"x" * MIB, archived=True, size=4 * MIB, finish=False)
    call = blobstore.stub.PutBlob(stalled_upload(messages, stalled))
    await stalled.wait()

    async def temp_file_exists() -> bool:
        return bool(temp_files(blobstore.archive_dir))

    async def temp_file_gone() -> bool:
        return not temp_files(blobstore.archive_dir)

    await eventually(temp_file_exists)
    call.cancel()
    await eventually(temp_file_gone)
    assert blob_files(blobstore.archive_dir) == []
    assert await is_missing(blobstore, "cancelled", True)


async def test_memory_budget_exceeded(blobstore: Blobstore):
    budget = blobstore.config.memory_max_bytes
    await blobstore.put("resident", b"x" * (budget - 10), archived=False)
    messages = put_requests("over", b"y" * 11, archived=False)
    details = await expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, blobstore.stub.PutBlob(iter(messages)))
    assert f"holds {budget - 10} bytes" in details and f"budget of {budget} bytes" in details
    assert "COGMENT_MODEL_REGISTRY_BLOBSTORE_MEMORY_MAX_BYTES" in details
    # Archived blobs do not count against the memory budget.
    await blobstore.put("over", b"y" * 11, archived=True)
    await blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key="resident"))
    await blobstore.put("over", b"y" * 11, archived=False)


@pytest.mark.parametrize("key", ["", "../../etc/passwd", "a/b", "x" * 129])
async def test_bad_key(blobstore: Blobstore, key: str):
    for archived in (False, True):
        details = await expect_status(
            grpc.StatusCode.INVALID_ARGUMENT, blobstore.stub.PutBlob(iter(put_requests(key, b"x", archived=archived)))
        )
        assert "blob key" in details
        await expect_status(grpc.StatusCode.INVALID_ARGUMENT, blobstore.get(key, archived=archived))
        await expect_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key=key, archived=archived)),
        )


@BOTH_TIERS
async def test_already_exists(blobstore: Blobstore, archived: bool):
    await blobstore.put("once", b"first", archived=archived)
    details = await expect_status(
        grpc.StatusCode.ALREADY_EXISTS, blobstore.put("once", b"second", archived=archived)
    )
    assert "blob once already exists" in details
    assert b"".join(await blobstore.get("once", archived=archived)) == b"first"


@BOTH_TIERS
async def test_not_found(blobstore: Blobstore, archived: bool):
    details = await expect_status(grpc.StatusCode.NOT_FOUND, blobstore.get("missing", archived=archived))
    assert details == "blob missing not found"
    await blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key="missing", archived=archived))


@BOTH_TIERS
async def test_size_mismatch_is_data_loss_before_any_chunk(blobstore: Blobstore, archived: bool):
    await blobstore.put("sized", b"abc", archived=archived)
    details, received = await blobstore.get_failing(
        grpc.StatusCode.DATA_LOSS, "sized", archived=archived, expected_size=4
    )
    assert "3 bytes stored, 4 expected" in details and received == []


@BOTH_TIERS
async def test_a_recorded_size_of_zero_is_checked(blobstore: Blobstore, archived: bool):
    """expected_size 0 means "not set", unless a digest is given: then the
    blob was recorded as zero bytes."""
    await blobstore.put("not-empty", b"abc", archived=archived)
    assert b"".join(await blobstore.get("not-empty", archived=archived, expected_size=0)) == b"abc"
    request = dict(expected_size=0, expected_sha256=hashlib.sha256(b"").digest())
    details = await expect_status(grpc.StatusCode.DATA_LOSS, blobstore.get("not-empty", archived=archived, **request))
    assert "3 bytes stored, 0 expected" in details


async def test_corrupt_archive_is_data_loss_instead_of_the_last_chunk(blobstore: Blobstore):
    data = os.urandom(3 * MIB)
    await blobstore.put("rotten", data, archived=True)
    path = blobstore.archive_dir / "blobs" / "ro" / "rotten"
    corrupt = bytearray(data)
    corrupt[12345] ^= 0xFF
    path.write_bytes(corrupt)
    recorded = dict(expected_size=len(data), expected_sha256=hashlib.sha256(data).digest(), chunk_size=MIB)
    details, received = await blobstore.get_failing(grpc.StatusCode.DATA_LOSS, "rotten", archived=True, **recorded)
    assert details == "stored data of blob rotten is corrupt: sha256 mismatch"
    assert len(received) == 2  # of 3: the client never completes a stream of wrong bytes


async def test_bad_expected_sha256_length(blobstore: Blobstore):
    await blobstore.put("hashed", b"abc", archived=True)
    details = await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, blobstore.get("hashed", archived=True, expected_sha256=b"short")
    )
    assert "32 bytes" in details


async def test_health_is_serving_only_once_the_tiers_are_ready(tmp_path: Path, monkeypatch):
    gate = threading.Event()
    original = FileTier._open_sync

    def slow_open(self: FileTier) -> None:
        gate.wait(10)
        original(self)

    monkeypatch.setattr(FileTier, "_open_sync", slow_open)
    blobstore, stop = await start_blobstore(make_config(tmp_path), wait=False)
    try:
        for service in ("", BLOBSTORE):
            assert await blobstore.status(service) == health_pb2.HealthCheckResponse.NOT_SERVING
        # A call arriving meanwhile waits for the storage instead of failing.
        early = asyncio.ensure_future(blobstore.put("early", b"abc", archived=True))
        await asyncio.sleep(0.05)
        assert not early.done()
        gate.set()
        await wait_serving(blobstore.health)
        assert await blobstore.status("") == health_pb2.HealthCheckResponse.SERVING
        assert await early == 3
    finally:
        gate.set()
        await stop()


async def test_leftover_temp_files_are_removed_at_start(tmp_path: Path):
    leftover = tmp_path / "blobs" / ".tmp" / "crashed.key.0"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    blobstore, stop = await start_blobstore(make_config(tmp_path))
    try:
        assert not leftover.exists()
    finally:
        await stop()


class FakeMetadataService(metadata_pb2_grpc.MetadataServiceServicer):
    def __init__(self, referenced: set[str]) -> None:
        self.referenced = referenced
        self.requests: list[list[str]] = []

    async def DescribeDatabase(self, request, context):
        return metadata_pb2.DescribeDatabaseReply(database_id="db-1", archived_versions=1, transient_versions=0)

    async def FindUnreferencedBlobs(self, request, context):
        self.requests.append(list(request.keys))
        return metadata_pb2.FindUnreferencedBlobsReply(keys=[k for k in request.keys if k not in self.referenced])


async def test_sweeper_asks_metadata_and_deletes_old_orphans(tmp_path: Path):
    metadata = FakeMetadataService(referenced={"old-referenced"})
    metadata_server = grpc.aio.server()
    metadata_pb2_grpc.add_MetadataServiceServicer_to_server(metadata, metadata_server)
    metadata_port = metadata_server.add_insecure_port("127.0.0.1:0")
    await metadata_server.start()
    config = make_config(
        tmp_path,
        internal_address=f"127.0.0.1:{metadata_port}",
        sweep_interval_seconds=0.05,
        orphan_grace_seconds=600,
    )
    blobstore, stop = await start_blobstore(config)
    try:
        for key in ("old-orphan", "old-referenced", "young-orphan"):
            await blobstore.put(key, b"data", archived=True)
        old = time.time() - 3600
        for key in ("old-orphan", "old-referenced"):
            # Their publication records: a blob's age is its record's.
            os.utime(tmp_path / "blobs" / ".published" / key[:2] / key, (old, old))
        await eventually(lambda: is_missing(blobstore, "old-orphan", True))
        assert not await is_missing(blobstore, "old-referenced", True)
        assert not await is_missing(blobstore, "young-orphan", True)
        asked = {key for keys in metadata.requests for key in keys}
        assert "young-orphan" not in asked and "old-referenced" in asked
    finally:
        await stop()
        await metadata_server.stop(0)


async def test_chunk_size_is_capped_by_the_message_limit(blobstore: Blobstore):
    data = os.urandom(17 * MIB)
    await blobstore.put("large", data, archived=True)
    chunks = await blobstore.get("large", archived=True, chunk_size=64 * MIB)
    assert b"".join(chunks) == data
    assert max(map(len, chunks)) < blobstore.config.max_message_bytes


async def test_a_cancelled_read_closes_its_file(blobstore: Blobstore):
    await blobstore.put("abandoned-read", os.urandom(8 * MIB), archived=True)
    path = blobstore.archive_dir / "blobs" / "ab" / "abandoned-read"
    call = blobstore.stub.GetBlob(blobstore_pb2.GetBlobRequest(key="abandoned-read", archived=True, chunk_size=MIB))
    await call.read()
    assert open_descriptors_of(path) == 1
    call.cancel()

    async def closed() -> bool:
        return open_descriptors_of(path) == 0

    await eventually(closed)


async def test_a_slow_reader_holds_the_server_back(blobstore: Blobstore, monkeypatch):
    """The server reads (at most one chunk ahead of) what gRPC flow control
    lets it send: it never loads a blob on a slow reader's behalf."""
    reads = 0
    original = FileReader._read

    def counting_read(self, size: int) -> bytes:
        nonlocal reads
        reads += 1
        return original(self, size)

    monkeypatch.setattr(FileReader, "_read", counting_read)
    await blobstore.put("slow-read", os.urandom(64 * MIB), archived=True, chunk_size=4 * MIB)
    call = blobstore.stub.GetBlob(blobstore_pb2.GetBlobRequest(key="slow-read", archived=True, chunk_size=MIB))
    await call.read()
    await asyncio.sleep(0.5)  # the client stops reading
    assert reads < 24, f"{reads} of 64 chunks read for a client that took one"
    call.cancel()


async def test_describe_replica_names_the_holder_of_transient_keys(blobstore: Blobstore):
    first = await blobstore.stub.DescribeReplica(blobstore_pb2.DescribeReplicaRequest())
    assert first.serving
    assert holder_of(new_transient_key(first.replica_id)) == first.replica_id
    # Stable for the life of the process.
    assert (await blobstore.stub.DescribeReplica(blobstore_pb2.DescribeReplicaRequest())).replica_id == first.replica_id

    own_key = new_transient_key(first.replica_id)
    assert await blobstore.put(own_key, b"mine", archived=False) == 4
    assert await blobstore.get(own_key, archived=False) == [b"mine"]


async def test_a_transient_key_of_another_replica_is_refused(blobstore: Blobstore):
    own = (await blobstore.stub.DescribeReplica(blobstore_pb2.DescribeReplicaRequest())).replica_id
    other = "0" * 16 if own != "0" * 16 else "1" * 16
    key = new_transient_key(other)
    details = await expect_status(grpc.StatusCode.FAILED_PRECONDITION, blobstore.put(key, b"lost", archived=False))
    assert other in details and own in details
    assert await is_missing(blobstore, key, archived=False)
    # Archived keys name no replica: any replica stores them.
    assert await blobstore.put(new_archived_key(), b"shared", archived=True) == 6


@pytest.mark.parametrize("archived", [False, True])
async def test_an_upload_whose_sender_goes_quiet_is_ended_and_leaves_nothing(tmp_path, archived):
    from services.blobstore.tests.helpers import make_config, start_blobstore
    from services.common.limits import RequestLimits

    config = make_config(tmp_path, limits=RequestLimits(upload_idle_timeout_seconds=0.5))
    running, stop = await start_blobstore(config)
    try:
        stalled = asyncio.Event()
        messages = put_requests("quiet", b"x" * MIB, archived=archived, size=4 * MIB, finish=False)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await asyncio.wait_for(running.stub.PutBlob(stalled_upload(messages, stalled)), 10)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "COGMENT_MODEL_REGISTRY_UPLOAD_IDLE_TIMEOUT_SECONDS" in error.value.details()
        assert await is_missing(running, "quiet", archived)
        if archived:
            assert [p.name for p in (tmp_path / "blobs" / ".tmp").iterdir() if not p.name.endswith(".lock")] == []
        else:
            await eventually(lambda: budget_is_free(running, config.memory_max_bytes))
    finally:
        await stop()
