"""What is particular to the S3 tier (the contract is in test_tier_contract),
against a real moto server: layout, multipart uploads and their bounds,
conditional writes, abandoned uploads, waiting for the bucket."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("boto3")

from botocore.exceptions import ClientError, FlexibleChecksumError, ReadTimeoutError  # noqa: E402

from services.blobstore.store.s3 import MAX_OBJECT_SIZE, MAX_PARTS, PARTS_IN_FLIGHT, S3Reader, S3Tier  # noqa: E402
from services.blobstore.sweeper import Sweeper  # noqa: E402
from services.blobstore.tests.tiers import S3Archive, S3Server  # noqa: E402
from services.blobstore.tests.helpers import MIB, FakeMetadata, read_all, store  # noqa: E402
from services.common.errors import AlreadyExists, DataLoss, ResourceExhausted, Unavailable  # noqa: E402

HOUR = 3600.0


@pytest.fixture
async def default_parts(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Archive]:
    """A tier with the production part size (8 MiB)."""
    tier = S3Tier(s3_bucket, "archive", io_threads=8)
    await tier.open()
    yield S3Archive(tier, s3_server)
    await tier.close()


def in_mib_chunks(data: bytes) -> list[bytes]:
    return [data[i : i + MIB] for i in range(0, len(data), MIB)]


class CallSpy:
    """Wraps one method of the tier's botocore client, recording its calls
    (and how many ran at once), optionally doing something else instead."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client, method: str, replacement=None, delay: float = 0.0):
        self.real = getattr(client, method)
        self.calls: list[dict] = []
        self.active = self.max_active = 0
        self._lock = threading.Lock()
        self._replacement = replacement
        self._delay = delay
        monkeypatch.setattr(client, method, self)

    def __call__(self, **kwargs):
        with self._lock:
            self.calls.append(kwargs)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self._delay)
            if self._replacement is not None:
                return self._replacement(self.real, **kwargs)
            return self.real(**kwargs)
        finally:
            with self._lock:
                self.active -= 1


def client_error(code: str, status: int, operation: str) -> ClientError:
    reply = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(reply, operation)


async def test_endpoint_and_credentials_come_from_the_standard_variables(s3_archive: S3Archive):
    client = s3_archive.tier._client
    assert client.meta.endpoint_url == s3_archive.server.endpoint  # AWS_ENDPOINT_URL, read by botocore
    assert client.meta.region_name == "us-east-1"
    assert client._request_signer._credentials.access_key == "testing"


async def test_objects_are_laid_out_under_the_prefix(s3_archive: S3Archive):
    await store(s3_archive.tier, "abcdef", [b"data"])
    await store(s3_archive.tier, "z", [b"one-character key"])
    assert s3_archive.objects() == ["archive/ab/abcdef", "archive/z/z"]
    # Whatever else is in the bucket is not a blob.
    for name in ("archive/ab/xyz", "archive/README", "archive/ab/abc/d", "elsewhere/ab/abc", "ab/abc"):
        s3_archive.client.put_object(Bucket=s3_archive.bucket, Key=name, Body=b"not a blob")
    assert sorted(blob.key for blob in await s3_archive.tier.list_blobs()) == ["abcdef", "z"]


async def test_without_a_prefix_blobs_are_at_the_top(s3_server: S3Server, s3_bucket: str):
    tier = S3Tier(s3_bucket)
    await tier.open()
    try:
        await store(tier, "top", [b"x"])
        archive = S3Archive(tier, s3_server)
        assert archive.objects() == ["to/top"]
        assert [blob.key for blob in await tier.list_blobs()] == ["top"]
    finally:
        await tier.close()


async def test_a_small_blob_is_one_put_object(default_parts: S3Archive, monkeypatch):
    client = default_parts.tier._client
    creates = CallSpy(monkeypatch, client, "create_multipart_upload")
    puts = CallSpy(monkeypatch, client, "put_object")
    data = os.urandom(8 * MIB)  # one part's worth
    await store(default_parts.tier, "small", in_mib_chunks(data))
    # The blob's PutObject, then its (empty) publication record's.
    assert creates.calls == [] and len(puts.calls) == 2
    assert puts.calls[0]["IfNoneMatch"] == "*"
    assert puts.calls[1]["Key"] == default_parts.tier.record_key("small") and puts.calls[1]["Body"] == b""
    assert b"".join(await read_all(default_parts.tier, "small", expected_sha256=hashlib.sha256(data).digest())) == data


async def test_a_large_blob_is_a_multipart_upload_of_8_mib_parts(default_parts: S3Archive, monkeypatch):
    tier, client = default_parts.tier, default_parts.tier._client
    # Slow parts: the writer must wait for them rather than buffer more.
    parts = CallSpy(monkeypatch, client, "upload_part", delay=0.1)
    data = os.urandom(20 * MIB)
    writer = await tier.open_writer("large", len(data))
    for chunk in in_mib_chunks(data):
        await writer.write(chunk)
        assert writer._buffered < 8 * MIB  # a full part is sent at once
        assert len(writer._uploading) <= PARTS_IN_FLIGHT
    # All bytes sent, the last part not yet: nothing visible, one upload pending.
    assert default_parts.stored() == [] and default_parts.pending() == 1
    await writer.commit()
    assert [len(call["Body"]) for call in parts.calls] == [8 * MIB, 8 * MIB, 4 * MIB]
    assert parts.max_active == PARTS_IN_FLIGHT  # pipelined, and bounded
    assert default_parts.pending() == 0
    head = client.head_object(Bucket=tier.bucket, Key=tier.object_key("large"))
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == len(data)
    digest = hashlib.sha256(data).digest()
    chunks = await read_all(tier, "large", chunk_size=5 * MIB, expected_size=len(data), expected_sha256=digest)
    assert [len(c) for c in chunks] == [5 * MIB] * 4
    assert b"".join(chunks) == data


async def test_abort_of_a_multipart_upload_leaves_nothing(s3_archive: S3Archive):
    data = os.urandom(12 * MIB)
    writer = await s3_archive.tier.open_writer("aborted", 20 * MIB)
    for chunk in in_mib_chunks(data):
        await writer.write(chunk)
    assert s3_archive.pending() == 1
    await writer.abort()
    assert s3_archive.stored() == [] and s3_archive.pending() == 0


async def test_a_commit_cancelled_after_the_object_appeared_leaves_nothing(s3_archive: S3Archive, monkeypatch):
    """The client goes away while CompleteMultipartUpload is on its way: it was
    told the upload failed, so the object must not stay."""
    entered, release = threading.Event(), threading.Event()

    def gated(real, **kwargs):
        entered.set()
        release.wait(10)
        return real(**kwargs)

    CallSpy(monkeypatch, s3_archive.tier._client, "complete_multipart_upload", gated)
    task = asyncio.create_task(store(s3_archive.tier, "cancelled", in_mib_chunks(os.urandom(12 * MIB))))
    while not entered.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.05)
    release.set()  # the completion happens after all...
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s3_archive.stored() == [] and s3_archive.pending() == 0  # ... and is undone


async def test_racing_multipart_uploads_of_one_key(s3_archive: S3Archive):
    tier = s3_archive.tier
    first_data, second_data = os.urandom(11 * MIB), os.urandom(11 * MIB)
    first = await tier.open_writer("raced", len(first_data))
    second = await tier.open_writer("raced", len(second_data))
    for a, b in zip(in_mib_chunks(first_data), in_mib_chunks(second_data)):
        await first.write(a)
        await second.write(b)
    await first.commit()
    with pytest.raises(AlreadyExists, match="blob raced already exists"):
        await second.commit()
    await second.abort()
    assert b"".join(await read_all(tier, "raced")) == first_data
    assert s3_archive.pending() == 0


async def test_a_retried_request_that_had_succeeded_is_no_overwrite(s3_archive: S3Archive, monkeypatch):
    """botocore retries a PutObject whose reply was lost: the retry finds the
    key taken, by the very upload that retries."""

    def lost_reply(real, **kwargs):
        real(**kwargs)
        return real(**kwargs)  # 412: If-None-Match

    CallSpy(monkeypatch, s3_archive.tier._client, "put_object", lost_reply)
    await store(s3_archive.tier, "retried", [b"abc"])
    assert b"".join(await read_all(s3_archive.tier, "retried")) == b"abc"


async def test_a_store_without_conditional_writes(s3_archive: S3Archive, monkeypatch, caplog):
    """A store refusing If-None-Match: the key is checked just before storing."""

    def refuse_conditions(real, **kwargs):
        if "IfNoneMatch" in kwargs:
            raise client_error("NotImplemented", 501, "PutObject")
        return real(**kwargs)

    puts = CallSpy(monkeypatch, s3_archive.tier._client, "put_object", refuse_conditions)
    tier = s3_archive.tier
    first = await tier.open_writer("unconditional", 1)
    second = await tier.open_writer("unconditional", 1)
    await first.write(b"1")
    await second.write(b"2")
    with caplog.at_level(logging.WARNING, "registry.blobstore"):
        await first.commit()
    assert "refuses conditional writes" in caplog.text
    with pytest.raises(AlreadyExists):
        await second.commit()
    await second.abort()
    assert b"".join(await read_all(tier, "unconditional")) == b"1"
    blob_puts = [call for call in puts.calls if call["Key"] == tier.object_key("unconditional")]
    assert [("IfNoneMatch" in call) for call in blob_puts] == [True, False]  # asked once, then not


async def test_stale_multipart_uploads_are_aborted_by_the_sweeper(s3_archive: S3Archive):
    """A blobstore that died mid-upload leaves a multipart upload: once no part
    arrived for the grace period, the sweeper aborts it; live ones stay."""
    client, bucket, tier = s3_archive.client, s3_archive.bucket, s3_archive.tier

    def start_upload(name: str) -> str:
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=name)["UploadId"]
        client.upload_part(Bucket=bucket, Key=name, UploadId=upload_id, PartNumber=1, Body=b"x" * MIB)
        return upload_id

    start_upload(tier.object_key("dead-upload"))
    start_upload("elsewhere/de/dead-upload")  # not the tier's: never touched
    sweeper = Sweeper([tier], None, interval_seconds=60, grace_seconds=600)
    await sweeper.sweep_once()
    assert s3_archive.pending() == 2  # a part arrived just now: maybe alive
    tier._clock = lambda: time.time() + HOUR
    await sweeper.sweep_once()
    assert [upload["Key"] for upload in s3_archive.uploads()] == ["elsewhere/de/dead-upload"]
    assert await tier.remove_abandoned_uploads() == 0


async def test_an_upload_in_progress_is_never_aborted_however_slow(s3_archive: S3Archive):
    tier = s3_archive.tier
    writer = await tier.open_writer("slow", 12 * MIB)
    for _ in range(6):  # more than a part: a multipart upload is open
        await writer.write(b"x" * MIB)
    await writer._collect_part()  # the first part has arrived
    assert s3_archive.pending() == 1
    tier._clock = lambda: time.time() + HOUR  # no part for an hour, by the clock
    assert await tier.remove_abandoned_uploads() == 0
    assert s3_archive.pending() == 1
    for _ in range(6):
        await writer.write(b"x" * MIB)
    await writer.commit()
    assert s3_archive.stored() == ["slow"]


async def test_old_unreferenced_blobs_are_swept(s3_archive: S3Archive):
    tier = s3_archive.tier
    for key in ("orphan", "referenced"):
        await store(tier, key, [b"x"])
    metadata = FakeMetadata(referenced={"referenced"})
    young = Sweeper([tier], metadata, interval_seconds=60, grace_seconds=600)
    assert await young.sweep_once() == 0
    later = Sweeper([tier], metadata, interval_seconds=60, grace_seconds=600, clock=lambda: time.time() + HOUR)
    assert await later.sweep_once() == 1
    assert s3_archive.stored() == ["referenced"]
    # The orphan's publication record went with it.
    names = [item["Key"] for item in s3_archive.client.list_objects_v2(Bucket=s3_archive.bucket)["Contents"]]
    assert tier.record_key("orphan") not in names and tier.record_key("referenced") in names


async def test_a_multipart_blob_ages_from_its_publication_not_its_start(s3_archive: S3Archive):
    """S3 dates a multipart upload's object from the upload's start: a
    slow upload would look old the moment it completes."""
    tier = s3_archive.tier
    await store(tier, "multipart", in_mib_chunks(os.urandom(12 * MIB)))
    (listed,) = await tier.list_blobs()
    record = s3_archive.client.head_object(Bucket=s3_archive.bucket, Key=tier.record_key("multipart"))
    assert listed.published_at == record["LastModified"].timestamp()
    # Without its record (stored before records existed), a blob is not
    # aged at all: the sweep records it, and it waits a grace period.
    s3_archive.client.delete_object(Bucket=s3_archive.bucket, Key=tier.record_key("multipart"))
    assert [blob.published_at for blob in await tier.list_blobs()] == [None]
    later = Sweeper([tier], FakeMetadata(), interval_seconds=60, grace_seconds=600, clock=lambda: time.time() + HOUR)
    assert await later.sweep_once() == 0
    assert s3_archive.stored() == ["multipart"]
    assert (await tier.list_blobs())[0].published_at is not None


async def test_the_swept_database_is_kept_in_the_bucket_and_a_wrong_one_refused(s3_archive: S3Archive):
    tier = s3_archive.tier
    await store(tier, "a1", [b"x"])
    assert await tier.swept_database_id() is None
    later = dict(interval_seconds=60, grace_seconds=600, clock=lambda: time.time() + HOUR)
    assert await Sweeper([tier], FakeMetadata(referenced={"a1"}, database_id="db-1"), **later).sweep_once() == 0
    assert await tier.swept_database_id() == "db-1"
    assert await Sweeper([tier], FakeMetadata(database_id="db-2"), **later).sweep_once() == 0
    assert s3_archive.stored() == ["a1"]


async def test_open_waits_for_the_bucket(s3_server: S3Server, monkeypatch, caplog):
    s3_server.set_env(monkeypatch)
    bucket = s3_server.new_bucket_name()
    tier = S3Tier(bucket, bucket_retry_seconds=(0.01, 0.05))
    opening = asyncio.create_task(tier.open())
    try:
        expected = f"archive bucket s3://{bucket} not reachable (HTTP 404: no such bucket"
        with caplog.at_level(logging.WARNING, "registry.blobstore"):
            # The first S3 call may take a while on a busy machine (client set-up).
            deadline = asyncio.get_running_loop().time() + 10
            while expected not in caplog.text and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        assert expected in caplog.text
        assert not opening.done()
        s3_server.create_bucket(bucket)
        await asyncio.wait_for(opening, 5)
    finally:
        opening.cancel()
        await tier.close()
        s3_server.remove_bucket(bucket)


async def test_a_bad_endpoint_fails_at_open(s3_server: S3Server, monkeypatch):
    s3_server.set_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not-a-url")
    tier = S3Tier("bucket")
    try:
        with pytest.raises(ValueError, match="not-a-url"):
            await tier.open()
    finally:
        await tier.close()


async def test_sizes_beyond_s3_limits(s3_archive: S3Archive):
    with pytest.raises(ResourceExhausted, match="larger than the archive's largest object"):
        await s3_archive.tier.open_writer("huge", MAX_OBJECT_SIZE + 1)
    # Parts grow so that the largest object fits in 10,000 of them.
    part_size = s3_archive.tier.part_size_for(MAX_OBJECT_SIZE)
    assert part_size * MAX_PARTS >= MAX_OBJECT_SIZE
    assert s3_archive.tier.part_size_for(s3_archive.tier.part_size) is None


class FailingBody:
    """A GetObject body that serves `data`, then fails as told."""

    def __init__(self, data: bytes, error: Exception) -> None:
        self.data, self.error, self.closed = data, error, False

    def read(self, amount: int) -> bytes:
        if not self.data:
            raise self.error
        chunk, self.data = self.data[:amount], self.data[amount:]
        return chunk

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        # botocore checks the store's own checksum once the body ends.
        (FlexibleChecksumError(error_msg="crc32 mismatch"), DataLoss, "blob k is corrupt: crc32 mismatch"),
        (ReadTimeoutError(endpoint_url="http://s3"), Unavailable, "reading blob k failed: Read timeout"),
    ],
)
async def test_failures_at_the_end_of_a_body(s3_archive: S3Archive, error, expected, message):
    data = b"x" * 10
    body = FailingBody(data, error)
    reader = S3Reader(s3_archive.tier, "k", body, len(data), hashlib.sha256(data).digest(), chunk_size=4)
    received = []
    async with reader:
        with pytest.raises(expected, match=message):
            async for chunk in reader:
                received.append(chunk)
    assert received == [b"xxxx", b"xxxx"]  # never the last chunk
    assert body.closed and not reader.verified
