"""Deleting blobs that no version references any more: evicted from the
version cache, of a deleted model, or of a commit metadata refused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from registry import metadata_pb2

log = logging.getLogger("registry.frontend")


class BlobDeleter(Protocol):
    """Deletes one blob where it lives (blob_replicas.BlobRouter)."""

    async def delete(self, key: str, *, archived: bool) -> None: ...


async def delete_blobs(blobs: BlobDeleter, refs: Iterable[metadata_pb2.BlobRef]) -> None:
    """Deletes every blob of `refs` concurrently. Never raises: a blob that
    cannot be deleted now is unreferenced all the same, and the blobstore's
    sweeper removes it later."""
    refs = list(refs)
    if not refs:
        return
    results = await asyncio.gather(
        *(blobs.delete(ref.key, archived=ref.archived) for ref in refs), return_exceptions=True
    )
    for ref, result in zip(refs, results):
        if isinstance(result, BaseException):
            log.warning("could not delete blob %s (left to the sweeper): %s", ref.key, result)
