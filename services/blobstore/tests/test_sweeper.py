"""The sweeper, with metadata replaced by `FakeMetadata`: what it deletes,
and what it refuses to delete (docs/design.md, "the sweeper's safety rules")."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from services.blobstore.store import FileTier, MemoryTier
from services.blobstore.sweeper import Sweeper
from services.blobstore.tests.helpers import FakeMetadata, age_file_blob, store, temp_files

HOUR = 3600.0


async def keys(tier) -> set[str]:
    return {blob.key for blob in await tier.list_blobs()}


age_file = age_file_blob


async def test_deletes_only_old_unreferenced_blobs(file_tier: FileTier):
    now = time.time()
    memory = MemoryTier(10_000, clock=lambda: now - HOUR)
    await store(memory, "old-orphan-m", [b"1"])
    await store(memory, "old-kept-m", [b"2"])
    memory._clock = lambda: now  # stored just now
    await store(memory, "young-m", [b"3"])
    for key in ("old-orphan-f", "old-kept-f", "young-f"):
        await store(file_tier, key, [b"x"])
    age_file(file_tier, "old-orphan-f", HOUR)
    age_file(file_tier, "old-kept-f", HOUR)

    metadata = FakeMetadata(referenced={"old-kept-m", "old-kept-f"})
    sweeper = Sweeper([memory, file_tier], metadata, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 2
    assert await keys(memory) == {"old-kept-m", "young-m"}
    assert await keys(file_tier) == {"old-kept-f", "young-f"}
    # Young blobs may be on their way to a commit: metadata is not even asked.
    assert metadata.asked == {"old-orphan-m", "old-kept-m", "old-orphan-f", "old-kept-f"}


async def test_lookups_are_batched_by_at_most_1000_keys():
    memory = MemoryTier(10_000, clock=lambda: 0.0)
    for n in range(2500):
        await store(memory, f"k{n}", [])
    metadata = FakeMetadata(referenced={"k7", "k2400"})
    sweeper = Sweeper([memory], metadata, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 2498
    assert sorted(len(batch) for batch in metadata.batches) == [500, 1000, 1000]
    assert await keys(memory) == {"k7", "k2400"}


async def test_a_reply_naming_other_keys_deletes_nothing_else():
    memory = MemoryTier(10_000, clock=lambda: 0.0)
    await store(memory, "asked", [b"a"])

    class Confused(FakeMetadata):
        async def find_unreferenced(self, keys: list[str]) -> list[str]:
            return ["not-asked"]

    memory_young = MemoryTier(10_000)
    await store(memory_young, "not-asked", [b"b"])
    sweeper = Sweeper([memory, memory_young], Confused(), interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 0
    assert await keys(memory) == {"asked"} and await keys(memory_young) == {"not-asked"}


async def test_failures_are_logged_and_retried(caplog: pytest.LogCaptureFixture):
    memory = MemoryTier(10_000, clock=lambda: 0.0)
    await store(memory, "orphan", [b"x"])
    metadata = FakeMetadata(failures=1)
    sweeper = Sweeper([memory], metadata, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 0  # does not raise
    assert "metadata is down" in caplog.text
    assert await keys(memory) == {"orphan"}
    assert await sweeper.sweep_once() == 1
    assert await keys(memory) == set()


async def test_the_periodic_loop_survives_failures():
    memory = MemoryTier(10_000, clock=lambda: 0.0)
    await store(memory, "orphan", [b"x"])
    metadata = FakeMetadata(failures=3)
    sweeper = Sweeper([memory], metadata, interval_seconds=0.01, grace_seconds=600)
    sweeper.start()
    try:
        for _ in range(500):
            if not await keys(memory):
                break
            await asyncio.sleep(0.01)
    finally:
        await sweeper.stop()
    assert await keys(memory) == set()
    assert len(metadata.batches) >= 4


async def test_without_metadata_only_abandoned_temp_files_go(file_tier: FileTier, tmp_path: Path):
    await store(file_tier, "kept", [b"x"])
    age_file(file_tier, "kept", HOUR)
    (tmp_path / "blobs" / ".tmp" / "ownerless.key.0").write_bytes(b"partial")
    sweeper = Sweeper([file_tier], None, interval_seconds=60, grace_seconds=0)
    assert await sweeper.sweep_once() == 0
    assert await keys(file_tier) == {"kept"}
    assert temp_files(tmp_path) == []


# -- the safety rules ------------------------------------------------------------


async def test_age_is_the_publication_record_not_the_file_mtime(file_tier: FileTier):
    """A blob whose file is old (a slow upload's last byte, a restore with
    `cp -p`) but was published just now is young."""
    await store(file_tier, "published-now", [b"x"])
    stamp = time.time() - HOUR
    os.utime(file_tier.path_of("published-now"), (stamp, stamp))
    metadata = FakeMetadata()
    sweeper = Sweeper([file_tier], metadata, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 0
    assert await keys(file_tier) == {"published-now"}
    assert metadata.asked == set()
    age_file(file_tier, "published-now", HOUR)
    assert await sweeper.sweep_once() == 1


async def test_a_blob_without_a_record_gets_one_and_waits_a_grace_period(file_tier: FileTier):
    """Blobs stored before records existed (or whose record a crash lost)
    age from the first sweep that sees them, never from their mtime."""
    await store(file_tier, "legacy", [b"x"])
    os.unlink(file_tier.record_path_of("legacy"))
    stamp = time.time() - HOUR
    os.utime(file_tier.path_of("legacy"), (stamp, stamp))
    assert [blob.published_at for blob in await file_tier.list_blobs()] == [None]
    metadata = FakeMetadata()
    sweeper = Sweeper([file_tier], metadata, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 0
    (listed,) = await file_tier.list_blobs()
    assert listed.published_at is not None and listed.published_at >= time.time() - 60
    assert await keys(file_tier) == {"legacy"}
    later = Sweeper([file_tier], metadata, interval_seconds=60, grace_seconds=600, clock=lambda: time.time() + HOUR)
    assert await later.sweep_once() == 1


async def test_an_upload_in_progress_is_never_swept(file_tier: FileTier):
    """Even between its publication and the end of its commit (the memory
    tier's too), whatever the clock says."""
    memory = MemoryTier(10_000)
    writers = []
    for tier in (memory, file_tier):
        writer = await tier.open_writer("uploading", 1)
        await writer.write(b"x")
        writers.append(writer)
    assert memory.uploads_in_progress() == {"uploading"}
    later = Sweeper(
        [memory, file_tier], FakeMetadata(), interval_seconds=60, grace_seconds=0, clock=lambda: time.time() + HOUR
    )
    assert await later.sweep_once() == 0
    for writer in writers:
        await writer.commit()
    assert memory.uploads_in_progress() == frozenset() == file_tier.uploads_in_progress()
    assert await later.sweep_once() == 2  # done, unreferenced, old by the clock: an orphan


async def test_an_aborted_upload_is_no_longer_in_progress(memory_tier: MemoryTier):
    writer = await memory_tier.open_writer("gone", 10)
    await writer.abort()
    assert memory_tier.uploads_in_progress() == frozenset()


async def test_another_database_is_refused_with_one_line_saying_what_to_do(
    file_tier: FileTier, caplog: pytest.LogCaptureFixture
):
    for key in ("a1", "a2", "a3"):
        await store(file_tier, key, [b"x"])
        age_file(file_tier, key, HOUR)
    right = FakeMetadata(referenced={"a1", "a2", "a3"}, database_id="right-db", archived_versions=3)
    assert await Sweeper([file_tier], right, interval_seconds=60, grace_seconds=600).sweep_once() == 0
    assert await file_tier.swept_database_id() == "right-db"

    wrong = FakeMetadata(database_id="wrong-db", archived_versions=5)  # references none of them
    caplog.clear()
    assert await Sweeper([file_tier], wrong, interval_seconds=60, grace_seconds=600).sweep_once() == 0
    assert await keys(file_tier) == {"a1", "a2", "a3"}
    assert wrong.asked == set()
    refusals = [record for record in caplog.records if "refusing to sweep" in record.getMessage()]
    assert len(refusals) == 1
    message = refusals[0].getMessage()
    assert "wrong-db" in message and "right-db" in message
    assert "COGMENT_MODEL_REGISTRY_BLOBSTORE_ACCEPT_DATABASE_ID=wrong-db" in message
    assert await file_tier.swept_database_id() == "right-db"  # still

    # The right database back: sweeping resumes.
    assert await Sweeper([file_tier], right, interval_seconds=60, grace_seconds=600).sweep_once() == 0
    assert right.asked == {"a1", "a2", "a3"}


async def test_an_empty_database_is_refused_while_old_blobs_exist(
    file_tier: FileTier, caplog: pytest.LogCaptureFixture
):
    await store(file_tier, "a1", [b"x"])
    age_file(file_tier, "a1", HOUR)
    # Never swept before (an upgrade, or the record lost): the identity
    # alone cannot tell, the count does.
    empty = FakeMetadata(database_id="new-db", archived_versions=0, transient_versions=7)
    assert await Sweeper([file_tier], empty, interval_seconds=60, grace_seconds=600).sweep_once() == 0
    assert await keys(file_tier) == {"a1"}
    assert "has no archived version" in caplog.text
    assert await file_tier.swept_database_id() is None


async def test_a_new_database_is_accepted_deliberately(file_tier: FileTier):
    for key in ("kept", "orphan"):
        await store(file_tier, key, [b"x"])
        age_file(file_tier, key, HOUR)
    await file_tier.record_swept_database_id("old-db")
    new = FakeMetadata(referenced={"kept"}, database_id="new-db")
    accepting = Sweeper([file_tier], new, interval_seconds=60, grace_seconds=600, accept_database_id="new-db")
    assert await accepting.sweep_once() == 1
    assert await keys(file_tier) == {"kept"}
    assert await file_tier.swept_database_id() == "new-db"
    # Accepting one id accepts no other.
    other = FakeMetadata(database_id="other-db")
    assert await Sweeper(
        [file_tier], other, interval_seconds=60, grace_seconds=600, accept_database_id="new-db"
    ).sweep_once() == 0
    assert other.asked == set()


async def test_the_memory_tier_is_checked_against_its_database_only():
    """Its blobs live as long as the process, which recorded the database at
    its first sweep; metadata may have forgotten every transient version
    (a replica's expired lease) while a thawed replica still holds blobs."""
    memory = MemoryTier(10_000, clock=lambda: time.time() - HOUR)
    await store(memory, "t1", [b"x"])
    await store(memory, "t2", [b"y"])
    no_transient = FakeMetadata(referenced={"t2"}, archived_versions=4, transient_versions=0)
    assert await Sweeper([memory], no_transient, interval_seconds=60, grace_seconds=600).sweep_once() == 1
    assert await keys(memory) == {"t2"}
    other = FakeMetadata(database_id="db-2")
    assert await Sweeper([memory], other, interval_seconds=60, grace_seconds=600).sweep_once() == 0
    assert await keys(memory) == {"t2"}


async def test_young_blobs_do_not_make_a_new_database_look_empty(file_tier: FileTier):
    """A brand-new registry's first upload, between publication and commit."""
    await store(file_tier, "first", [b"x"])
    fresh = FakeMetadata(database_id="fresh", archived_versions=0, transient_versions=0)
    assert await Sweeper([file_tier], fresh, interval_seconds=60, grace_seconds=600).sweep_once() == 0
    assert await file_tier.swept_database_id() == "fresh"


async def test_the_swept_database_is_kept_beside_the_blobs(tmp_path: Path):
    tier = FileTier(tmp_path)
    await tier.open()
    await tier.record_swept_database_id("db-x")
    await tier.close()
    assert (tmp_path / "blobs" / ".swept-database").read_text().strip() == "db-x"
    reopened = FileTier(tmp_path)
    await reopened.open()
    try:
        assert await reopened.swept_database_id() == "db-x"
        assert await reopened.list_blobs() == []
    finally:
        await reopened.close()


async def test_a_refusal_is_counted(file_tier: FileTier):
    from services.blobstore.tests.test_metrics import sample

    await store(file_tier, "a1", [b"x"])
    age_file(file_tier, "a1", HOUR)
    await file_tier.record_swept_database_id("db-1")
    before = sample("registry_sweeper_runs_total", outcome="refused")
    await Sweeper([file_tier], FakeMetadata(database_id="db-2"), interval_seconds=60, grace_seconds=600).sweep_once()
    assert sample("registry_sweeper_runs_total", outcome="refused") - before == 1
