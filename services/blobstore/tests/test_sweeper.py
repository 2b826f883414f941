"""The sweeper, with the metadata lookup replaced by a function."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from services.blobstore.store import FileTier, MemoryTier
from services.blobstore.sweeper import Sweeper
from services.blobstore.tests.helpers import store, temp_files

HOUR = 3600.0


class FakeMetadata:
    """Answers FindUnreferencedBlobs from a set of referenced keys."""

    def __init__(self, referenced: set[str] = frozenset(), *, failures: int = 0) -> None:
        self.referenced = set(referenced)
        self.failures = failures
        self.batches: list[list[str]] = []

    async def find_unreferenced(self, keys: list[str]) -> list[str]:
        self.batches.append(list(keys))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("metadata is down")
        return [key for key in keys if key not in self.referenced]

    @property
    def asked(self) -> set[str]:
        return {key for batch in self.batches for key in batch}


async def keys(tier) -> set[str]:
    return {blob.key for blob in await tier.list_blobs()}


def age_file(tier: FileTier, key: str, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(tier.path_of(key), (stamp, stamp))


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
    sweeper = Sweeper([memory, file_tier], metadata.find_unreferenced, interval_seconds=60, grace_seconds=600)
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
    sweeper = Sweeper([memory], metadata.find_unreferenced, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 2498
    assert sorted(len(batch) for batch in metadata.batches) == [500, 1000, 1000]
    assert await keys(memory) == {"k7", "k2400"}


async def test_a_reply_naming_other_keys_deletes_nothing_else():
    memory = MemoryTier(10_000, clock=lambda: 0.0)
    await store(memory, "asked", [b"a"])

    async def confused(keys: list[str]) -> list[str]:
        return ["not-asked"]

    memory_young = MemoryTier(10_000)
    await store(memory_young, "not-asked", [b"b"])
    sweeper = Sweeper([memory, memory_young], confused, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 0
    assert await keys(memory) == {"asked"} and await keys(memory_young) == {"not-asked"}


async def test_failures_are_logged_and_retried(caplog: pytest.LogCaptureFixture):
    memory = MemoryTier(10_000, clock=lambda: 0.0)
    await store(memory, "orphan", [b"x"])
    metadata = FakeMetadata(failures=1)
    sweeper = Sweeper([memory], metadata.find_unreferenced, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 0  # does not raise
    assert "metadata is down" in caplog.text
    assert await keys(memory) == {"orphan"}
    assert await sweeper.sweep_once() == 1
    assert await keys(memory) == set()


async def test_the_periodic_loop_survives_failures():
    memory = MemoryTier(10_000, clock=lambda: 0.0)
    await store(memory, "orphan", [b"x"])
    metadata = FakeMetadata(failures=3)
    sweeper = Sweeper([memory], metadata.find_unreferenced, interval_seconds=0.01, grace_seconds=600)
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
