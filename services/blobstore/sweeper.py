"""Removal of orphaned blobs, by rules that cannot destroy data.

A blob is stored before its version is committed (see docs/design.md), so a
frontend that dies in between leaves a blob no version references; so does
one that dies before deleting the blobs a commit evicted. Every interval the
sweeper asks metadata which of the blobs older than a grace period are
unreferenced, and deletes those. It also removes what uploads whose process
died left behind: temp files (of another replica sharing the archive
directory) or multipart uploads idle for the grace period (S3).

"Unreferenced" is only as true as the database that says it, so before a
tier is swept (docs/design.md, "the sweeper's safety rules"):

- a blob's age is the tier's own publication record (`StoredBlob.published_at`),
  never a file's mtime or an object's LastModified; a blob without one gets
  one and waits a whole grace period from then;
- an upload in progress in this process is never swept, whatever is listed;
- metadata must be the database this tier was last swept against (its
  `DescribeDatabase` id, kept beside the blobs by the tier) and, for the
  archive, must hold an archived version while the archive holds blobs
  older than the grace period. Otherwise the sweep of that tier is
  refused, with one log line saying why and what the operator can do:
  `BLOBSTORE_ACCEPT_DATABASE_ID` names a database to accept deliberately.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from registry import metadata_pb2, metadata_pb2_grpc

from services.blobstore.config import ACCEPT_DATABASE_ID_VARIABLE
from services.blobstore.store.base import BlobTier
from services.common import metrics
from services.common.grpc_client import call_idempotent

log = logging.getLogger("registry.blobstore")

MAX_KEYS_PER_LOOKUP = 1000


@dataclass(frozen=True)
class DatabaseView:
    """What metadata says about its database (`DescribeDatabase`)."""

    database_id: str
    archived_versions: int
    transient_versions: int


class MetadataView(Protocol):
    """What the sweeper asks metadata."""

    async def describe_database(self) -> DatabaseView: ...

    async def find_unreferenced(self, keys: list[str]) -> Iterable[str]:
        """Among the given keys, those no version references."""
        ...


class GrpcMetadataView:
    """`MetadataView` through `registry.MetadataService` (retried while
    UNAVAILABLE, each attempt with a deadline)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = metadata_pb2_grpc.MetadataServiceStub(channel)
        self._timeout = timeout

    async def describe_database(self) -> DatabaseView:
        request = metadata_pb2.DescribeDatabaseRequest()
        reply = await call_idempotent(
            "metadata", lambda: self._stub.DescribeDatabase(request, timeout=self._timeout)
        )
        return DatabaseView(reply.database_id, reply.archived_versions, reply.transient_versions)

    async def find_unreferenced(self, keys: list[str]) -> list[str]:
        request = metadata_pb2.FindUnreferencedBlobsRequest(keys=keys)
        reply = await call_idempotent(
            "metadata", lambda: self._stub.FindUnreferencedBlobs(request, timeout=self._timeout)
        )
        return list(reply.keys)


class SweepRefused(Exception):
    """A tier's sweep was refused: metadata does not look like the database
    its blobs belong to. The message says why and what to do."""


class Sweeper:
    """Periodically deletes blobs that are old enough and unreferenced,
    under the safety rules of the module's doc.

    Without `metadata` (no metadata address configured) it only removes
    abandoned uploads. A failed or refused sweep is logged and tried again
    at the next interval; it never stops the service.
    """

    def __init__(
        self,
        tiers: Sequence[BlobTier],
        metadata: MetadataView | None,
        *,
        interval_seconds: float,
        grace_seconds: float,
        accept_database_id: str | None = None,
        batch_size: int = MAX_KEYS_PER_LOOKUP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tiers = tiers
        self._metadata = metadata
        self._interval = interval_seconds
        self._grace = grace_seconds
        self._accept_database_id = accept_database_id or None
        self._batch_size = min(batch_size, MAX_KEYS_PER_LOOKUP)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> int:
        """One sweep of every tier; returns how many blobs were deleted.
        Errors and refusals are logged, per tier, and not raised."""
        deleted = 0
        outcome = "ok"
        database: DatabaseView | None = None
        if self._metadata is not None:
            try:
                database = await self._metadata.describe_database()
            except Exception as exc:  # noqa: BLE001 - retried next interval
                outcome = "failed"
                log.warning(
                    "cannot sweep: metadata does not describe its database (retried in %.0fs): %s", self._interval, exc
                )
        for tier in self._tiers:
            try:
                await tier.remove_abandoned_uploads()
                if database is not None:
                    deleted += await self._sweep_tier(tier, self._metadata, database)
            except SweepRefused as refusal:
                outcome = "refused"
                log.error("%s", refusal)
            except Exception as exc:  # noqa: BLE001 - retried next interval
                outcome = "failed"
                log.warning("sweep of the %s tier failed (retried in %.0fs): %s", tier.name, self._interval, exc)
        metrics.blobstore().sweeps.labels(outcome).inc()
        return deleted

    async def _check_database(self, tier: BlobTier, candidates: list[str], database: DatabaseView) -> None:
        """Raises SweepRefused unless `database` is the one `tier` belongs to;
        then records it as the database the tier was swept against.
        `candidates`: the blobs old enough to be swept (young ones and
        uploads in progress do not make a new database look wrong)."""
        accepted = database.database_id == self._accept_database_id
        swept_against = await tier.swept_database_id()
        to_accept = (
            f"If database {database.database_id} is the right one, restart the blobstore with "
            f"{ACCEPT_DATABASE_ID_VARIABLE}={database.database_id} (its blobs that it does not reference will be deleted)"
        )
        if swept_against is not None and swept_against != database.database_id and not accepted:
            raise SweepRefused(
                f"refusing to sweep the {tier.name} tier ({tier.location}): metadata is database "
                f"{database.database_id}, but these blobs were last swept against database {swept_against}. "
                "Metadata may be on the wrong database (check COGMENT_MODEL_REGISTRY_METADATA_URL, or a restore): "
                f"nothing is deleted until it is back. {to_accept}."
            )
        # Durable tiers only: a memory tier's blobs live as long as this
        # process, whose first sweep recorded the database; and metadata
        # legitimately forgets every transient version of a replica whose
        # lease expired (a frozen one keeps its blobs when it thaws).
        if tier.durable and candidates and database.archived_versions == 0 and not accepted:
            kind = "archived"
            raise SweepRefused(
                f"refusing to sweep the {tier.name} tier ({tier.location}): it holds {len(candidates)} blobs older "
                f"than the grace period but "
                f"metadata database {database.database_id} has no {kind} version: metadata may be on an empty "
                f"database (check COGMENT_MODEL_REGISTRY_METADATA_URL): nothing is deleted. If every {kind} "
                f"version was deleted on purpose, restart the blobstore with "
                f"{ACCEPT_DATABASE_ID_VARIABLE}={database.database_id}."
            )
        if swept_against != database.database_id:
            await tier.record_swept_database_id(database.database_id)
            log.info(
                "the %s tier (%s) is now swept against metadata database %s",
                tier.name,
                tier.location,
                database.database_id,
            )

    async def _sweep_tier(self, tier: BlobTier, metadata: MetadataView, database: DatabaseView) -> int:
        blobs = await tier.list_blobs()
        # Listed after the listing: an upload that published meanwhile was
        # in progress when listed, or is listed with its fresh record.
        in_progress = tier.uploads_in_progress()
        unrecorded = [blob.key for blob in blobs if blob.published_at is None and blob.key not in in_progress]
        if unrecorded:
            # From now on they age like any blob; this sweep leaves them.
            await tier.record_published(unrecorded)
        cutoff = self._clock() - self._grace
        candidates = [
            blob.key
            for blob in blobs
            if blob.published_at is not None and blob.published_at <= cutoff and blob.key not in in_progress
        ]
        await self._check_database(tier, candidates, database)
        deleted = 0
        for start in range(0, len(candidates), self._batch_size):
            batch = candidates[start : start + self._batch_size]
            # Only keys we asked about: a confused reply must not delete others.
            orphans = set(await metadata.find_unreferenced(batch)).intersection(batch)
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
