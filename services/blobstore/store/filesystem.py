"""The file tier: archived blobs as files, written atomically and verified
against their SHA-256 on every read.

Layout under `<archive_dir>/blobs/`:

- `<key[:2]>/<key>`: a stored blob (the two-character directories keep any
  one directory small);
- `.tmp/<owner>.<key>.<n>`: an upload in progress by the process `owner`;
- `.tmp/<owner>.lock`: held (flock) by that process for as long as it runs.

Several blobstore replicas may share the directory (one volume, as in
docker-compose), so "leftover temp files" are only those whose owner's lock
is free: a process that died. A restarting replica never removes the temp
files of a replica that is still uploading.

All blocking I/O runs on the tier's thread pool, one hop per chunk at most;
writes are pipelined one chunk deep (chunk n is written while chunk n+1
arrives), and a read hashes its chunk in the same hop (hashlib releases the
GIL on large buffers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from services.blobstore.store.base import (
    KEY_PATTERN,
    BlobReader,
    BlobTier,
    BlobWriter,
    StoredBlob,
    check_stored_size,
    not_found,
    sha256_mismatch,
    validate_key,
)
from services.common.errors import AlreadyExists, DataLoss, ResourceExhausted

log = logging.getLogger("registry.blobstore")

T = TypeVar("T")

TEMP_DIR_NAME = ".tmp"
LOCK_SUFFIX = ".lock"
_EMPTY_SHA256 = hashlib.sha256(b"").digest()
# errnos meaning "this filesystem has no hard links": fall back to rename.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    """Whether `path` still names the file open as `fd` (not unlinked or replaced)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class FileTier(BlobTier):
    """Blobs as files under `<archive_dir>/blobs/`.

    A blob is written to a temp file, flushed and fsynced, linked into place
    (never replacing an existing file) and its directory fsynced before the
    upload is acknowledged: once `commit` returns, the blob survives a crash;
    before, it is invisible. Reads verify the size at open and the SHA-256
    while streaming, holding back the last chunk until the digest matched.
    """

    name = "archive"

    def __init__(self, archive_dir: Path | str, *, io_threads: int | None = None) -> None:
        self.root = os.path.join(os.fspath(archive_dir), "blobs")
        self.temp_dir = os.path.join(self.root, TEMP_DIR_NAME)
        self._executor = ThreadPoolExecutor(
            max_workers=io_threads or min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="blob-io"
        )
        self._owner: str | None = None
        self._owner_lock_fd: int | None = None
        self._upload_numbers = itertools.count()

    # -- thread pool ------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._executor.submit(fn, *args)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    async def _run_to_completion(self, fn: Callable[..., T], *args: Any) -> T:
        """Like `_run`, but a cancellation of the caller does not stop `fn`
        (cleanups must happen even when the client has gone)."""
        return await asyncio.shield(asyncio.wrap_future(self._submit(fn, *args)))

    # -- life cycle ---------------------------------------------------------

    def path_of(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key)

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        os.makedirs(self.temp_dir, exist_ok=True)
        self._acquire_owner_lock()
        removed = self._remove_abandoned_sync()
        if removed:
            log.info("removed %d temp files of uploads interrupted by a previous run", removed)

    def _acquire_owner_lock(self) -> None:
        for _ in range(8):
            owner = uuid.uuid4().hex
            path = os.path.join(self.temp_dir, owner + LOCK_SUFFIX)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Another process cleaning up may have taken the lock file for
                # a dead owner's and removed it before we locked it: retry.
                if _same_file(fd, path):
                    self._owner, self._owner_lock_fd = owner, fd
                    return
            except BlockingIOError:
                pass
            os.close(fd)
        raise RuntimeError(f"could not take an owner lock in {self.temp_dir}")

    async def close(self) -> None:
        await self._run(self._release_owner_lock)
        await asyncio.to_thread(self._executor.shutdown, True)

    def _release_owner_lock(self) -> None:
        if self._owner_lock_fd is None:
            return
        # Unlink first: from then on any temp file of ours counts as abandoned.
        _unlink_quietly(os.path.join(self.temp_dir, f"{self._owner}{LOCK_SUFFIX}"))
        os.close(self._owner_lock_fd)
        self._owner_lock_fd = None

    async def remove_abandoned_uploads(self) -> int:
        return await self._run(self._remove_abandoned_sync)

    def _remove_abandoned_sync(self) -> int:
        """Removes the temp files of processes that are gone.

        Correct against concurrent uploads because an owner creates its lock
        before any temp file and keeps it until it exits: a temp file listed
        here without its owner's lock in the same listing is abandoned.
        """
        names = os.listdir(self.temp_dir)
        locked_owners = {name[: -len(LOCK_SUFFIX)] for name in names if name.endswith(LOCK_SUFFIX)}
        live_owners = {self._owner}
        removed = 0
        for owner in locked_owners - live_owners:
            reaped = self._reap_owner(owner)
            if reaped is None:
                live_owners.add(owner)
            else:
                removed += reaped
        for name in names:
            if name.endswith(LOCK_SUFFIX) or name.split(".", 1)[0] in live_owners:
                continue
            # Files of owners reaped above are already gone.
            removed += _unlink_quietly(os.path.join(self.temp_dir, name))
        return removed

    def _reap_owner(self, owner: str) -> int | None:
        """Removes a dead owner's temp files and lock; None if it is alive."""
        lock_path = os.path.join(self.temp_dir, owner + LOCK_SUFFIX)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0  # exited cleanly (or reaped by someone else) meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            if not _same_file(fd, lock_path):
                return 0  # another process reaped it first
            prefix = owner + "."
            removed = sum(
                _unlink_quietly(os.path.join(self.temp_dir, name))
                for name in os.listdir(self.temp_dir)
                if name.startswith(prefix) and not name.endswith(LOCK_SUFFIX)
            )
            os.unlink(lock_path)
            return removed
        finally:
            os.close(fd)

    # -- operations ---------------------------------------------------------

    async def open_writer(self, key: str, size: int) -> BlobWriter:
        validate_key(key)
        if self._owner is None:
            raise RuntimeError("FileTier.open() was not awaited")
        temp_path = os.path.join(self.temp_dir, f"{self._owner}.{key}.{next(self._upload_numbers)}")
        final_path = self.path_of(key)
        file = await self._run(self._create_temp_file, key, size, final_path, temp_path)
        return FileWriter(self, key, size, final_path, temp_path, file)

    def _create_temp_file(self, key: str, size: int, final_path: str, temp_path: str) -> BinaryIO:
        if os.path.exists(final_path):
            raise AlreadyExists(f"blob {key} already exists")
        stats = os.statvfs(self.temp_dir)
        free = stats.f_bavail * stats.f_frsize
        if size > free:
            raise ResourceExhausted(
                f"the archive has {free} bytes free, not enough for blob {key} of {size} bytes"
            )
        return open(temp_path, "xb")  # noqa: SIM115 - closed by the writer

    async def open_reader(
        self,
        key: str,
        *,
        expected_size: int | None,
        expected_sha256: bytes | None,
        chunk_size: int,
    ) -> BlobReader:
        validate_key(key)
        try:
            file, size = await self._run(self._open_for_reading, self.path_of(key))
        except FileNotFoundError:
            raise not_found(key) from None
        try:
            check_stored_size(key, size, expected_size)
        except BaseException:
            file.close()
            raise
        return FileReader(self, key, file, size, expected_sha256, chunk_size)

    @staticmethod
    def _open_for_reading(path: str) -> tuple[BinaryIO, int]:
        file = open(path, "rb")  # noqa: SIM115 - closed by the reader
        # The size of what is open: a delete or rename afterwards changes nothing.
        return file, os.fstat(file.fileno()).st_size

    async def delete(self, key: str) -> bool:
        validate_key(key)
        # Not fsynced: a delete undone by a crash leaves an orphan for the sweeper.
        return await self._run(_unlink_quietly, self.path_of(key))

    async def list_blobs(self) -> list[StoredBlob]:
        return await self._run(self._list_sync)

    def _list_sync(self) -> list[StoredBlob]:
        blobs: list[StoredBlob] = []
        with os.scandir(self.root) as prefixes:
            for prefix in prefixes:
                if prefix.name == TEMP_DIR_NAME or not prefix.is_dir(follow_symlinks=False):
                    continue
                try:
                    with os.scandir(prefix.path) as entries:
                        for entry in entries:
                            if KEY_PATTERN.fullmatch(entry.name) is None:
                                continue
                            try:
                                stat = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue  # deleted while listing
                            blobs.append(StoredBlob(entry.name, stat.st_size, stat.st_mtime))
                except FileNotFoundError:
                    continue
        return blobs


def _storage_error(key: str, exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left in the archive for blob {key}: {exc.strerror}")
    return exc


class FileWriter(BlobWriter):
    """An upload into the file tier: a temp file published by `commit`."""

    def __init__(
        self, tier: FileTier, key: str, size: int, final_path: str, temp_path: str, file: BinaryIO
    ) -> None:
        super().__init__(key, size)
        self._tier = tier
        self._final_path = final_path
        self._temp_path = temp_path
        self._file = file
        # The write in flight on the thread pool, if any: at most one.
        self._last_write: concurrent.futures.Future[int] | None = None
        # Set once the blob is linked into place (undone by an abort).
        self._published = False

    async def _wait_last_write(self) -> None:
        previous = self._last_write
        if previous is None:
            return
        try:
            if previous.done():
                previous.result()
            else:
                await asyncio.wrap_future(previous)
        except OSError as exc:
            raise _storage_error(self.key, exc) from exc

    async def _write(self, chunk: bytes) -> None:
        if not chunk:
            return
        # Pipelined: wait for the previous chunk, then hand this one to a
        # thread and return, so the next chunk is received during the write.
        await self._wait_last_write()
        self._last_write = self._tier._submit(self._file.write, chunk)

    async def _commit(self) -> None:
        await self._wait_last_write()
        try:
            await self._tier._run(self._publish)
        except OSError as exc:
            raise _storage_error(self.key, exc) from exc

    def _publish(self) -> None:
        file = self._file
        file.flush()
        os.fsync(file.fileno())
        file.close()
        directory = os.path.dirname(self._final_path)
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
            _fsync_directory(self._tier.root)
        try:
            # A link fails if the key exists: never overwrites, atomically.
            os.link(self._temp_path, self._final_path)
        except FileExistsError:
            raise AlreadyExists(f"blob {self.key} already exists") from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            if os.path.exists(self._final_path):
                raise AlreadyExists(f"blob {self.key} already exists") from None
            os.replace(self._temp_path, self._final_path)
        self._published = True
        _unlink_quietly(self._temp_path)
        _fsync_directory(directory)

    async def _abort(self) -> None:
        await self._tier._run_to_completion(self._discard, self._last_write)

    def _discard(self, last_write: concurrent.futures.Future[int] | None) -> None:
        if last_write is not None:
            # Submitted before this cleanup, so already running or done: the
            # pool takes tasks in order. Never close the file under a write.
            concurrent.futures.wait([last_write])
        try:
            self._file.close()
        except OSError:
            pass  # a failed flush of bytes we are throwing away
        _unlink_quietly(self._temp_path)
        if self._published:
            # The commit failed after the link (directory fsync): the caller
            # was told it failed, so the blob must not stay.
            _unlink_quietly(self._final_path)


class FileReader(BlobReader):
    """Streams an open blob file, hashing it when a digest is expected.

    The open file handle keeps the data readable even if the blob is
    deleted meanwhile.
    """

    def __init__(
        self,
        tier: FileTier,
        key: str,
        file: BinaryIO,
        size: int,
        expected_sha256: bytes | None,
        chunk_size: int,
    ) -> None:
        self.size = size
        self._tier = tier
        self._key = key
        self._file = file
        self._expected_sha256 = expected_sha256
        self._hash = hashlib.sha256() if expected_sha256 is not None else None
        self._chunk_size = chunk_size
        # The read in flight on the thread pool, if any.
        self._last_read: concurrent.futures.Future[bytes] | None = None
        self._closed = False

    def _read(self, size: int) -> bytes:
        data = self._file.read(size)
        if self._hash is not None:
            self._hash.update(data)
        return data

    def _read_next(self, remaining: int) -> concurrent.futures.Future[bytes] | None:
        if remaining == 0:
            return None
        self._last_read = self._tier._submit(self._read, min(self._chunk_size, remaining))
        return self._last_read

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.size == 0 and self._expected_sha256 not in (None, _EMPTY_SHA256):
            raise sha256_mismatch(self._key)
        remaining = self.size
        next_read = self._read_next(remaining)
        while next_read is not None:
            wanted = min(self._chunk_size, remaining)
            data = await asyncio.wrap_future(next_read)
            if len(data) != wanted:
                raise DataLoss(
                    f"stored data of blob {self._key} is corrupt: the file ended after "
                    f"{self.size - remaining + len(data)} of {self.size} bytes"
                )
            remaining -= wanted
            # Read ahead by one chunk (a fixed bound, whatever the consumer's
            # pace): the disk read and hash overlap the sending of this chunk.
            next_read = self._read_next(remaining)
            # The last chunk is held back until the whole blob is verified.
            if remaining == 0 and self._hash is not None and self._hash.digest() != self._expected_sha256:
                raise sha256_mismatch(self._key)
            yield data

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._tier._run_to_completion(self._close_file, self._last_read)

    def _close_file(self, last_read: concurrent.futures.Future[bytes] | None) -> None:
        if last_read is not None:
            # A cancelled consumer may have left a read running: let it end
            # before closing (it started first, the pool runs tasks in order).
            concurrent.futures.wait([last_read])
        self._file.close()
