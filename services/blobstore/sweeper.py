"""Removal of orphaned blobs.

A blob is stored before its version is committed (see docs/design.md), so a
frontend that dies in between leaves a blob no version references; so does
one that dies before deleting the blobs a commit evicted. Every interval the
sweeper asks metadata which of the blobs older than a grace period are
unreferenced, and deletes those. It also removes what uploads whose process
died left behind: temp files (of another replica sharing the archive
directory) or multipart uploads idle for the grace period (S3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc
from registry import metadata_pb2, metadata_pb2_grpc

from services.blobstore.store.base import BlobTier
from services.common import metrics
from services.common.grpc_client import call_idempotent

log = logging.getLogger("registry.blobstore")

# Among the given keys, those no version references.
FindUnreferenced = Callable[[list[str]], Awaitable[Iterable[str]]]

MAX_KEYS_PER_LOOKUP = 1000


def metadata_lookup(channel: grpc.aio.Channel, timeout: float) -> FindUnreferenced:
    """`FindUnreferenced` through `registry.MetadataService` (retried while
    UNAVAILABLE, each attempt with a deadline)."""
    stub = metadata_pb2_grpc.MetadataServiceStub(channel)

    async def find_unreferenced(keys: list[str]) -> list[str]:
        request = metadata_pb2.FindUnreferencedBlobsRequest(keys=keys)
        reply = await call_idempotent(
            "metadata", lambda: stub.FindUnreferencedBlobs(request, timeout=timeout)
        )
        return list(reply.keys)

    return find_unreferenced


class Sweeper:
    """Periodically deletes blobs that are old enough and unreferenced.

    Without a `find_unreferenced` lookup (no metadata address configured) it
    only removes abandoned uploads. A failed sweep is logged and tried
    again at the next interval; it never stops the service.
    """

    def __init__(
        self,
        tiers: Sequence[BlobTier],
        find_unreferenced: FindUnreferenced | None,
        *,
        interval_seconds: float,
        grace_seconds: float,
        batch_size: int = MAX_KEYS_PER_LOOKUP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tiers = tiers
        self._find_unreferenced = find_unreferenced
        self._interval = interval_seconds
        self._grace = grace_seconds
        self._batch_size = min(batch_size, MAX_KEYS_PER_LOOKUP)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> int:
        """One sweep of every tier; returns how many blobs were deleted.
        Errors are logged, per tier, and not raised."""
        deleted = 0
        outcome = "ok"
        for tier in self._tiers:
            try:
                await tier.remove_abandoned_uploads()
                if self._find_unreferenced is not None:
                    deleted += await self._sweep_tier(tier, self._find_unreferenced)
            except Exception as exc:  # noqa: BLE001 - retried next interval
                outcome = "failed"
                log.warning("sweep of the %s tier failed (retried in %.0fs): %s", tier.name, self._interval, exc)
        metrics.blobstore().sweeps.labels(outcome).inc()
        return deleted

    async def _sweep_tier(self, tier: BlobTier, find_unreferenced: FindUnreferenced) -> int:
        cutoff = self._clock() - self._grace
        candidates = [blob.key for blob in await tier.list_blobs() if blob.stored_at <= cutoff]
        deleted = 0
        for start in range(0, len(candidates), self._batch_size):
            batch = candidates[start : start + self._batch_size]
            # Only keys we asked about: a confused reply must not delete others.
            orphans = set(await find_unreferenced(batch)).intersection(batch)
            for key in orphans:
                await tier.delete(key)
            deleted += len(orphans)
            metrics.blobstore().swept_blobs.labels(tier.name).inc(len(orphans))
        if deleted:
            log.info("swept %d orphaned blobs from the %s tier", deleted, tier.name)
        return deleted

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="blob sweeper")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sweep_once()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
