"""CreateVersion: the upload protocol and the commit point of a version.

The commit point (see docs/design.md, 2): a version's bytes are stored first
(blobstore: durable and complete, or nothing), then metadata commits it in
one transaction, which allocates the number and makes it visible. A failure
before the commit leaves no blob (the blobstore discards an upload that did
not `finish`); a commit metadata refused deletes the blob; a commit whose
outcome is unknown keeps it, and the blobstore's sweeper removes it if no
version references it (as it does the blob of a frontend that died between
the two steps).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import KW_ONLY, dataclass
from typing import Protocol, TypeVar

import grpc
from cogmentAPI import model_registry_pb2 as api
from google.protobuf.message import DecodeError
from opentelemetry import trace
from registry import blobstore_pb2, metadata_pb2

from services.common import access, metrics
from services.common.errors import InvalidArgument, RegistryError
from services.common.grpc_client import upstream_error
from services.common.idle import receive_within
from services.common.limits import RequestLimits, check_data_size, check_version_fits_cache
from services.common.wire import upload_body_data
from services.frontend.background import BackgroundTasks
from services.frontend.blob_deletion import delete_blobs
from services.frontend.upload_check import UploadCheck, decode_data_hash
from services.frontend.upstream import BLOBSTORE

tracer = trace.get_tracer("registry.frontend")

T = TypeVar("T")

_FINISH = blobstore_pb2.PutBlobRequest(finish=blobstore_pb2.PutBlobRequest.Finish()).SerializeToString()

# Answers of CommitVersion that prove nothing was committed.
_COMMIT_REFUSED = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class UploadMetadata(Protocol):
    """The metadata calls of an upload (upstream.MetadataClient)."""

    async def retrieve_models(self, request: api.RetrieveModelsRequest) -> api.RetrieveModelsReply: ...

    async def commit_version(self, info: api.ModelVersionInfo, blob_key: str) -> metadata_pb2.CommitVersionReply: ...


class PlacedBlob(Protocol):
    """A new blob's key and the replica chosen to store it (blob_replicas.NewBlob)."""

    @property
    def key(self) -> str: ...

    @property
    def address(self) -> str: ...

    async def put(self, size: int, requests: AsyncIterator[bytes]) -> None: ...


class UploadBlobs(Protocol):
    """The blob calls of an upload (blob_replicas.BlobRouter)."""

    async def place(self, archived: bool) -> PlacedBlob: ...

    async def delete(self, key: str, *, archived: bool) -> None: ...


def _decode_chunk(raw: bytes, position: int) -> api.CreateVersionRequestChunk:
    try:
        return api.CreateVersionRequestChunk.FromString(raw)
    except DecodeError:
        raise InvalidArgument(f"message {position} of CreateVersion is not a CreateVersionRequestChunk") from None


async def read_header(stream: AsyncIterator[bytes], limits: RequestLimits) -> api.ModelVersionInfo:
    """The version announced by the first message of an upload stream
    (CreateVersion, or an admin import): a header naming a model, within
    the request limits."""
    try:
        first = _decode_chunk(await stream.__anext__(), 1)
    except StopAsyncIteration:
        raise InvalidArgument("empty stream: the first message must be a header with version_info") from None
    if first.WhichOneof("msg") != "header":
        raise InvalidArgument("the first message of CreateVersion must be a header, not a body")
    info = api.ModelVersionInfo()
    info.CopyFrom(first.header.version_info)
    # The audit line names the model even if the upload fails later.
    access.note(model_id=info.model_id)
    limits.check_model_id(info.model_id, "header.version_info.model_id")
    limits.check_user_data(info.user_data, "header.version_info.user_data")
    check_data_size(info.data_size)
    return info


async def store_checked_blob(blob: PlacedBlob, archived: bool, stream: AsyncIterator[bytes], check: UploadCheck) -> None:
    """Streams the bodies of `stream` into `blob`, counted and hashed by
    `check`; the blob is stored only if they match what it expects (else
    the blobstore gets no `finish` and discards it, and `check.error` is raised)."""

    received = metrics.frontend().upload_bytes.labels(metrics.tier_label(archived))

    async def blob_requests() -> AsyncIterator[bytes]:
        header = blobstore_pb2.PutBlobRequest.Header(key=blob.key, size=check.expected_size, archived=archived)
        yield blobstore_pb2.PutBlobRequest(header=header).SerializeToString()
        try:
            async for raw in stream:
                forwarded = forward(raw)
                if forwarded is None:
                    return
                yield forwarded
        except RegistryError as exc:  # the client went quiet (upload idle timeout)
            check.error = exc
            return
        # Without `finish` the blobstore discards the upload.
        if check.finish():
            yield _FINISH

    def forward(raw: bytes) -> bytes | None:
        """What to send the blobstore for one client message; None (with
        `check.error` set) when the upload must stop."""
        data = upload_body_data(raw)
        if data is None:
            # Not the usual encoding: decode it, and re-encode what we forward.
            try:
                message = _decode_chunk(raw, check.chunks + 2)
            except InvalidArgument as exc:
                check.error = exc
                return None
            if message.WhichOneof("msg") != "body":
                check.error = InvalidArgument(
                    f"message {check.chunks + 2} of CreateVersion is not a body: only the first message is a header"
                )
                return None
            data = message.body.data_chunk
            raw = blobstore_pb2.PutBlobRequest(body=message.body).SerializeToString()
        if not check.add(data):
            return None
        received.inc(len(data))
        # The client's body message is a PutBlobRequest body as is.
        return raw

    with tracer.start_as_current_span(
        "upload and hash", attributes={"blob_key": blob.key, "blobstore": blob.address}
    ) as span:
        try:
            await blob.put(check.expected_size, blob_requests())
        except grpc.aio.AioRpcError as exc:
            if check.error is not None:
                raise check.error from None
            raise upstream_error(BLOBSTORE, exc) from None
        finally:
            span.set_attributes({"bytes": check.received, "chunks": check.chunks})
    if check.error is not None:  # pragma: no cover - the blobstore must have refused
        raise check.error


async def commit_stored_blob(
    commit: Awaitable[T], blobs: UploadBlobs, background: BackgroundTasks, blob_key: str, *, archived: bool
) -> T:
    """Awaits the commit of the stored blob `blob_key`, and decides the
    blob's fate when it fails: deleted when metadata refused (no version
    has it), kept when the outcome is unknown (the sweeper removes it if
    nothing references it)."""
    try:
        return await commit
    except RegistryError as exc:
        if exc.code in _COMMIT_REFUSED:
            # Metadata refused: the version does not exist, so neither may its data.
            background.spawn(delete_blobs(blobs, [metadata_pb2.BlobRef(key=blob_key, archived=archived)]))
        raise


@dataclass(eq=False)
class Uploads:
    """CreateVersion: checks the header, streams the data to a blobstore
    replica while checking it, then commits the version."""

    metadata: UploadMetadata
    blobs: UploadBlobs
    background: BackgroundTasks
    _: KW_ONLY
    version_cache_max_bytes: int
    limits: RequestLimits = RequestLimits()

    async def create_version(self, requests: AsyncIterator[bytes]) -> api.ModelVersionInfo:
        """Stores the streamed data, then commits the version; nothing is
        left behind when anything fails on the way.

        `requests` are the client's CreateVersionRequestChunk messages still
        encoded: the header is decoded, the bodies are hashed in place and
        forwarded to the blobstore as they came (see upstream.BlobStoreClient).
        """
        # A client that stops sending is not waited for: its upload is ended
        # (and whatever it stored discarded) after the idle timeout.
        stream = aiter(receive_within(requests, self.limits.upload_idle_timeout_seconds, self.limits.upload_idle))
        info = await read_header(stream, self.limits)
        expected_digest = decode_data_hash(info.data_hash) if info.data_hash else None
        check_version_fits_cache(archived=info.archived, size=info.data_size, max_bytes=self.version_cache_max_bytes)
        trace.get_current_span().set_attributes(
            {"model_id": info.model_id, "archived": info.archived, "data_size": info.data_size}
        )
        # Fail fast on an unknown model, before any byte is moved.
        await self.metadata.retrieve_models(api.RetrieveModelsRequest(model_ids=[info.model_id]))

        blob = await self.blobs.place(info.archived)
        check = UploadCheck(info.data_size, expected_digest)
        await store_checked_blob(blob, info.archived, stream, check)

        info.data_hash = check.data_hash
        info.version_number = 0
        reply = await commit_stored_blob(
            self.metadata.commit_version(info, blob.key), self.blobs, self.background, blob.key, archived=info.archived
        )
        trace.get_current_span().set_attributes(
            {"version_number": reply.version_info.version_number, "evicted": len(reply.evicted_blobs)}
        )
        if reply.evicted_blobs:
            self.background.spawn(delete_blobs(self.blobs, reply.evicted_blobs))
        return reply.version_info
