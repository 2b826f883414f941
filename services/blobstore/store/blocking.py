"""What the tiers backed by blocking I/O (files, S3 through boto3) share: a
thread pool, and a reader that verifies a blob's SHA-256 while streaming it.

Blocking calls run on the tier's own pool (not asyncio's default executor):
its size bounds the tier's concurrent I/O, and a writer or reader can wait,
from a worker thread, for the operations it submitted earlier (the pool
starts tasks in submission order) before releasing what they use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from services.blobstore.store.base import BlobReader, BlobTier, sha256_mismatch
from services.common.errors import DataLoss

T = TypeVar("T")

EMPTY_SHA256 = hashlib.sha256(b"").digest()


class Source(Protocol):
    """Where a stored blob's bytes are read from: an open file, a response body."""

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


class ThreadedTier(BlobTier):
    """A tier whose storage calls block, run on a pool of `io_threads` threads."""

    def __init__(self, *, io_threads: int, thread_name_prefix: str) -> None:
        super().__init__()
        self.io_threads = io_threads
        self._executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix=thread_name_prefix)

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        # In the caller's context (as asyncio.to_thread does): the current
        # span stays the parent of anything an instrumented library records.
        return self._executor.submit(contextvars.copy_context().run, fn, *args)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    async def _clean_up_after(
        self, in_flight: Iterable[concurrent.futures.Future[Any] | None], clean_up: Callable[[], object]
    ) -> None:
        """Runs `clean_up` on the pool once the operations `in_flight` (None
        for none) have ended, never under them: they were submitted before
        it, so they are running or done by then (the pool starts tasks in
        order) and waiting for them cannot deadlock. A cancellation of the
        caller does not stop it: cleanups must happen even when the client
        has gone."""
        earlier = [future for future in in_flight if future is not None]

        def wait_then_clean_up() -> None:
            concurrent.futures.wait(earlier)
            clean_up()

        await asyncio.shield(asyncio.wrap_future(self._submit(wait_then_clean_up)))

    async def _run_owning(self, release: Callable[[T], object], fn: Callable[..., T], *args: Any) -> T:
        """Like `_run`, for a result that holds a resource (an open file, a
        response stream): if the caller is cancelled meanwhile, `release` is
        applied to the result when it arrives instead of leaking it."""
        future = self._submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:

            def release_result(done: concurrent.futures.Future[T]) -> None:
                if not done.cancelled() and done.exception() is None:
                    release(done.result())

            future.add_done_callback(release_result)
            raise

    async def _open_source(self, fn: Callable[..., tuple[Source, int]], *args: Any) -> tuple[Source, int]:
        """`fn(*args)`, which opens a blob's source and tells its size, on
        the pool; the source is closed if the caller is gone meanwhile."""
        return await self._run_owning(_close_opened, fn, *args)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)


def _close_opened(opened: tuple[Source, int]) -> None:
    opened[0].close()


def default_io_threads() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


class VerifyingReader(BlobReader):
    """Streams a stored blob of known size from a blocking source, hashing
    it when a digest is expected.

    One chunk is read ahead (a fixed bound, whatever the consumer's pace):
    the read and hash of chunk n+1 overlap the sending of chunk n, in one
    thread hop per chunk (hashlib releases the GIL on large buffers). A
    source shorter than its announced size is DataLoss at the chunk where it
    ends; a digest mismatch is DataLoss instead of the last chunk.

    `_read_source` and `_close_source` (which a subclass may override) are
    called on a worker thread, never concurrently.
    """

    # How the source is named in errors ("file", "object").
    source_noun = "source"

    def __init__(
        self, tier: ThreadedTier, key: str, source: Source, size: int, expected_sha256: bytes | None, chunk_size: int
    ) -> None:
        self.size = size
        self._tier = tier
        self._key = key
        self._source = source
        self._expected_sha256 = expected_sha256
        self._hash = hashlib.sha256() if expected_sha256 is not None else None
        self._chunk_size = chunk_size
        # The read in flight on the thread pool, if any.
        self._last_read: concurrent.futures.Future[bytes] | None = None
        self._closed = False

    def _read_source(self, size: int) -> bytes:
        """The next `size` bytes, fewer only where the source ends."""
        return self._source.read(size)

    def _close_source(self) -> None:
        self._source.close()

    def _read(self, size: int) -> bytes:
        data = self._read_source(size)
        if self._hash is not None:
            self._hash.update(data)
        return data

    def _read_next(self, remaining: int) -> concurrent.futures.Future[bytes] | None:
        if remaining == 0:
            return None
        self._last_read = self._tier._submit(self._read, min(self._chunk_size, remaining))
        return self._last_read

    def _check_digest(self) -> None:
        if self._hash is None:
            return
        if self._hash.digest() != self._expected_sha256:
            raise sha256_mismatch(self._key)
        self.verified = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.size == 0:
            if self._expected_sha256 not in (None, EMPTY_SHA256):
                raise sha256_mismatch(self._key)
            self.verified = self._expected_sha256 is not None
            return
        remaining = self.size
        next_read = self._read_next(remaining)
        while next_read is not None:
            wanted = min(self._chunk_size, remaining)
            data = await asyncio.wrap_future(next_read)
            if len(data) != wanted:
                raise DataLoss(
                    f"stored data of blob {self._key} is corrupt: the {self.source_noun} ended after "
                    f"{self.size - remaining + len(data)} of {self.size} bytes"
                )
            remaining -= wanted
            next_read = self._read_next(remaining)
            # The last chunk is held back until the whole blob is verified.
            if remaining == 0:
                self._check_digest()
            yield data

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A cancelled consumer may have left a read running.
        await self._tier._clean_up_after([self._last_read], self._close_source)
