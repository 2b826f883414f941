"""The file tier on a tmp dir: atomic writes, cleanup, verification on read."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from services.blobstore.store import FileTier
from services.blobstore.tests.helpers import blob_files, read_all, store, temp_files
from services.common.errors import AlreadyExists, DataLoss, InvalidArgument, NotFound, ResourceExhausted

DATA = bytes(range(256)) * 40  # 10240 bytes
SHA = hashlib.sha256(DATA).digest()


async def test_nothing_visible_before_commit(file_tier: FileTier, tmp_path: Path):
    writer = await file_tier.open_writer("blob-1", len(DATA))
    await writer.write(DATA[:5000])
    await writer.write(DATA[5000:])
    assert blob_files(tmp_path) == []
    assert len(temp_files(tmp_path)) == 1
    with pytest.raises(NotFound):
        await file_tier.open_reader("blob-1", expected_size=None, expected_sha256=None, chunk_size=1024)
    await writer.commit()
    assert blob_files(tmp_path) == ["bl/blob-1"]
    assert (tmp_path / "blobs" / "bl" / "blob-1").read_bytes() == DATA
    assert temp_files(tmp_path) == []
    await writer.abort()  # after a commit: nothing to undo
    assert b"".join(await read_all(file_tier, "blob-1", expected_sha256=SHA)) == DATA


async def test_abort_leaves_nothing(file_tier: FileTier, tmp_path: Path):
    writer = await file_tier.open_writer("aborted", len(DATA))
    await writer.write(DATA[:100])
    await writer.write(DATA[100:200])  # the first write may still be in flight
    await writer.abort()
    await writer.abort()  # idempotent
    assert temp_files(tmp_path) == [] and blob_files(tmp_path) == []


async def test_cancelled_upload_leaves_nothing(file_tier: FileTier, tmp_path: Path):
    started = asyncio.Event()

    async def upload() -> None:
        writer = await file_tier.open_writer("cancelled", len(DATA))
        try:
            await writer.write(DATA[:100])
            started.set()
            await asyncio.sleep(3600)  # the client stalls, then goes away
        finally:
            await writer.abort()

    task = asyncio.create_task(upload())
    await started.wait()
    assert len(temp_files(tmp_path)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert temp_files(tmp_path) == [] and blob_files(tmp_path) == []


async def test_size_is_enforced(file_tier: FileTier, tmp_path: Path):
    writer = await file_tier.open_writer("sized", 10)
    with pytest.raises(InvalidArgument, match="more than the 10 bytes"):
        await writer.write(b"x" * 11)
    await writer.abort()
    writer = await file_tier.open_writer("sized", 10)
    await writer.write(b"x" * 9)
    with pytest.raises(InvalidArgument, match="received 9 bytes but the header announced 10"):
        await writer.commit()
    await writer.abort()
    assert temp_files(tmp_path) == [] and blob_files(tmp_path) == []


async def test_never_overwrites(file_tier: FileTier, tmp_path: Path):
    await store(file_tier, "dup", [b"first"])
    with pytest.raises(AlreadyExists, match="blob dup already exists"):
        await file_tier.open_writer("dup", 6)
    # Two uploads racing for one key: the second commit loses, cleanly.
    await file_tier.delete("dup")
    first = await file_tier.open_writer("dup", 5)
    second = await file_tier.open_writer("dup", 6)
    await first.write(b"first")
    await second.write(b"second")
    await first.commit()
    with pytest.raises(AlreadyExists):
        await second.commit()
    await second.abort()
    assert (tmp_path / "blobs" / "du" / "dup").read_bytes() == b"first"
    assert temp_files(tmp_path) == []


async def test_leftover_temp_files_are_removed_at_start(tmp_path: Path):
    temp = tmp_path / "blobs" / ".tmp"
    temp.mkdir(parents=True)
    (temp / "no-owner.blob.0").write_bytes(b"partial")
    # A process that died mid-upload: its lock file is there but not held.
    (temp / "deadbeef.lock").write_bytes(b"")
    (temp / "deadbeef.blob.3").write_bytes(b"partial")
    tier = FileTier(tmp_path)
    await tier.open()
    try:
        assert temp_files(tmp_path) == []
        assert [n for n in os.listdir(temp) if n.endswith(".lock")] == [f"{tier._owner}.lock"]
    finally:
        await tier.close()
    assert os.listdir(temp) == []


async def test_start_keeps_temp_files_of_a_live_replica(file_tier: FileTier, tmp_path: Path):
    """Replicas share the archive directory: a restarting one must not break
    another's upload in progress."""
    writer = await file_tier.open_writer("in-flight", 3)
    await writer.write(b"abc")
    other = FileTier(tmp_path)
    await other.open()
    try:
        assert len(temp_files(tmp_path)) == 1
        assert await other.remove_abandoned_uploads() == 0
        await writer.commit()
    finally:
        await other.close()
    assert b"".join(await read_all(file_tier, "in-flight")) == b"abc"


async def test_abandoned_uploads_of_a_stopped_replica_are_swept(file_tier: FileTier, tmp_path: Path):
    other = FileTier(tmp_path)
    await other.open()
    writer = await other.open_writer("orphan", 3)
    await writer.write(b"abc")
    await writer._wait_last_write()
    await other.close()  # as if the process died: its temp file stays
    writer._file.close()
    assert len(temp_files(tmp_path)) == 1
    assert await file_tier.remove_abandoned_uploads() == 1
    assert temp_files(tmp_path) == []


async def test_reads_in_chunks_with_verification(file_tier: FileTier):
    await store(file_tier, "chunked", [DATA[:3000], DATA[3000:]])
    chunks = await read_all(file_tier, "chunked", chunk_size=4096, expected_size=len(DATA), expected_sha256=SHA)
    assert [len(c) for c in chunks] == [4096, 4096, 2048]
    assert b"".join(chunks) == DATA


@pytest.mark.parametrize("offset", [0, len(DATA) - 1])
async def test_corruption_is_data_loss_instead_of_the_last_chunk(file_tier: FileTier, tmp_path: Path, offset: int):
    await store(file_tier, "rotten", [DATA])
    path = tmp_path / "blobs" / "ro" / "rotten"
    corrupt = bytearray(path.read_bytes())
    corrupt[offset] ^= 0x01
    path.write_bytes(bytes(corrupt))
    reader = await file_tier.open_reader("rotten", expected_size=len(DATA), expected_sha256=SHA, chunk_size=4096)
    received = []
    async with reader:
        with pytest.raises(DataLoss, match="stored data of blob rotten is corrupt: sha256 mismatch"):
            async for chunk in reader:
                received.append(chunk)
    assert [len(c) for c in received] == [4096, 4096]  # never the last one
    # Without a digest to check, the bytes are served as stored.
    assert b"".join(await read_all(file_tier, "rotten")) == bytes(corrupt)


async def test_truncated_file_is_data_loss_before_any_chunk(file_tier: FileTier, tmp_path: Path):
    await store(file_tier, "short", [DATA])
    path = tmp_path / "blobs" / "sh" / "short"
    path.write_bytes(DATA[:-1])
    with pytest.raises(DataLoss, match=f"{len(DATA) - 1} bytes stored, {len(DATA)} expected"):
        await file_tier.open_reader("short", expected_size=len(DATA), expected_sha256=SHA, chunk_size=4096)


async def test_zero_byte_blob(file_tier: FileTier):
    await store(file_tier, "empty", [])
    assert await read_all(file_tier, "empty", expected_size=0, expected_sha256=hashlib.sha256(b"").digest()) == []
    with pytest.raises(DataLoss, match="sha256 mismatch"):
        await read_all(file_tier, "empty", expected_size=0, expected_sha256=SHA)
    with pytest.raises(DataLoss, match="0 bytes stored, 5 expected"):
        await read_all(file_tier, "empty", expected_size=5)


async def test_delete_is_idempotent(file_tier: FileTier, tmp_path: Path):
    await store(file_tier, "gone", [b"x"])
    assert await file_tier.delete("gone") is True
    assert await file_tier.delete("gone") is False
    assert blob_files(tmp_path) == []
    with pytest.raises(NotFound, match="blob gone not found"):
        await read_all(file_tier, "gone")


async def test_a_read_survives_a_delete(file_tier: FileTier):
    await store(file_tier, "read-while-deleted", [DATA])
    reader = await file_tier.open_reader(
        "read-while-deleted", expected_size=len(DATA), expected_sha256=SHA, chunk_size=1000
    )
    async with reader:
        chunks = reader.__aiter__()
        first = await anext(chunks)
        assert await file_tier.delete("read-while-deleted")
        rest = [chunk async for chunk in chunks]
    assert first + b"".join(rest) == DATA
    with pytest.raises(NotFound):
        await read_all(file_tier, "read-while-deleted")


@pytest.mark.parametrize("key", ["", "../etc", "a/b", ".tmp", "x" * 129, "é", "a b", "ab\x00"])
async def test_bad_keys_are_refused(file_tier: FileTier, key: str):
    with pytest.raises(InvalidArgument, match="blob key"):
        await file_tier.open_writer(key, 1)
    with pytest.raises(InvalidArgument):
        await file_tier.open_reader(key, expected_size=None, expected_sha256=None, chunk_size=1)
    with pytest.raises(InvalidArgument):
        await file_tier.delete(key)


async def test_no_room_is_refused_before_writing(file_tier: FileTier, tmp_path: Path):
    with pytest.raises(ResourceExhausted, match="bytes free"):
        await file_tier.open_writer("huge", 1 << 62)
    assert temp_files(tmp_path) == []


async def test_list_blobs(file_tier: FileTier):
    before = time.time()
    await store(file_tier, "a1", [b"12"])
    await store(file_tier, "b2", [b"345"])
    blobs = {blob.key: blob for blob in await file_tier.list_blobs()}
    assert set(blobs) == {"a1", "b2"}
    assert blobs["b2"].size == 3
    assert before - 1 <= blobs["a1"].stored_at <= time.time() + 1


async def test_commit_fsyncs_the_file_and_its_directory(file_tier: FileTier, tmp_path: Path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    writer = await file_tier.open_writer("durable", 3)
    await writer.write(b"abc")
    assert synced == []
    await writer.commit()
    blob_dir = str(tmp_path / "blobs" / "du")
    assert synced[0].startswith(str(tmp_path / "blobs" / ".tmp"))  # the data, before the link
    assert synced[-1] == blob_dir  # the new directory entry
