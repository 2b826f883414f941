"""The memory tier: transient blobs kept as the chunks they arrived in
(views into the received messages: never copied), within a hard byte budget
reserved as the bytes arrive."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from services.blobstore.config import MEMORY_MAX_BYTES_VARIABLE
from services.blobstore.store.base import BlobReader, BlobTier, BlobWriter, Chunk, StoredBlob, not_found
from services.common.errors import AlreadyExists, ResourceExhausted


@dataclass(frozen=True)
class _MemoryBlob:
    # Never mutated once stored (nor are the bytes under the chunks): readers
    # iterate it without a copy or a lock.
    chunks: tuple[Chunk, ...]
    size: int
    published_at: float


class MemoryTier(BlobTier):
    """Blobs in this process's memory, bounded by `max_bytes`.

    The budget counts the bytes of stored blobs plus the bytes received so
    far by every upload in progress: an upload that stalls holds what it
    sent, not what it announced, so a few stalled uploads cannot starve the
    tier. An upload whose announced size does not fit what is free when it
    starts (or could never fit) is refused before it accepts a byte; one
    that fitted then but meets a tier filled by others meanwhile is refused
    at the chunk that would overflow it (RESOURCE_EXHAUSTED either way, and
    nothing is kept). Deleting a blob returns its bytes to the budget at
    once; a reader still streaming it keeps the chunks alive until it is
    done (bounded by the readers).

    Every method runs on the event loop thread, without awaiting in between
    its checks and updates, so no lock is needed.
    """

    name = "memory"
    durable = False

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self._clock = clock
        self._blobs: dict[str, _MemoryBlob] = {}
        self._stored_bytes = 0
        self._reserved_bytes = 0

    @property
    def held_bytes(self) -> int:
        """Bytes counted against the budget: stored blobs plus reservations."""
        return self._stored_bytes + self._reserved_bytes

    async def _open_writer(self, key: str, size: int) -> BlobWriter:
        if key in self._blobs:
            raise AlreadyExists(f"blob {key} already exists")
        if self.held_bytes + size > self.max_bytes:
            raise self._full(size)
        return MemoryWriter(self, key, size)

    def _full(self, size: int) -> ResourceExhausted:
        return ResourceExhausted(
            f"the blobstore's memory tier cannot take a blob of {size} bytes: it holds "
            f"{self.held_bytes} bytes and {size} more would exceed its budget of {self.max_bytes} bytes "
            f"({MEMORY_MAX_BYTES_VARIABLE}); archive the version or raise the budget"
        )

    def _reserve(self, size: int, blob_size: int) -> None:
        """Counts `size` more received bytes of an upload of `blob_size`."""
        if self.held_bytes + size > self.max_bytes:
            raise self._full(blob_size)
        self._reserved_bytes += size

    def _release_reservation(self, size: int) -> None:
        self._reserved_bytes -= size

    def _store(self, key: str, chunks: list[Chunk], size: int) -> None:
        if key in self._blobs:
            raise AlreadyExists(f"blob {key} already exists")
        self._blobs[key] = _MemoryBlob(tuple(chunks), size, self._clock())
        # The reservation becomes the stored blob's share of the budget.
        self._reserved_bytes -= size
        self._stored_bytes += size

    async def _open_reader(self, key: str, *, expected_sha256: bytes | None, chunk_size: int) -> BlobReader:
        blob = self._blobs.get(key)
        if blob is None:
            raise not_found(key)
        # No re-hash: memory does not rot, and the frontend hashed every byte
        # on the way in.
        return MemoryReader(blob.chunks, blob.size, chunk_size)

    async def _delete(self, key: str) -> bool:
        blob = self._blobs.pop(key, None)
        if blob is None:
            return False
        self._stored_bytes -= blob.size
        return True

    async def list_blobs(self) -> list[StoredBlob]:
        return [StoredBlob(key, blob.size, blob.published_at) for key, blob in self._blobs.items()]


class MemoryWriter(BlobWriter):
    """An upload into the memory tier: the received chunks, kept as they are
    (no concatenation: that would need the blob twice in memory). A chunk
    that is a view keeps the message it came in alive: a few bytes of
    framing more than the data, never counted against the budget."""

    def __init__(self, tier: MemoryTier, key: str, size: int) -> None:
        super().__init__(key, size)
        self._tier = tier
        self._chunks: list[Chunk] = []
        self._reserved = 0  # bytes received, counted against the tier's budget

    async def _write(self, chunk: Chunk) -> None:
        if chunk:
            self._tier._reserve(len(chunk), self.size)
            self._reserved += len(chunk)
            self._chunks.append(chunk)

    async def _commit(self) -> None:
        self._tier._store(self.key, self._chunks, self.size)
        self._chunks = []
        self._reserved = 0

    async def _abort(self) -> None:
        self._chunks = []
        self._tier._release_reservation(self._reserved)
        self._reserved = 0


class MemoryReader(BlobReader):
    """Streams a memory blob from its own reference to the chunks, so a
    delete meanwhile does not disturb it."""

    def __init__(self, chunks: tuple[Chunk, ...], size: int, chunk_size: int) -> None:
        self.size = size
        self._chunks = chunks
        self._chunk_size = chunk_size

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        limit = self._chunk_size
        for chunk in self._chunks:
            if len(chunk) <= limit:
                yield chunk
                continue
            # Stored chunks are the uploader's; the reader's limit may be
            # smaller. Slices of a view share its memory: no copy.
            view = memoryview(chunk)
            for offset in range(0, len(view), limit):
                yield view[offset : offset + limit]

    async def close(self) -> None:
        self._chunks = ()
