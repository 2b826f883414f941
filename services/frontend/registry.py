"""What the public calls do, in terms of the internal services.

The commit point of a version (see docs/design.md): its bytes are stored
first (blobstore: durable and complete, or nothing), then metadata commits it
in one transaction, which allocates the number and makes it visible. A failure
before the commit deletes the blob; the blobstore's sweeper removes blobs
orphaned by a frontend that died between the two steps.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace
from cogmentAPI import model_registry_pb2 as api
from registry import blobstore_pb2, metadata_pb2

from services.common.errors import (
    DataLoss,
    InvalidArgument,
    NotFound,
    RegistryError,
    Unavailable,
)
from services.common.grpc_client import upstream_error
from services.common.limits import check_version_fits_cache
from services.frontend.config import FrontendConfig
from services.common.wire import upload_body_data
from services.frontend.blob_replicas import BlobMissing, BlobRouter, NewBlob
from services.frontend.upstream import BLOBSTORE, METADATA, MetadataClient

log = logging.getLogger("registry.frontend")
tracer = trace.get_tracer("registry.frontend")

_SHA256_BYTES = 32
_FINISH = blobstore_pb2.PutBlobRequest(finish=blobstore_pb2.PutBlobRequest.Finish()).SerializeToString()
# RetrieveVersionDataReplyChunk with no data: nothing on the wire.
_EMPTY_DATA_CHUNK = b""

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


def decode_data_hash(data_hash: str) -> bytes:
    """The raw digest of a `data_hash` (base64 of a SHA-256)."""
    try:
        digest = base64.b64decode(data_hash, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != _SHA256_BYTES:
        raise InvalidArgument(
            f"data_hash {data_hash!r} is not the base64 encoding of a SHA-256 digest (32 bytes)"
        )
    return digest


def _decode_chunk(raw: bytes, position: int) -> api.CreateVersionRequestChunk:
    try:
        return api.CreateVersionRequestChunk.FromString(raw)
    except DecodeError:
        raise InvalidArgument(f"message {position} of CreateVersion is not a CreateVersionRequestChunk") from None


def encode_data_hash(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class UploadCheck:
    """Counts and hashes an upload as it streams, against the header's promise.

    Each byte is hashed exactly once on the write path, here; the blobstore
    trusts the result and metadata records it.
    """

    def __init__(self, expected_size: int, expected_digest: bytes | None) -> None:
        self.expected_size = expected_size
        self.expected_digest = expected_digest
        self.received = 0
        self.chunks = 0
        self._hash = hashlib.sha256()
        self.error: RegistryError | None = None

    def add(self, data: bytes | memoryview) -> bool:
        """Accounts for one chunk; False (with `error` set) when it must stop."""
        self.received += len(data)
        self.chunks += 1
        if self.received > self.expected_size:
            self.error = InvalidArgument(
                f"received more than the {self.expected_size} bytes announced in header.version_info.data_size"
            )
            return False
        self._hash.update(data)
        return True

    def finish(self) -> bool:
        """Checks the totals at the end of the stream; False with `error` set on mismatch."""
        if self.received != self.expected_size:
            self.error = InvalidArgument(
                f"received {self.received} bytes but header.version_info.data_size announced {self.expected_size}"
            )
            return False
        if self.expected_digest is not None and self._hash.digest() != self.expected_digest:
            self.error = InvalidArgument(
                f"the SHA-256 of the {self.received} bytes received is {encode_data_hash(self._hash.digest())}, "
                f"not the data_hash {encode_data_hash(self.expected_digest)} of the header"
            )
            return False
        return True

    @property
    def data_hash(self) -> str:
        return encode_data_hash(self._hash.digest())


class ModelRegistry:
    """The public operations, orchestrating metadata and blobstore."""

    def __init__(self, config: FrontendConfig, metadata: MetadataClient, blobs: BlobRouter) -> None:
        self._config = config
        self._metadata = metadata
        self._blobs = blobs
        # Deletions of evicted blobs run after the reply; keep them referenced.
        self._background: set[asyncio.Task[None]] = set()
        # Internal watches of VersionUpdate subscribers, ended when draining.
        self._watches: set[grpc.aio.UnaryStreamCall] = set()
        self._draining = False

    # -- models ---------------------------------------------------------

    async def create_or_update_model(self, info: api.ModelInfo) -> None:
        if not info.model_id:
            raise InvalidArgument("model_info.model_id must not be empty")
        await self._metadata.upsert_model(info)

    async def delete_model(self, model_id: str) -> None:
        if not model_id:
            raise InvalidArgument("model_id must not be empty")
        reply = await self._metadata.delete_model(model_id)
        await self._delete_blobs(reply.deleted_blobs)

    async def retrieve_models(self, request: api.RetrieveModelsRequest) -> api.RetrieveModelsReply:
        return await self._metadata.retrieve_models(request)

    async def retrieve_version_infos(self, request: api.RetrieveVersionInfosRequest) -> api.RetrieveVersionInfosReply:
        if not request.model_id:
            raise InvalidArgument("model_id must not be empty")
        return await self._metadata.retrieve_version_infos(request)

    # -- versions -------------------------------------------------------

    async def create_version(self, requests: AsyncIterator[bytes]) -> api.ModelVersionInfo:
        """Stores the streamed data, then commits the version; nothing is
        left behind when anything fails on the way.

        `requests` are the client's CreateVersionRequestChunk messages still
        encoded: the header is decoded, the bodies are hashed in place and
        forwarded to the blobstore as they came (see BlobStoreClient).
        """
        stream = requests.__aiter__()
        try:
            first = _decode_chunk(await stream.__anext__(), 1)
        except StopAsyncIteration:
            raise InvalidArgument("empty stream: the first message must be a header with version_info") from None
        if first.WhichOneof("msg") != "header":
            raise InvalidArgument("the first message of CreateVersion must be a header, not a body")
        info = api.ModelVersionInfo()
        info.CopyFrom(first.header.version_info)
        if not info.model_id:
            raise InvalidArgument("header.version_info.model_id must not be empty")
        expected_digest = decode_data_hash(info.data_hash) if info.data_hash else None
        check_version_fits_cache(
            archived=info.archived, size=info.data_size, max_bytes=self._config.version_cache_max_bytes
        )
        trace.get_current_span().set_attributes(
            {"model_id": info.model_id, "archived": info.archived, "data_size": info.data_size}
        )
        # Fail fast on an unknown model, before any byte is moved.
        await self._metadata.retrieve_models(api.RetrieveModelsRequest(model_ids=[info.model_id]))

        blob = await self._blobs.place(info.archived)
        key = blob.key
        check = UploadCheck(info.data_size, expected_digest)
        with tracer.start_as_current_span(
            "upload and hash", attributes={"blob_key": key, "blobstore": blob.address}
        ) as span:
            try:
                await self._store_blob(blob, info.archived, stream, check)
            finally:
                span.set_attributes({"bytes": check.received, "chunks": check.chunks})

        info.data_hash = check.data_hash
        info.version_number = 0
        try:
            reply = await self._metadata.commit_version(info, key)
        except RegistryError as exc:
            if exc.code in _COMMIT_REFUSED:
                # Metadata refused: the version does not exist, so neither may its data.
                self._spawn(self._delete_blobs([metadata_pb2.BlobRef(key=key, archived=info.archived)]))
            # Otherwise (timeout, unavailable, cancelled) the commit may have
            # happened: keep the blob; if it is unreferenced the sweeper removes it.
            raise
        trace.get_current_span().set_attributes(
            {"version_number": reply.version_info.version_number, "evicted": len(reply.evicted_blobs)}
        )
        if reply.evicted_blobs:
            self._spawn(self._delete_blobs(reply.evicted_blobs))
        return reply.version_info

    async def _store_blob(
        self,
        blob: NewBlob,
        archived: bool,
        stream: AsyncIterator[bytes],
        check: UploadCheck,
    ) -> None:
        async def blob_requests() -> AsyncIterator[bytes]:
            header = blobstore_pb2.PutBlobRequest.Header(key=blob.key, size=check.expected_size, archived=archived)
            yield blobstore_pb2.PutBlobRequest(header=header).SerializeToString()
            async for raw in stream:
                data = upload_body_data(raw)
                if data is None:
                    # Not the usual encoding: decode it, and re-encode what we forward.
                    try:
                        message = _decode_chunk(raw, check.chunks + 2)
                    except InvalidArgument as exc:
                        check.error = exc
                        return
                    if message.WhichOneof("msg") != "body":
                        check.error = InvalidArgument(
                            f"message {check.chunks + 2} of CreateVersion is not a body: only the first message is a header"
                        )
                        return
                    data = message.body.data_chunk
                    raw = blobstore_pb2.PutBlobRequest(body=message.body).SerializeToString()
                if not check.add(data):
                    return
                # The client's body message is a PutBlobRequest body as is.
                yield raw
            # Without `finish` the blobstore discards the upload.
            if check.finish():
                yield _FINISH

        try:
            await blob.put(check.expected_size, blob_requests())
        except grpc.aio.AioRpcError as exc:
            if check.error is not None:
                raise check.error from None
            raise upstream_error(BLOBSTORE, exc) from None
        if check.error is not None:  # pragma: no cover - the blobstore must have refused
            raise check.error

    async def read_version_data(self, model_id: str, version_number: int) -> AsyncIterator[bytes]:
        """The encoded RetrieveVersionDataReplyChunk messages of one
        version's data, each chunk at most the configured size."""
        if not model_id:
            raise InvalidArgument("model_id must not be empty")
        resolved = await self._metadata.resolve_version(model_id, version_number, touch=True)
        info = resolved.version_info
        trace.get_current_span().set_attributes(
            {
                "model_id": model_id,
                "version_number": info.version_number,
                "archived": info.archived,
                "data_size": info.data_size,
            }
        )
        chunks = self._blobs.get(
            resolved.blob_key,
            archived=info.archived,
            expected_size=info.data_size,
            expected_sha256=base64.b64decode(info.data_hash),
        )
        sent = 0
        try:
            async for chunk in chunks:
                sent += 1
                yield chunk
        except BlobMissing:
            if not info.archived:
                # The data is gone (eviction race, or the replica holding it
                # restarted or left): make the info go too, so both answer NOT_FOUND.
                self._spawn(self._forget_lost_version(resolved.blob_key))
            raise self._missing_data(info) from None
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(BLOBSTORE, exc) from None
        finally:
            await chunks.aclose()
        if sent == 0:
            # A zero-byte version: one empty chunk, for clients that expect a message.
            yield _EMPTY_DATA_CHUNK

    @staticmethod
    def _missing_data(info: api.ModelVersionInfo) -> RegistryError:
        what = f"version {info.version_number} of model {info.model_id!r}"
        if info.archived:
            return DataLoss(f"the archived data of {what} is missing from the archive")
        return NotFound(
            f"the data of {what} is no longer held in memory (evicted from the version cache, "
            "or the blobstore replica holding it restarted)"
        )

    async def follow_versions(self, model_id: str) -> AsyncIterator[api.ModelVersionInfo]:
        """The latest version, then every new one, for as long as the client listens.

        The internal watch is renewed (deadline, metadata restart) from the
        last version sent, so the client sees one uninterrupted stream.
        """
        if not model_id:
            raise InvalidArgument("model_id must not be empty")
        last_sent = 0
        backoff = 0.05
        renewable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
        while True:
            if self._draining:
                raise self._shutting_down()
            call = self._metadata.watch_versions(model_id, last_sent)
            self._watches.add(call)
            try:
                async for info in call:
                    if info.version_number <= last_sent:
                        continue
                    last_sent = info.version_number
                    backoff = 0.05
                    yield info
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._draining and current is not None and not current.cancelling():
                    raise self._shutting_down() from None  # we ended the watch, not the client
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in renewable:
                    raise upstream_error(METADATA, exc) from None
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # a planned renewal: resume at once
            finally:
                self._watches.discard(call)
                call.cancel()
            # The watch broke (metadata restarting, replica gone): resume
            # from the last version sent, backing off while it stays down.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def stop_following(self) -> None:
        """Ends every VersionUpdate stream with UNAVAILABLE (the frontend is
        draining): subscribers reconnect at once, to another replica, instead
        of being cut when the grace period ends."""
        self._draining = True
        for call in list(self._watches):
            call.cancel()

    @staticmethod
    def _shutting_down() -> RegistryError:
        return Unavailable("this frontend is shutting down: subscribe again to continue")

    # -- housekeeping ---------------------------------------------------

    async def _delete_blobs(self, refs: Iterable[metadata_pb2.BlobRef]) -> None:
        refs = list(refs)
        if not refs:
            return
        results = await asyncio.gather(
            *(self._blobs.delete(ref.key, archived=ref.archived) for ref in refs), return_exceptions=True
        )
        for ref, result in zip(refs, results):
            if isinstance(result, BaseException):
                # The blobstore's sweeper removes what could not be deleted now.
                log.warning("could not delete blob %s (left to the sweeper): %s", ref.key, result)

    async def _forget_lost_version(self, blob_key: str) -> None:
        try:
            if await self._metadata.forget_lost_version(blob_key):
                log.warning("forgot a transient version whose data was lost (blob %s)", blob_key)
        except RegistryError as exc:
            log.warning("could not forget the version of lost blob %s: %s", blob_key, exc)

    def _spawn(self, coroutine) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain_background(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

