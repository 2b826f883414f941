"""The blobstore's operations in terms of its tiers: the PutBlob protocol
(header, chunks, finish), reads and deletes, and readiness.

Traces: a "write blob" span covers the storage of a PutBlob (the tier adds
its durability step: `fsync_ms` for files, `complete_ms` for S3) and a
"read blob" span a GetBlob's read (with `verified`: whether the bytes were
checked against the recorded SHA-256 and matched). Both are made here, on
the event loop, where the current span is the request's.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterable, AsyncIterator

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from registry import blobstore_pb2

from services.blobstore.store.base import BlobReader, BlobTier, Chunk
from services.common import metrics
from services.common.blob_keys import holder_of, new_replica_id
from services.common.errors import Aborted, DataLoss, FailedPrecondition, InvalidArgument, RegistryError, Unavailable
from services.common.idle import receive_within
from services.common.limits import RequestLimits

_tracer = trace.get_tracer("registry.blobstore")

# A PutBlob message as `BlobService.put` takes it: a parsed request, or, for
# a body, just its data (the servicer extracts it from the received bytes
# without parsing them: see services.common.wire).
PutMessage = blobstore_pb2.PutBlobRequest | Chunk

_SHA256_BYTES = hashlib.sha256().digest_size
# Room left in a gRPC message for the framing around a data chunk.
_MESSAGE_OVERHEAD = 1024


class BlobService:
    """Puts, gets and deletes blobs in the memory tier (`archived` false) or
    the archive tier (`archived` true: files or S3).

    Calls wait until `open` has prepared both tiers (the health status says
    SERVING only from then on, so normally none arrives earlier).
    """

    def __init__(
        self,
        memory: BlobTier,
        archive: BlobTier,
        *,
        default_chunk_size: int,
        max_message_bytes: int,
        tracer: trace.Tracer = _tracer,
        replica_id: str | None = None,
        limits: RequestLimits = RequestLimits(),
    ) -> None:
        # A PutBlob whose sender goes quiet (a frontend frozen or gone without
        # closing) is ended after the upload idle timeout, releasing its temp
        # file or memory.
        self._limits = limits
        # Transient keys name the replica that holds them (see
        # services/common/blob_keys.py); new at every start, as the memory is.
        self.replica_id = replica_id or new_replica_id()
        self.draining = False
        self.memory = memory
        self.archive = archive
        self.default_chunk_size = default_chunk_size
        # A larger chunk could not be sent: the server's send limit would fail the stream.
        self.max_chunk_size = max_message_bytes - _MESSAGE_OVERHEAD
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tracer = tracer

    @property
    def tiers(self) -> tuple[BlobTier, ...]:
        return (self.memory, self.archive)

    def tier(self, archived: bool) -> BlobTier:
        return self.archive if archived else self.memory

    @property
    def serving(self) -> bool:
        """Storage prepared and not shutting down: new calls are welcome."""
        return self._ready.done() and not self._ready.cancelled() and self._ready.exception() is None and not self.draining

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        """Prepares every tier; calls proceed once it has succeeded."""
        try:
            for tier in self.tiers:
                await tier.open()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(
                    Unavailable(f"the blobstore could not prepare its storage: {type(exc).__name__}: {exc}")
                )
                self._ready.exception()  # retrieved: calls report it, no "never retrieved" warning
            raise
        self._ready.set_result(None)

    async def close(self) -> None:
        for tier in self.tiers:
            await tier.close()

    async def _wait_ready(self) -> None:
        if not self._ready.done():
            await asyncio.shield(self._ready)
        else:
            self._ready.result()

    # -- operations ---------------------------------------------------------

    async def put(self, requests: AsyncIterable[PutMessage]) -> int:
        """Stores the blob a PutBlob stream carries; returns its size once it
        is durable (file tier) or complete (memory tier). Any other ending
        (error, missing `finish`, cancellation) leaves nothing stored."""
        await self._wait_ready()
        stream = aiter(receive_within(requests, self._limits.upload_idle_timeout_seconds, self._limits.upload_idle))
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise InvalidArgument("PutBlob received no message: the first message must be a header") from None
        if not isinstance(first, blobstore_pb2.PutBlobRequest) or first.WhichOneof("msg") != "header":
            raise InvalidArgument("the first message of PutBlob must be a header")
        header = first.header
        if not header.archived:
            holder = holder_of(header.key)
            if holder is not None and holder != self.replica_id:
                # Stored here, it could never be found: readers go where the key points.
                raise FailedPrecondition(
                    f"transient blob key {header.key} names replica {holder}, but this is replica {self.replica_id}"
                )
        with self._tracer.start_as_current_span(
            "write blob",
            attributes={"blob_key": header.key, "archived": header.archived, "size": header.size},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await self._store(header, stream, span)
            except Exception as exc:
                _mark_failed(span, exc)
                raise

    async def _store(
        self,
        header: blobstore_pb2.PutBlobRequest.Header,
        stream: AsyncIterator[PutMessage],
        span: Span,
    ) -> int:
        chunks = 0
        writer = await self.tier(header.archived).open_writer(header.key, header.size)
        written = metrics.blobstore().written_bytes.labels(metrics.tier_label(header.archived))
        try:
            async for request in stream:
                if not isinstance(request, blobstore_pb2.PutBlobRequest):
                    # The data of a body, already extracted (the hot path).
                    chunks += 1
                    await writer.write(request)
                    written.inc(len(request))
                    continue
                kind = request.WhichOneof("msg")
                if kind == "body":
                    chunks += 1
                    await writer.write(request.body.data_chunk)
                    written.inc(len(request.body.data_chunk))
                elif kind == "finish":
                    started = time.perf_counter()
                    await writer.commit()
                    span.set_attribute("commit_ms", (time.perf_counter() - started) * 1000)
                    return header.size
                elif kind == "header":
                    raise InvalidArgument(f"PutBlob of blob {header.key}: only the first message may be a header")
                else:
                    raise InvalidArgument(f"PutBlob of blob {header.key}: a message carries neither data nor finish")
            raise Aborted(f"upload of blob {header.key} ended before finish: nothing was stored")
        finally:
            span.set_attributes({"bytes": writer.received, "chunks": chunks})
            # No-op after a successful commit; otherwise releases the
            # reservation / removes the temp file / aborts the multipart
            # upload, even on cancellation: shielded, so that a second
            # cancellation of the call (gRPC ends a cancelled call's task)
            # cannot interrupt the clean-up half way.
            await asyncio.shield(writer.abort())

    async def get(self, request: blobstore_pb2.GetBlobRequest) -> AsyncIterator[Chunk]:
        """The chunks of a blob (none for a zero-byte blob), as bytes or
        read-only views of bytes (see `Chunk`). Size problems raise before
        the first chunk, a digest mismatch instead of the last."""
        await self._wait_ready()
        expected_sha256 = request.expected_sha256 or None
        if expected_sha256 is not None and len(expected_sha256) != _SHA256_BYTES:
            raise InvalidArgument(
                f"expected_sha256 must be a raw SHA-256 digest of {_SHA256_BYTES} bytes, not {len(expected_sha256)}"
            )
        # 0 is "not set", except that a blob recorded with a digest has a
        # recorded size too, and it may well be 0.
        expected_size = request.expected_size if request.expected_size or expected_sha256 else None
        # Not made current: this generator yields to its consumer, which
        # must not run inside the span (nor detach it from another context).
        span = self._tracer.start_span(
            "read blob", attributes={"blob_key": request.key, "archived": request.archived}
        )
        reader: BlobReader | None = None
        sent = chunks = 0
        read = metrics.blobstore().read_bytes.labels(metrics.tier_label(request.archived))
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                reader = await self.tier(request.archived).open_reader(
                    request.key,
                    expected_size=expected_size,
                    expected_sha256=expected_sha256,
                    chunk_size=min(request.chunk_size or self.default_chunk_size, self.max_chunk_size),
                )
            span.set_attribute("size", reader.size)
            async with reader:
                async for chunk in reader:
                    sent += len(chunk)
                    chunks += 1
                    read.inc(len(chunk))
                    yield chunk
        except Exception as exc:
            if isinstance(exc, DataLoss):
                metrics.blobstore().data_loss.labels("corrupt").inc()
            _mark_failed(span, exc)
            raise
        finally:
            span.set_attributes(
                {"bytes": sent, "chunks": chunks, "verified": reader is not None and reader.verified}
            )
            span.end()

    async def delete(self, key: str, *, archived: bool) -> None:
        """Deletes a blob; deleting a missing blob succeeds."""
        await self._wait_ready()
        await self.tier(archived).delete(key)


def _mark_failed(span: Span, exc: Exception) -> None:
    """Error status on `span`, worded as the client will see it (DATA_LOSS...)."""
    if isinstance(exc, RegistryError):
        span.set_status(Status(StatusCode.ERROR, f"{exc.code.name}: {exc.message}"))
    else:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
