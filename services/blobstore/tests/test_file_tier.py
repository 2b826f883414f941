"""What is particular to the file tier (the contract is in test_tier_contract):
temp files, their cleanup across replicas, fsync, writeback, free space."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.blobstore.store import FileTier
from services.blobstore.tests.helpers import blob_files, open_descriptors_of, read_all, store, temp_files
from services.blobstore.store.filesystem import start_writeback
from services.common.errors import DataLoss, ResourceExhausted

DATA = bytes(range(256)) * 40  # 10240 bytes


async def test_an_upload_is_a_temp_file_until_commit(file_tier: FileTier, tmp_path: Path):
    writer = await file_tier.open_writer("blob-1", len(DATA))
    await writer.write(DATA[:5000])
    await writer.write(DATA[5000:])
    assert blob_files(tmp_path) == []
    assert len(temp_files(tmp_path)) == 1
    await writer.commit()
    assert blob_files(tmp_path) == ["bl/blob-1"]
    assert (tmp_path / "blobs" / "bl" / "blob-1").read_bytes() == DATA
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


async def test_no_room_is_refused_before_writing(file_tier: FileTier, tmp_path: Path):
    with pytest.raises(ResourceExhausted, match="bytes free"):
        await file_tier.open_writer("huge", 1 << 62)
    assert temp_files(tmp_path) == []


class Disk:
    """The archive's disk as `os.statvfs` reports it, with a free-space
    figure the test sets (the real disk is shared with everything else)."""

    def __init__(self, monkeypatch, free: int) -> None:
        self.free = free
        real = os.statvfs

        def statvfs(path):
            stats = real(path)
            return os.statvfs_result(
                (stats.f_bsize, 1, stats.f_blocks, self.free, self.free, *tuple(stats)[5:])
            )

        monkeypatch.setattr(os, "statvfs", statvfs)


async def test_the_reserve_is_kept_free_at_start_and_while_writing(tmp_path: Path, monkeypatch):
    """Blobs never take the reserve (the metadata database beside them needs
    it); an upload refused half-way leaves nothing; freed space counts at once."""
    tier = FileTier(tmp_path, reserved_bytes=1000)
    await tier.open()
    try:
        disk = Disk(monkeypatch, free=3000)
        with pytest.raises(ResourceExhausted, match="2000 bytes free for blobs.*ARCHIVE_RESERVED_BYTES"):
            await tier.open_writer("too-big", 2001)
        writer = await tier.open_writer("squeezed", 2000)
        await writer.write(b"x" * 1000)
        await writer._wait_last_write()
        disk.free = 1500  # someone else wrote meanwhile
        with pytest.raises(ResourceExhausted, match="ARCHIVE_RESERVED_BYTES"):
            await writer.write(b"x" * 1000)
            await writer._wait_last_write()
        await writer.abort()
        assert temp_files(tmp_path) == [] and blob_files(tmp_path) == []
        disk.free = 5000  # freed: no restart needed
        await store(tier, "squeezed", [b"x" * 1000, b"y" * 1000])
        assert blob_files(tmp_path) == ["sq/squeezed"]
    finally:
        await tier.close()


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


async def test_a_size_mismatch_leaves_no_file_open(file_tier: FileTier):
    await store(file_tier, "sized", [b"abc"])
    with pytest.raises(DataLoss):
        await file_tier.open_reader("sized", expected_size=4, expected_sha256=None, chunk_size=1)
    assert open_descriptors_of(Path(file_tier.path_of("sized"))) == 0


def test_start_writeback_is_harmless_on_any_range(tmp_path: Path):
    path = tmp_path / "f"
    with open(path, "wb") as file:
        file.write(b"x" * 100)
        file.flush()
        start_writeback(file.fileno(), 0, 100)
        start_writeback(file.fileno(), 50, 10_000)  # beyond the end
    assert path.read_bytes() == b"x" * 100
