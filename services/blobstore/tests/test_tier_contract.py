"""The contract of a blob tier (`services.blobstore.store.base`), held by each
of them: memory, files and S3 (a real moto server).

What one tier does beyond the contract (the memory budget, temp files and
fsync, multipart and abandoned uploads) is tested in its own file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from services.blobstore.tests.helpers import MIB, read_all, store
from services.blobstore.tests.tiers import Archive, TierUnderTest
from services.common.errors import AlreadyExists, DataLoss, InvalidArgument, NotFound

DATA = bytes(range(256)) * 40  # 10240 bytes
SHA = hashlib.sha256(DATA).digest()


# -- every tier ---------------------------------------------------------------


async def test_nothing_visible_before_commit(under_test: TierUnderTest):
    tier = under_test.tier
    writer = await tier.open_writer("blob-1", len(DATA))
    await writer.write(DATA[:5000])
    await writer.write(DATA[5000:])
    assert under_test.stored() == []
    with pytest.raises(NotFound):
        await tier.open_reader("blob-1", expected_size=None, expected_sha256=None, chunk_size=1024)
    await writer.commit()
    assert under_test.stored() == ["blob-1"]
    assert under_test.pending() == 0
    await writer.abort()  # after a commit: nothing to undo
    assert b"".join(await read_all(tier, "blob-1", expected_sha256=SHA)) == DATA


async def test_reads_come_in_chunks_of_at_most_chunk_size(under_test: TierUnderTest):
    """Whatever chunks the upload came in (here one empty, one larger than
    the reader's limit): never a larger chunk, never an empty one."""
    sent = [b"a" * 10, b"", b"b" * 3, b"c" * 8]
    await store(under_test.tier, "chunked", sent)
    for chunk_size in (4, 100):
        chunks = await read_all(under_test.tier, "chunked", chunk_size=chunk_size, expected_size=21)
        assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
        assert b"".join(chunks) == b"".join(sent)


@pytest.mark.parametrize(
    "size, chunk_size",
    [(1000, MIB), (6 * MIB, 6 * MIB), (12 * MIB + 3, MIB)],
    ids=["one-request", "one-view-per-part", "several-views-per-part"],
)
async def test_views_are_stored_like_bytes(under_test: TierUnderTest, size: int, chunk_size: int):
    """The servicer passes the data of received messages as views into them
    (see services.common.wire)."""
    data = os.urandom(size)
    received = b"framing" + data
    view = memoryview(received)[len(b"framing") :]
    await store(under_test.tier, "views", [view[i : i + chunk_size] for i in range(0, size, chunk_size)])
    digest = hashlib.sha256(data).digest()
    chunks = await read_all(under_test.tier, "views", expected_size=size, expected_sha256=digest)
    assert b"".join(chunks) == data


async def test_abort_leaves_nothing(under_test: TierUnderTest):
    writer = await under_test.tier.open_writer("aborted", len(DATA))
    await writer.write(DATA[:100])
    await writer.write(DATA[100:200])  # the first write may still be in flight
    await writer.abort()
    await writer.abort()  # idempotent
    assert under_test.stored() == [] and under_test.pending() == 0


async def test_cancelled_upload_leaves_nothing(under_test: TierUnderTest):
    started = asyncio.Event()

    async def upload() -> None:
        writer = await under_test.tier.open_writer("cancelled", len(DATA))
        try:
            await writer.write(DATA[:100])
            started.set()
            await asyncio.sleep(3600)  # the client stalls, then goes away
        finally:
            await writer.abort()

    task = asyncio.create_task(upload())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert under_test.stored() == [] and under_test.pending() == 0


async def test_size_is_enforced(under_test: TierUnderTest):
    tier = under_test.tier
    writer = await tier.open_writer("sized", 10)
    with pytest.raises(InvalidArgument, match="more than the 10 bytes"):
        await writer.write(b"x" * 11)
    await writer.abort()
    writer = await tier.open_writer("sized", 10)
    await writer.write(b"x" * 9)
    with pytest.raises(InvalidArgument, match="received 9 bytes but the header announced 10"):
        await writer.commit()
    await writer.abort()
    assert under_test.stored() == [] and under_test.pending() == 0


async def test_never_overwrites(under_test: TierUnderTest):
    tier = under_test.tier
    await store(tier, "dup", [b"first"])
    with pytest.raises(AlreadyExists, match="blob dup already exists"):
        await tier.open_writer("dup", 6)
    # Two uploads racing for one key: the second commit loses, cleanly.
    await tier.delete("dup")
    first = await tier.open_writer("dup", 5)
    second = await tier.open_writer("dup", 6)
    await first.write(b"first")
    await second.write(b"second")
    await first.commit()
    with pytest.raises(AlreadyExists):
        await second.commit()
    await second.abort()
    assert b"".join(await read_all(tier, "dup")) == b"first"
    assert under_test.pending() == 0


async def test_zero_byte_blob(under_test: TierUnderTest):
    tier = under_test.tier
    await store(tier, "empty", [])
    assert under_test.stored() == ["empty"]
    assert await read_all(tier, "empty", expected_size=0) == []
    with pytest.raises(DataLoss, match="0 bytes stored, 5 expected"):
        await read_all(tier, "empty", expected_size=5)


async def test_size_mismatch_is_data_loss_before_any_chunk(under_test: TierUnderTest):
    await store(under_test.tier, "sized", [b"abc"])
    with pytest.raises(DataLoss, match="stored data of blob sized is corrupt: 3 bytes stored, 4 expected"):
        await under_test.tier.open_reader("sized", expected_size=4, expected_sha256=None, chunk_size=1)


async def test_missing_blob_is_not_found(under_test: TierUnderTest):
    with pytest.raises(NotFound, match="^blob missing not found$"):
        await read_all(under_test.tier, "missing")


async def test_delete_is_idempotent(under_test: TierUnderTest):
    tier = under_test.tier
    await store(tier, "gone", [b"x"])
    assert await tier.delete("gone") is True
    assert await tier.delete("gone") is False
    assert under_test.stored() == []
    with pytest.raises(NotFound, match="blob gone not found"):
        await read_all(tier, "gone")


async def test_a_read_survives_a_delete(under_test: TierUnderTest):
    tier = under_test.tier
    await store(tier, "read-while-deleted", [DATA])
    reader = await tier.open_reader("read-while-deleted", expected_size=len(DATA), expected_sha256=SHA, chunk_size=1000)
    async with reader:
        chunks = reader.__aiter__()
        first = await anext(chunks)
        assert await tier.delete("read-while-deleted")
        rest = [chunk async for chunk in chunks]
    assert b"".join([first, *rest]) == DATA
    with pytest.raises(NotFound):
        await read_all(tier, "read-while-deleted")


@pytest.mark.parametrize("key", ["", "../etc", "a/b", ".tmp", "x" * 129, "é", "a b", "ab\x00"])
async def test_bad_keys_are_refused(under_test: TierUnderTest, key: str):
    tier = under_test.tier
    with pytest.raises(InvalidArgument, match="blob key"):
        await tier.open_writer(key, 1)
    with pytest.raises(InvalidArgument):
        await tier.open_reader(key, expected_size=None, expected_sha256=None, chunk_size=1)
    with pytest.raises(InvalidArgument):
        await tier.delete(key)


async def test_list_blobs(under_test: TierUnderTest):
    tier = under_test.tier
    before = time.time()
    await store(tier, "a1", [b"12"])
    await store(tier, "b2", [b"345"])
    await store(tier, "c", [b"6"])  # a one-character key is its own directory
    blobs = {blob.key: blob for blob in await tier.list_blobs()}
    assert set(blobs) == {"a1", "b2", "c"}
    assert blobs["b2"].size == 3
    assert before - 1 <= blobs["a1"].published_at <= time.time() + 1


async def test_publication_is_recorded_at_commit_not_at_the_first_byte(under_test: TierUnderTest):
    """The age the sweeper judges by: when the blob became visible. (S3's
    LastModified of a multipart object is its upload's start; a file's
    mtime is its last write.)"""
    tier = under_test.tier
    writer = await tier.open_writer("slow", 2)
    await writer.write(b"1")
    # Apart enough to tell the first byte from the commit: S3 dates objects
    # to the second, the other tiers far more finely.
    await asyncio.sleep(1.1 if type(tier).__name__ == "S3Tier" else 0.05)
    published = time.time()
    await writer.write(b"2")
    await writer.commit()
    (blob,) = await tier.list_blobs()
    resolution = 1.0 if type(tier).__name__ == "S3Tier" else 0.01
    assert blob.published_at >= published - resolution


async def test_uploads_in_progress_are_known_until_committed_or_aborted(under_test: TierUnderTest):
    tier = under_test.tier
    committed = await tier.open_writer("committed", 1)
    aborted = await tier.open_writer("aborted", 1)
    assert tier.uploads_in_progress() == {"committed", "aborted"}
    await committed.write(b"x")
    await committed.commit()
    await aborted.abort()
    assert tier.uploads_in_progress() == frozenset()
    assert [blob.key for blob in await tier.list_blobs()] == ["committed"]


async def test_the_swept_database_is_recorded(under_test: TierUnderTest):
    tier = under_test.tier
    assert await tier.swept_database_id() is None
    await tier.record_swept_database_id("db-1")
    await tier.record_swept_database_id("db-2")
    assert await tier.swept_database_id() == "db-2"
    assert await tier.list_blobs() == []  # the record is not a blob


async def test_record_published_dates_only_stored_blobs(under_test: TierUnderTest):
    tier = under_test.tier
    await store(tier, "stored", [b"x"])
    await tier.record_published(["stored", "never-stored"])
    assert [blob.key for blob in await tier.list_blobs()] == ["stored"]
    assert (await tier.list_blobs())[0].published_at is not None


# -- the tiers whose bytes can rot: verified against their digest -------------


async def test_round_trip_of_a_blob_of_several_parts(archive: Archive):
    """20 MiB: several parts of a multipart upload for S3, sent in 1 MiB
    chunks, read back in full chunks across the parts."""
    data = os.urandom(20 * MIB + 7)
    await store(archive.tier, "several-parts", [data[i : i + MIB] for i in range(0, len(data), MIB)])
    assert archive.stored() == ["several-parts"] and archive.pending() == 0
    digest = hashlib.sha256(data).digest()
    chunks = await read_all(
        archive.tier, "several-parts", chunk_size=3 * MIB, expected_size=len(data), expected_sha256=digest
    )
    assert [len(c) for c in chunks] == [3 * MIB] * 6 + [2 * MIB + 7]
    assert b"".join(chunks) == data


async def test_reads_in_chunks_with_verification(archive: Archive):
    await store(archive.tier, "chunked", [DATA[:3000], DATA[3000:]])
    chunks = await read_all(archive.tier, "chunked", chunk_size=4096, expected_size=len(DATA), expected_sha256=SHA)
    assert [len(c) for c in chunks] == [4096, 4096, 2048]
    assert b"".join(chunks) == DATA


@pytest.mark.parametrize("offset", [0, len(DATA) - 1])
async def test_corruption_is_data_loss_instead_of_the_last_chunk(archive: Archive, offset: int):
    tier = archive.tier
    await store(tier, "rotten", [DATA])
    corrupt = bytearray(DATA)
    corrupt[offset] ^= 0x01
    archive.replace("rotten", bytes(corrupt))  # same size: only the digest tells
    reader = await tier.open_reader("rotten", expected_size=len(DATA), expected_sha256=SHA, chunk_size=4096)
    received = []
    async with reader:
        with pytest.raises(DataLoss, match="stored data of blob rotten is corrupt: sha256 mismatch"):
            async for chunk in reader:
                received.append(chunk)
    assert [len(c) for c in received] == [4096, 4096]  # never the last one
    assert not reader.verified
    # Without a digest to check, the bytes are served as stored.
    assert b"".join(await read_all(tier, "rotten")) == bytes(corrupt)


async def test_truncated_blob_is_data_loss_before_any_chunk(archive: Archive):
    await store(archive.tier, "short", [DATA])
    archive.replace("short", DATA[:-1])
    with pytest.raises(DataLoss, match=f"{len(DATA) - 1} bytes stored, {len(DATA)} expected"):
        await archive.tier.open_reader("short", expected_size=len(DATA), expected_sha256=SHA, chunk_size=4096)


async def test_verified_only_once_the_whole_blob_matched(archive: Archive):
    await store(archive.tier, "checked", [DATA])
    reader = await archive.tier.open_reader("checked", expected_size=len(DATA), expected_sha256=SHA, chunk_size=4096)
    async with reader:
        chunks = reader.__aiter__()
        await anext(chunks)
        assert not reader.verified
        async for _ in chunks:
            pass
    assert reader.verified


async def test_zero_byte_blob_is_verified(archive: Archive):
    tier = archive.tier
    await store(tier, "empty", [])
    assert await read_all(tier, "empty", expected_size=0, expected_sha256=hashlib.sha256(b"").digest()) == []
    with pytest.raises(DataLoss, match="sha256 mismatch"):
        await read_all(tier, "empty", expected_size=0, expected_sha256=SHA)
