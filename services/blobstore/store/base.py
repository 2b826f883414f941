"""What a storage tier of the blobstore is: the contract every tier keeps.

A tier stores immutable blobs under keys. The blobstore has two, picked per
call: memory for transient blobs, and an archive for archived ones (files
or an S3 bucket, by configuration). A backend is added by implementing
`BlobTier`, `BlobWriter` and `BlobReader` as documented here; tiers doing
blocking I/O build on `blocking`.

Errors are the domain errors of `services.common.errors`, raised with a
message meant for the caller: `InvalidArgument` (bad key, size not kept),
`AlreadyExists`, `NotFound`, `DataLoss` (stored bytes differ from what was
recorded), `ResourceExhausted` (no room).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from services.common.errors import DataLoss, InvalidArgument, NotFound, quoted

# Blob data as it goes in and out of a tier: bytes, or a read-only view of
# bytes (a received message's data is a view of it, see
# services.common.wire; the memory tier re-chunks by slicing views). Either
# is immutable, so a tier may keep it and a reader may hand it out as is.
Chunk = bytes | memoryview

# Keys become file names: this alphabet rules out path traversal and hidden
# files (so `.tmp` can never be a key's directory).
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def validate_key(key: str) -> str:
    """Returns `key` if it is a valid blob key, else raises InvalidArgument."""
    if KEY_PATTERN.fullmatch(key) is None:
        raise InvalidArgument(
            f"blob key {quoted(key)} is invalid: it must be 1 to 128 characters among A-Z, a-z, 0-9, '_' and '-'"
        )
    return key


def not_found(key: str) -> NotFound:
    return NotFound(f"blob {key} not found")


def sha256_mismatch(key: str) -> DataLoss:
    return DataLoss(f"stored data of blob {key} is corrupt: sha256 mismatch")


@dataclass(frozen=True)
class StoredBlob:
    """A blob as listed by a tier (for the sweeper)."""

    key: str
    size: int
    # When the blobstore published the blob, in seconds since the epoch:
    # the tier's own record, written when the upload committed, never the
    # storage's mtime or LastModified (S3 dates a multipart upload's object
    # from its start). None: the blob has no record (stored before records
    # existed, or a crash between publishing and recording); the sweeper
    # then records one (`record_published`), so it ages from then.
    published_at: float | None


class BlobWriter(ABC):
    """One upload in progress into a tier.

    The caller calls `write` with the chunks in order, then exactly one of
    `commit` (all `size` bytes were written) or `abort`. This base class
    enforces the size announced to `BlobTier.open_writer`; tiers implement
    `_write`, `_commit` and `_abort`.

    - Nothing is visible to readers before `commit` returns; once it has
      returned, the whole blob is (durably, for a persistent tier).
    - If anything raises (including cancellation of the caller), the caller
      must still call `abort`; it is idempotent, safe after a failed `write`
      or `commit`, and leaves nothing behind (no bytes held, no temp file).
    - `write` may keep a reference to `chunk` (no copy is made): callers pass
      an immutable `Chunk`.
    """

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        self.received = 0
        # Set once `commit` succeeded or `abort` ran: later aborts do nothing.
        self._ended = False
        # The tier's set of uploads in progress (set by `BlobTier.open_writer`).
        self._in_progress: set[str] | None = None

    def _end(self) -> None:
        self._ended = True
        if self._in_progress is not None:
            self._in_progress.discard(self.key)

    async def write(self, chunk: Chunk) -> None:
        """Adds the next chunk; raises InvalidArgument at once if the blob
        would grow beyond its announced size."""
        self.received += len(chunk)
        if self.received > self.size:
            raise InvalidArgument(
                f"blob {self.key}: received more than the {self.size} bytes announced in the header"
            )
        await self._write(chunk)

    async def commit(self) -> None:
        """Makes the blob visible; raises InvalidArgument if fewer bytes than
        announced were written, AlreadyExists if the key got stored meanwhile."""
        if self.received != self.size:
            raise InvalidArgument(
                f"blob {self.key}: received {self.received} bytes but the header announced {self.size}"
            )
        await self._commit()
        self._end()

    async def abort(self) -> None:
        """Discards the upload (no-op after a successful commit or a previous abort)."""
        if self._ended:
            return
        self._end()
        await self._abort()

    @abstractmethod
    async def _write(self, chunk: Chunk) -> None: ...

    @abstractmethod
    async def _commit(self) -> None:
        """Publishes the blob. If it raises, `_abort` follows and must undo
        whatever part of the commit happened."""

    @abstractmethod
    async def _abort(self) -> None: ...


class BlobReader(ABC):
    """An opened blob: its size is known and checked, its bytes stream.

    Iterating yields the data in chunks of at most the `chunk_size` given to
    `BlobTier.open_reader`, one at a time, and no empty chunk: a zero-byte
    blob yields nothing. A reader may read one chunk ahead, never more: a
    slow consumer holds it back instead of making it buffer. A reader that verifies a
    digest raises DataLoss instead of yielding the last chunk on mismatch.
    A reader keeps streaming the blob it opened even if the blob is deleted
    meanwhile. Use it as an async context manager (or call `close`).
    """

    size: int
    # Whether the bytes were checked against `expected_sha256` and matched:
    # set once the whole blob has been read (for traces).
    verified: bool = False

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None:
        """Releases what the reader holds (file handle...); idempotent."""

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class BlobTier(ABC):
    """A place blobs are stored: memory, a directory, an object store.

    `open` is awaited once before any other call and `close` at shutdown.
    Keys are checked by the tier, since it maps them to storage names: here,
    once for every tier, as is the stored size against the recorded one. A
    tier implements `_open_writer`, `_open_reader` and `_delete`, which get
    valid keys only.
    """

    # Short name for logs ("memory", "archive").
    name: str
    # Where the blobs are, for messages to an operator.
    location: str = "memory"
    # Whether the tier holds archived blobs (else transient ones): which
    # count of versions the sweeper compares with what the tier holds.
    durable: bool = True

    def __init__(self) -> None:
        # Keys of this process's uploads from `open_writer` until `commit`
        # returned or `abort` ran: the sweeper never touches them.
        self._in_progress: set[str] = set()
        # The database last swept against, for tiers that keep no record
        # of their own (the memory tier: its blobs die with the process).
        self._swept_database_id: str | None = None

    async def open(self) -> None:
        """Prepares the tier (directories, cleanup of abandoned uploads)."""

    async def close(self) -> None:
        """Releases the tier's resources; in-flight calls have ended."""

    async def open_writer(self, key: str, size: int) -> BlobWriter:
        """Starts an upload of `size` bytes under `key`.

        Raises InvalidArgument for a bad key, AlreadyExists if `key` is
        stored (a blob is never overwritten) and ResourceExhausted if the
        tier has no room for `size` bytes; all before any byte is accepted.
        """
        writer = await self._open_writer(validate_key(key), size)
        writer._in_progress = self._in_progress
        self._in_progress.add(key)
        return writer

    def uploads_in_progress(self) -> frozenset[str]:
        """Keys this process is uploading now (not yet published, or being
        published): never swept, whatever the tier lists."""
        return frozenset(self._in_progress)

    async def open_reader(
        self,
        key: str,
        *,
        expected_size: int | None,
        expected_sha256: bytes | None,
        chunk_size: int,
    ) -> BlobReader:
        """Opens `key` for reading.

        Raises InvalidArgument for a bad key, NotFound if it is not stored
        and DataLoss if `expected_size` is given and differs from the stored
        size (before any byte is read). Tiers whose bytes can rot (files,
        objects) verify `expected_sha256` while streaming; the memory tier
        need not.
        """
        reader = await self._open_reader(validate_key(key), expected_sha256=expected_sha256, chunk_size=chunk_size)
        if expected_size is not None and reader.size != expected_size:
            await reader.close()
            raise DataLoss(
                f"stored data of blob {key} is corrupt: {reader.size} bytes stored, {expected_size} expected"
            )
        return reader

    async def delete(self, key: str) -> bool:
        """Deletes `key`; idempotent. Returns whether it was stored. Readers
        that opened it before keep streaming it."""
        return await self._delete(validate_key(key))

    @abstractmethod
    async def _open_writer(self, key: str, size: int) -> BlobWriter:
        """Refuses a stored key or a size without room, then starts the upload."""

    @abstractmethod
    async def _open_reader(self, key: str, *, expected_sha256: bytes | None, chunk_size: int) -> BlobReader:
        """A reader of the blob as stored (raising NotFound if it is not),
        its `size` being the stored size."""

    @abstractmethod
    async def _delete(self, key: str) -> bool: ...

    @abstractmethod
    async def list_blobs(self) -> list[StoredBlob]:
        """Every blob stored, with its size and storage time (for the sweeper)."""

    async def remove_abandoned_uploads(self) -> int:
        """Removes leftovers of uploads whose process died (temp files...).
        Returns how many were removed. Called at `open` and by the sweeper."""
        return 0

    async def record_published(self, keys: list[str]) -> None:
        """Records now as the publication time of stored `keys` that have no
        record (`StoredBlob.published_at` None). Tiers that always record
        one at commit (memory) need not implement it."""

    async def swept_database_id(self) -> str | None:
        """The id of the metadata database the sweeper last swept this tier
        against (None: never), kept beside the blobs by persistent tiers."""
        return self._swept_database_id

    async def record_swept_database_id(self, database_id: str) -> None:
        """Keeps `database_id` as the database this tier is swept against
        (durably, beside the blobs, for persistent tiers)."""
        self._swept_database_id = database_id
