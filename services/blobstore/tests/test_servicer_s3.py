"""`registry.BlobStore` through a real grpc.aio server archiving to a moto
S3 bucket (COGMENT_MODEL_REGISTRY_ARCHIVE_URL=s3://bucket/prefix)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from registry import blobstore_pb2

from services.blobstore.config import S3Location
from services.blobstore.tests.tiers import S3Server
from services.blobstore.tests.helpers import (
    MIB,
    Blobstore,
    eventually,
    expect_status,
    is_missing,
    make_config,
    put_requests,
    stalled_upload,
    start_blobstore,
    wait_serving,
)
from services.common.service_names import BLOBSTORE

PREFIX = "registry/blobs"


@pytest.fixture
async def s3_blobstore(tmp_path: Path, s3_bucket: str) -> AsyncIterator[Blobstore]:
    running, stop = await start_blobstore(make_config(tmp_path, archive_s3=S3Location(s3_bucket, PREFIX)))
    yield running
    await stop()


def object_name(key: str) -> str:
    return f"{PREFIX}/{key[:2]}/{key}"


def pending_uploads(server: S3Server, bucket: str) -> list[dict]:
    return server.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


async def test_round_trip_corruption_and_delete(s3_blobstore: Blobstore, s3_server: S3Server, s3_bucket: str):
    data = os.urandom(20 * MIB + 5)
    digest = hashlib.sha256(data).digest()
    assert await s3_blobstore.put("archived", data, archived=True, chunk_size=MIB) == len(data)
    head = s3_server.client.head_object(Bucket=s3_bucket, Key=object_name("archived"))
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"').endswith("-3")
    assert not os.path.exists(s3_blobstore.archive_dir / "blobs" / "ar")  # not in the archive directory
    chunks = await s3_blobstore.get(
        "archived", archived=True, expected_size=len(data), expected_sha256=digest, chunk_size=MIB
    )
    assert len(chunks) == 21 and b"".join(chunks) == data

    # Rot of the same size: only the digest tells, and never with the last chunk.
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF
    s3_server.client.put_object(Bucket=s3_bucket, Key=object_name("archived"), Body=bytes(corrupt))
    recorded = dict(expected_size=len(data), expected_sha256=digest, chunk_size=MIB)
    details, received = await s3_blobstore.get_failing(grpc.StatusCode.DATA_LOSS, "archived", archived=True, **recorded)
    assert details == "stored data of blob archived is corrupt: sha256 mismatch"
    assert len(received) == 20

    # Truncated: DATA_LOSS before any byte.
    s3_server.client.put_object(Bucket=s3_bucket, Key=object_name("archived"), Body=data[:-1])
    details, received = await s3_blobstore.get_failing(grpc.StatusCode.DATA_LOSS, "archived", archived=True, **recorded)
    assert f"{len(data) - 1} bytes stored, {len(data)} expected" in details and received == []

    for _ in range(2):
        await s3_blobstore.stub.DeleteBlob(blobstore_pb2.DeleteBlobRequest(key="archived", archived=True))
    assert await is_missing(s3_blobstore, "archived", True)
    assert s3_server.client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []


async def test_already_exists_and_tiers_stay_separate(s3_blobstore: Blobstore):
    await s3_blobstore.put("twice", b"archived", archived=True)
    details = await expect_status(grpc.StatusCode.ALREADY_EXISTS, s3_blobstore.put("twice", b"again", archived=True))
    assert details == "blob twice already exists"
    await s3_blobstore.put("twice", b"transient", archived=False)
    assert b"".join(await s3_blobstore.get("twice", archived=True)) == b"archived"
    assert b"".join(await s3_blobstore.get("twice", archived=False)) == b"transient"


async def test_client_cancel_mid_upload_leaves_no_upload(s3_blobstore: Blobstore, s3_server: S3Server, s3_bucket: str):
    stalled = asyncio.Event()
    messages = put_requests("cancelled", b"x" * MIB, archived=True, size=20 * MIB, finish=False)
    # 12 MiB sent: a multipart upload is under way.
    call = s3_blobstore.stub.PutBlob(stalled_upload(messages[:1] + messages[1:2] * 12, stalled))
    await stalled.wait()

    async def upload_started() -> bool:
        return bool(pending_uploads(s3_server, s3_bucket))

    async def upload_gone() -> bool:
        return not pending_uploads(s3_server, s3_bucket)

    await eventually(upload_started)
    call.cancel()
    await eventually(upload_gone)
    assert await is_missing(s3_blobstore, "cancelled", True)


async def test_not_serving_until_the_bucket_is_reachable(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
):
    s3_server.set_env(monkeypatch)
    bucket = s3_server.new_bucket_name()
    blobstore, stop = await start_blobstore(make_config(tmp_path, archive_s3=S3Location(bucket)), wait=False)
    try:
        await asyncio.sleep(0.3)  # a few HeadBucket attempts
        for service in ("", BLOBSTORE):
            assert await blobstore.status(service) == health_pb2.HealthCheckResponse.NOT_SERVING
        early = asyncio.ensure_future(blobstore.put("early", b"abc", archived=True))
        await asyncio.sleep(0.05)
        assert not early.done()  # waits for the storage instead of failing
        s3_server.create_bucket(bucket)
        await wait_serving(blobstore.health, timeout=10)
        assert await early == 3
        assert b"".join(await blobstore.get("early", archived=True)) == b"abc"
    finally:
        await stop()
        s3_server.remove_bucket(bucket)
