"""`registry.Admin`: importing another registry's archive (the original Go
registry's archive directory, read by `model-registry
import-cogment-archive`), one model and one version at a time.

An imported version keeps what the public CreateVersion never lets a client
set: its number and creation timestamp. Its bytes take the CreateVersion
path (streamed to a blobstore replica as an archived blob, counted and
hashed on the way, stored only if they match the header's data_size and
data_hash), then metadata commits it with its own number
(`MetadataStore.import_version` decides what an import may do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from cogmentAPI import model_registry_pb2 as api
from opentelemetry import trace
from registry import admin_pb2, metadata_pb2

from services.common import access
from services.common.errors import InvalidArgument
from services.common.idle import receive_within
from services.common.limits import RequestLimits
from services.frontend.background import BackgroundTasks
from services.frontend.blob_deletion import delete_blobs
from services.frontend.upload_check import UploadCheck, decode_data_hash
from services.frontend.uploads import UploadBlobs, commit_stored_blob, read_header, store_checked_blob


class ImportMetadata(Protocol):
    """The metadata calls of an import (upstream.MetadataClient)."""

    async def retrieve_models(self, request: api.RetrieveModelsRequest) -> api.RetrieveModelsReply: ...

    async def import_model(self, info: api.ModelInfo) -> admin_pb2.ImportModelReply: ...

    async def import_version(self, info: api.ModelVersionInfo, blob_key: str) -> admin_pb2.ImportVersionReply: ...


@dataclass(eq=False)
class Imports:
    """ImportModel and ImportVersion."""

    metadata: ImportMetadata
    blobs: UploadBlobs
    background: BackgroundTasks
    limits: RequestLimits = RequestLimits()

    async def import_model(self, info: api.ModelInfo) -> admin_pb2.ImportModelReply:
        """Creates the model with `info`'s user_data unless it exists (an
        existing model keeps its own)."""
        self.limits.check_model_id(info.model_id, "model_info.model_id")
        self.limits.check_user_data(info.user_data, "model_info.user_data")
        return await self.metadata.import_model(info)

    async def import_version(self, requests: AsyncIterator[bytes]) -> admin_pb2.ImportVersionReply:
        """Stores the streamed data of one archived version, checked against
        the header's data_size and data_hash, then commits it with the
        header's number, timestamp and user_data; nothing is left behind
        when anything fails. `requests` are CreateVersionRequestChunk
        messages, still encoded (as CreateVersion receives them)."""
        # As for CreateVersion: a client that stops sending is not waited for.
        stream = aiter(receive_within(requests, self.limits.upload_idle_timeout_seconds, self.limits.upload_idle))
        info = await read_header(stream, self.limits)
        access.note(version_number=info.version_number or None)  # the number it imports, for the audit line
        if info.version_number == 0:
            raise InvalidArgument("an imported version needs its version_number (1 or more) in the header")
        if info.creation_timestamp == 0:
            raise InvalidArgument("an imported version needs its creation_timestamp (nanoseconds) in the header")
        if not info.data_hash:
            raise InvalidArgument("an imported version needs its data_hash in the header: its bytes are checked against it")
        expected_digest = decode_data_hash(info.data_hash)
        if not info.archived:
            raise InvalidArgument("only archived versions are imported: set archived in the header")
        trace.get_current_span().set_attributes(
            {"model_id": info.model_id, "version_number": info.version_number, "data_size": info.data_size}
        )
        # Fail fast on an unknown model, before any byte is moved.
        await self.metadata.retrieve_models(api.RetrieveModelsRequest(model_ids=[info.model_id]))

        blob = await self.blobs.place(True)
        check = UploadCheck(info.data_size, expected_digest)
        await store_checked_blob(blob, True, stream, check)
        reply = await commit_stored_blob(
            self.metadata.import_version(info, blob.key), self.blobs, self.background, blob.key, archived=True
        )
        if reply.already_imported:
            # That number already holds these bytes: this copy is not needed.
            self.background.spawn(delete_blobs(self.blobs, [metadata_pb2.BlobRef(key=blob.key, archived=True)]))
        trace.get_current_span().set_attribute("already_imported", reply.already_imported)
        return reply
