"""RetrieveVersionData: a version's data, streamed from the blobstore replica
that holds it, and what the registry does when that data is gone."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import grpc
from cogmentAPI import model_registry_pb2 as api
from opentelemetry import trace
from registry import metadata_pb2

from services.common import metrics
from services.common.errors import DataLoss, NotFound, RegistryError, quoted
from services.common.grpc_client import upstream_error
from services.common.limits import RequestLimits
from services.common.wire import data_chunk_size
from services.frontend.blob_replicas import BlobMissing
from services.frontend.upstream import BLOBSTORE

log = logging.getLogger("registry.frontend")

# RetrieveVersionDataReplyChunk with no data: nothing on the wire.
_EMPTY_DATA_CHUNK = b""


class DownloadMetadata(Protocol):
    """The metadata calls of a download (upstream.MetadataClient)."""

    async def resolve_version(
        self, model_id: str, version_number: int, *, touch: bool
    ) -> metadata_pb2.ResolveVersionReply: ...

    async def forget_lost_version(self, blob_key: str) -> bool: ...


class DownloadBlobs(Protocol):
    """The blob call of a download (blob_replicas.BlobRouter)."""

    def get(
        self, key: str, *, archived: bool, expected_size: int, expected_sha256: bytes
    ) -> AsyncGenerator[bytes, None]: ...


@dataclass(eq=False)
class Downloads:
    """RetrieveVersionData: resolves the version, streams its blob, and makes
    a transient version whose data was lost disappear altogether."""

    metadata: DownloadMetadata
    blobs: DownloadBlobs
    limits: RequestLimits = RequestLimits()

    async def read_version_data(self, model_id: str, version_number: int) -> AsyncIterator[bytes]:
        """The encoded RetrieveVersionDataReplyChunk messages of one
        version's data, each chunk at most the configured size.

        Data gone from its blob: NOT_FOUND for a transient version, which is
        forgotten before the reply (a client that got NOT_FOUND never sees
        it listed again), DATA_LOSS for an archived one. A relative number
        (-1: the latest) whose version turns out lost is resolved again
        once it is forgotten: `-1` names the latest version whose data
        exists, not one whose data is gone.
        """
        self.limits.check_model_id(model_id)
        for attempt in range(_RELATIVE_RETRIES + 1):
            try:
                # aclosing: a client that stops reading closes the blob read at once.
                async with aclosing(self._read_resolved(model_id, version_number)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except _LostTransient as lost:
                if version_number > 0 or not lost.retry or attempt == _RELATIVE_RETRIES:
                    raise lost.error from None

    async def _read_resolved(self, model_id: str, version_number: int) -> AsyncIterator[bytes]:
        resolved = await self.metadata.resolve_version(model_id, version_number, touch=True)
        info = resolved.version_info
        trace.get_current_span().set_attributes(
            {
                "model_id": model_id,
                "version_number": info.version_number,
                "archived": info.archived,
                "data_size": info.data_size,
            }
        )
        chunks = self.blobs.get(
            resolved.blob_key,
            archived=info.archived,
            expected_size=info.data_size,
            expected_sha256=base64.b64decode(info.data_hash),
        )
        sent = 0
        forgotten = False
        sent_bytes = metrics.frontend().download_bytes.labels(metrics.tier_label(info.archived))
        try:
            async for chunk in chunks:
                sent += 1
                sent_bytes.inc(data_chunk_size(chunk))
                yield chunk
        except BlobMissing:
            if info.archived:
                metrics.frontend().data_loss.labels("missing").inc()
                raise _missing_data(info) from None
            # The data is gone (eviction race, or the replica holding it
            # restarted or left): the info goes too, before the reply, so
            # both answer NOT_FOUND from now on.
            forgotten = True
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(BLOBSTORE, exc) from None
        finally:
            await chunks.aclose()
        if forgotten:
            await self._forget_lost_version(resolved.blob_key)
            # Nothing was sent: a blob is found missing when opened.
            raise _LostTransient(_missing_data(info), retry=sent == 0)
        if sent == 0:
            # A zero-byte version: one empty chunk, for clients that expect a message.
            yield _EMPTY_DATA_CHUNK

    async def _forget_lost_version(self, blob_key: str) -> None:
        try:
            if await self.metadata.forget_lost_version(blob_key):
                log.warning("forgot a transient version whose data was lost (blob %s)", blob_key)
        except RegistryError as exc:
            log.warning("could not forget the version of lost blob %s: %s", blob_key, exc)


# How many times a relative number is resolved again after its version was
# found lost (each time one version fewer exists).
_RELATIVE_RETRIES = 3


class _LostTransient(Exception):
    """A transient version's data was gone (and the version is now forgotten)."""

    def __init__(self, error: RegistryError, *, retry: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry = retry


def _missing_data(info: api.ModelVersionInfo) -> RegistryError:
    what = f"version {info.version_number} of model {quoted(info.model_id)}"
    if info.archived:
        return DataLoss(f"the archived data of {what} is missing from the archive")
    return NotFound(
        f"the data of {what} is no longer held in memory (evicted from the version cache, "
        "or the blobstore replica holding it restarted)"
    )
