"""What the blobstore measures: bytes stored and read per tier, the fsync
of archived blobs, DATA_LOSS detections, the memory tier's fill, sweeps."""

from __future__ import annotations

import hashlib
import os
import time

import grpc
from prometheus_client import REGISTRY

from services.blobstore.store import FileTier, MemoryTier
from services.blobstore.sweeper import Sweeper
from services.blobstore.tests.helpers import MIB, Blobstore, store
from services.blobstore.tests.test_sweeper import HOUR, FakeMetadata, age_file


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_bytes_written_and_read_are_counted_per_tier(blobstore: Blobstore):
    data = os.urandom(3 * MIB + 5)
    before = {
        (name, tier): sample(name, tier=tier)
        for name in ("registry_blobstore_written_bytes_total", "registry_blobstore_read_bytes_total")
        for tier in ("memory", "archive")
    }
    fsyncs = sample("registry_blobstore_fsync_duration_seconds_count")
    await blobstore.put("counted-m", data, archived=False)
    await blobstore.put("counted-a", data, archived=True)
    await blobstore.put("counted-a2", data[:100], archived=True)
    await blobstore.get("counted-a", archived=True)
    await blobstore.get("counted-a", archived=True, chunk_size=MIB)

    def delta(name: str, tier: str) -> float:
        return sample(name, tier=tier) - before[(name, tier)]

    assert delta("registry_blobstore_written_bytes_total", "memory") == len(data)
    assert delta("registry_blobstore_written_bytes_total", "archive") == len(data) + 100
    assert delta("registry_blobstore_read_bytes_total", "archive") == 2 * len(data)
    assert delta("registry_blobstore_read_bytes_total", "memory") == 0
    assert sample("registry_blobstore_fsync_duration_seconds_count") - fsyncs == 2, "one per archived blob"


async def test_memory_tier_fill_and_budget_are_read_at_scrape_time(blobstore: Blobstore):
    held = sample("registry_blobstore_memory_bytes")
    await blobstore.put("held", b"x" * 1000, archived=False)
    assert sample("registry_blobstore_memory_bytes") - held == 1000
    assert sample("registry_blobstore_memory_max_bytes") == blobstore.config.memory_max_bytes


async def test_corrupt_archived_data_is_counted_as_data_loss(blobstore: Blobstore):
    data = os.urandom(MIB)
    await blobstore.put("rotting", data, archived=True)
    path = blobstore.archive_dir / "blobs" / "ro" / "rotting"
    before = sample("registry_data_loss_total", cause="corrupt")
    path.write_bytes(b"y" * len(data))
    recorded = dict(expected_size=len(data), expected_sha256=hashlib.sha256(data).digest())
    await blobstore.get_failing(grpc.StatusCode.DATA_LOSS, "rotting", archived=True, **recorded)
    path.write_bytes(data[:10])
    await blobstore.get_failing(grpc.StatusCode.DATA_LOSS, "rotting", archived=True, **recorded)
    assert sample("registry_data_loss_total", cause="corrupt") - before == 2
    # A blob that is not there is NOT_FOUND here: the frontend decides what that means.
    await blobstore.get_failing(grpc.StatusCode.NOT_FOUND, "never-stored", archived=True)
    assert sample("registry_data_loss_total", cause="corrupt") - before == 2


async def test_sweeps_and_the_blobs_they_remove_are_counted(file_tier: FileTier):
    memory = MemoryTier(10_000, clock=lambda: time.time() - HOUR)
    await store(memory, "orphan-m", [b"1"])
    for key in ("orphan-f1", "orphan-f2"):
        await store(file_tier, key, [b"x"])
        age_file(file_tier, key, HOUR)
    before = {
        "ok": sample("registry_sweeper_runs_total", outcome="ok"),
        "failed": sample("registry_sweeper_runs_total", outcome="failed"),
        "memory": sample("registry_sweeper_removed_blobs_total", tier="memory"),
        "archive": sample("registry_sweeper_removed_blobs_total", tier="archive"),
    }
    metadata = FakeMetadata(failures=1)
    sweeper = Sweeper([memory, file_tier], metadata, interval_seconds=60, grace_seconds=600)
    assert await sweeper.sweep_once() == 2  # the memory tier's lookup failed
    assert await sweeper.sweep_once() == 1
    assert sample("registry_sweeper_runs_total", outcome="failed") - before["failed"] == 1
    assert sample("registry_sweeper_runs_total", outcome="ok") - before["ok"] == 1
    assert sample("registry_sweeper_removed_blobs_total", tier="memory") - before["memory"] == 1
    assert sample("registry_sweeper_removed_blobs_total", tier="archive") - before["archive"] == 2
