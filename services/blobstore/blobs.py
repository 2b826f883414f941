"""The blobstore's operations in terms of its tiers: the PutBlob protocol
(header, chunks, finish), reads and deletes, and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

from registry import blobstore_pb2

from services.blobstore.store.base import BlobTier
from services.common.errors import Aborted, InvalidArgument, Unavailable

_SHA256_BYTES = 32
# Room left in a gRPC message for the framing around a data chunk.
_MESSAGE_OVERHEAD = 1024


class BlobService:
    """Puts, gets and deletes blobs in the memory tier (`archived` false) or
    the file tier (`archived` true).

    Calls wait until `open` has prepared both tiers (the health status says
    SERVING only from then on, so normally none arrives earlier).
    """

    def __init__(
        self, memory: BlobTier, archive: BlobTier, *, default_chunk_size: int, max_message_bytes: int
    ) -> None:
        self.memory = memory
        self.archive = archive
        self.default_chunk_size = default_chunk_size
        # A larger chunk could not be sent: the server's send limit would fail the stream.
        self.max_chunk_size = max_message_bytes - _MESSAGE_OVERHEAD
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def tiers(self) -> tuple[BlobTier, ...]:
        return (self.memory, self.archive)

    def tier(self, archived: bool) -> BlobTier:
        return self.archive if archived else self.memory

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

    async def put(self, requests: AsyncIterable[blobstore_pb2.PutBlobRequest]) -> int:
        """Stores the blob a PutBlob stream carries; returns its size once it
        is durable (file tier) or complete (memory tier). Any other ending
        (error, missing `finish`, cancellation) leaves nothing stored."""
        await self._wait_ready()
        stream = aiter(requests)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise InvalidArgument("PutBlob received no message: the first message must be a header") from None
        if first.WhichOneof("msg") != "header":
            raise InvalidArgument("the first message of PutBlob must be a header")
        header = first.header
        writer = await self.tier(header.archived).open_writer(header.key, header.size)
        try:
            async for request in stream:
                kind = request.WhichOneof("msg")
                if kind == "data_chunk":
                    await writer.write(request.data_chunk)
                elif kind == "finish":
                    await writer.commit()
                    return header.size
                elif kind == "header":
                    raise InvalidArgument(f"PutBlob of blob {header.key}: only the first message may be a header")
                else:
                    raise InvalidArgument(f"PutBlob of blob {header.key}: a message carries neither data nor finish")
            raise Aborted(f"upload of blob {header.key} ended before finish: nothing was stored")
        finally:
            # No-op after a successful commit; otherwise releases the
            # reservation / removes the temp file, even on cancellation.
            await writer.abort()

    async def get(self, request: blobstore_pb2.GetBlobRequest) -> AsyncIterator[bytes]:
        """The chunks of a blob (none for a zero-byte blob). Size problems
        raise before the first chunk, a digest mismatch instead of the last."""
        await self._wait_ready()
        expected_sha256 = request.expected_sha256 or None
        if expected_sha256 is not None and len(expected_sha256) != _SHA256_BYTES:
            raise InvalidArgument(
                f"expected_sha256 must be a raw SHA-256 digest of {_SHA256_BYTES} bytes, not {len(expected_sha256)}"
            )
        # 0 is "not set", except that a blob recorded with a digest has a
        # recorded size too, and it may well be 0.
        expected_size = request.expected_size if request.expected_size or expected_sha256 else None
        reader = await self.tier(request.archived).open_reader(
            request.key,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            chunk_size=min(request.chunk_size or self.default_chunk_size, self.max_chunk_size),
        )
        async with reader:
            async for chunk in reader:
                yield chunk

    async def delete(self, key: str, *, archived: bool) -> None:
        """Deletes a blob; deleting a missing blob succeeds."""
        await self._wait_ready()
        await self.tier(archived).delete(key)
