"""The file tier: archived blobs as files, written atomically and verified
against their SHA-256 on every read.

Layout under `<archive_dir>/blobs/`:

- `<key[:2]>/<key>`: a stored blob (the two-character directories keep any
  one directory small);
- `.tmp/<owner>.<key>.<n>`: an upload in progress by the process `owner`;
- `.tmp/<owner>.lock`: held (flock) by that process for as long as it runs;
- `.published/<key[:2]>/<key>`: the blob's publication record, an empty file
  created when the blob is linked into place (its mtime is the time the
  sweeper ages the blob from: the blob file's own mtime is when its last byte
  was written, and copies or restores change it);
- `.swept-database`: the id of the metadata database the sweeper last swept
  against (see services.blobstore.sweeper).

Several blobstore replicas may share the directory (one volume, as in
docker-compose), so "leftover temp files" are only those whose owner's lock
is free: a process that died. A restarting replica never removes the temp
files of a replica that is still uploading.

All blocking I/O runs on the tier's thread pool (see `blocking`), one hop
per chunk at most; writes are pipelined one chunk deep (chunk n is written
while chunk n+1 arrives), and reads are those of `VerifyingReader`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import fcntl
import itertools
import logging
import os
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from opentelemetry import trace

from services.blobstore.store.base import KEY_PATTERN, BlobReader, BlobWriter, Chunk, StoredBlob, not_found
from services.blobstore.store.blocking import ThreadedTier, VerifyingReader, default_io_threads
from services.common import metrics
from services.blobstore.config import ARCHIVE_RESERVED_BYTES_VARIABLE
from services.common.errors import AlreadyExists, ResourceExhausted

log = logging.getLogger("registry.blobstore")

TEMP_DIR_NAME = ".tmp"
PUBLISHED_DIR_NAME = ".published"
SWEPT_DATABASE_FILE_NAME = ".swept-database"
LOCK_SUFFIX = ".lock"
# errnos meaning "this filesystem has no hard links": fall back to rename.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


# Dirty pages of an upload are handed to the disk every this many bytes, so
# the disk writes while the network still delivers: measured, a 1 GiB
# upload's final fsync went from ~1.2 s to ~0.8 s (total -10 %).
WRITEBACK_EVERY_BYTES = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages, do not wait


def _load_sync_file_range():  # type: ignore[no-untyped-def]
    """libc's sync_file_range (Linux), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Asks the kernel to start writing a range of `fd` to disk, without
    waiting (durability still comes from the fsync at commit). A no-op
    where the system cannot."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


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


class FileTier(ThreadedTier):
    """Blobs as files under `<archive_dir>/blobs/`.

    A blob is written to a temp file, flushed and fsynced, linked into place
    (never replacing an existing file) and its directory fsynced before the
    upload is acknowledged: once `commit` returns, the blob survives a crash;
    before, it is invisible. Reads verify the size at open and the SHA-256
    while streaming, holding back the last chunk until the digest matched.
    """

    name = "archive"

    def __init__(self, archive_dir: Path | str, *, io_threads: int | None = None, reserved_bytes: int = 0) -> None:
        super().__init__(io_threads=io_threads or default_io_threads(), thread_name_prefix="blob-io")
        self.root = os.path.join(os.fspath(archive_dir), "blobs")
        self.location = self.root
        self.temp_dir = os.path.join(self.root, TEMP_DIR_NAME)
        self.published_dir = os.path.join(self.root, PUBLISHED_DIR_NAME)
        # Free space blobs leave on the disk (for the metadata database).
        self.reserved_bytes = reserved_bytes
        self._owner: str | None = None
        self._owner_lock_fd: int | None = None
        self._upload_numbers = itertools.count()

    # -- life cycle ---------------------------------------------------------

    def path_of(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key)

    def record_path_of(self, key: str) -> str:
        """Where the publication record of `key` is."""
        return os.path.join(self.published_dir, key[:2], key)

    def _write_record(self, key: str) -> None:
        """Creates (or renews) the publication record of `key`, dated now.
        Not fsynced: a record lost in a crash is written again at the next
        sweep, which then ages the blob from that sweep (younger, never older)."""
        path = self.record_path_of(key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.utime(fd)
        finally:
            os.close(fd)

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
        await super().close()

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

    async def _open_writer(self, key: str, size: int) -> BlobWriter:
        if self._owner is None:
            raise RuntimeError("FileTier.open() was not awaited")
        temp_path = os.path.join(self.temp_dir, f"{self._owner}.{key}.{next(self._upload_numbers)}")
        final_path = self.path_of(key)
        file = await self._run(self._create_temp_file, key, size, final_path, temp_path)
        return FileWriter(self, key, size, final_path, temp_path, file)

    def _create_temp_file(self, key: str, size: int, final_path: str, temp_path: str) -> BinaryIO:
        if os.path.exists(final_path):
            raise AlreadyExists(f"blob {key} already exists")
        self.check_room(key, size)
        return open(temp_path, "xb")  # noqa: SIM115 - closed by the writer

    def check_room(self, key: str, size: int) -> None:
        """Raises ResourceExhausted unless `size` more bytes fit on the
        archive's disk without taking its reserve (checked at the start of
        an upload, for its whole size, and before each chunk is written:
        concurrent uploads, or anything else on the disk, may have taken the
        room meanwhile). Space freed later counts at once: no restart."""
        stats = os.statvfs(self.temp_dir)
        available = stats.f_bavail * stats.f_frsize - self.reserved_bytes
        if size > available:
            raise ResourceExhausted(
                f"the archive {self.root} has {max(available, 0)} bytes free for blobs, not enough for blob {key} "
                f"({size} more bytes; {self.reserved_bytes} bytes are kept free for the metadata database, "
                f"{ARCHIVE_RESERVED_BYTES_VARIABLE}): free space in the archive, or store the version as transient"
            )

    async def _open_reader(self, key: str, *, expected_sha256: bytes | None, chunk_size: int) -> BlobReader:
        try:
            file, size = await self._open_source(self._open_for_reading, self.path_of(key))
        except FileNotFoundError:
            raise not_found(key) from None
        return FileReader(self, key, file, size, expected_sha256, chunk_size)

    @staticmethod
    def _open_for_reading(path: str) -> tuple[BinaryIO, int]:
        file = open(path, "rb")  # noqa: SIM115 - closed by the reader
        # The size of what is open: a delete or rename afterwards changes nothing.
        return file, os.fstat(file.fileno()).st_size

    async def _delete(self, key: str) -> bool:
        return await self._run(self._delete_sync, key)

    def _delete_sync(self, key: str) -> bool:
        # Not fsynced: a delete undone by a crash leaves an orphan for the
        # sweeper. The record goes after the blob: a blob never loses its
        # record while it exists (a crash in between leaves a stray record,
        # which nothing reads).
        deleted = _unlink_quietly(self.path_of(key))
        _unlink_quietly(self.record_path_of(key))
        return deleted

    async def record_published(self, keys: list[str]) -> None:
        await self._run(self._record_published_sync, keys)

    def _record_published_sync(self, keys: list[str]) -> None:
        for key in keys:
            if os.path.exists(self.path_of(key)):
                self._write_record(key)

    async def swept_database_id(self) -> str | None:
        return await self._run(self._read_swept_database_id)

    def _read_swept_database_id(self) -> str | None:
        try:
            with open(os.path.join(self.root, SWEPT_DATABASE_FILE_NAME), encoding="utf-8") as file:
                return file.read().strip() or None
        except FileNotFoundError:
            return None

    async def record_swept_database_id(self, database_id: str) -> None:
        await self._run(self._write_swept_database_id, database_id)

    def _write_swept_database_id(self, database_id: str) -> None:
        # Atomically (temp file, fsync, rename, directory fsync): a torn
        # record would read as "another database" and stop every sweep.
        temp_path = os.path.join(self.temp_dir, f"{self._owner}.{SWEPT_DATABASE_FILE_NAME}")
        with open(temp_path, "w", encoding="utf-8") as file:
            file.write(database_id + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, os.path.join(self.root, SWEPT_DATABASE_FILE_NAME))
        _fsync_directory(self.root)

    async def list_blobs(self) -> list[StoredBlob]:
        return await self._run(self._list_sync)

    def _list_sync(self) -> list[StoredBlob]:
        blobs: list[StoredBlob] = []
        with os.scandir(self.root) as prefixes:
            for prefix in prefixes:
                # Keys never start with "." (KEY_PATTERN): ".tmp", ".published"... are ours.
                if prefix.name.startswith(".") or not prefix.is_dir(follow_symlinks=False):
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
                            blobs.append(StoredBlob(entry.name, stat.st_size, self._published_at(entry.name)))
                except FileNotFoundError:
                    continue
        return blobs


    def _published_at(self, key: str) -> float | None:
        try:
            return os.stat(self.record_path_of(key)).st_mtime
        except FileNotFoundError:
            return None


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
        self._written = 0  # bytes in the file (touched by the write thread only)
        self._written_back = 0  # ... of which handed to the disk already

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

    async def _write(self, chunk: Chunk) -> None:
        if not chunk:
            return
        # Pipelined: wait for the previous chunk, then hand this one to a
        # thread and return, so the next chunk is received during the write.
        await self._wait_last_write()
        self._last_write = self._tier._submit(self._write_and_write_back, chunk)

    def _write_and_write_back(self, chunk: Chunk) -> int:
        self._tier.check_room(self.key, len(chunk))
        written = self._file.write(chunk)
        self._written += written
        if self._written - self._written_back >= WRITEBACK_EVERY_BYTES:
            self._file.flush()
            start_writeback(self._file.fileno(), self._written_back, self._written - self._written_back)
            self._written_back = self._written
        return written

    async def _commit(self) -> None:
        await self._wait_last_write()
        started = time.perf_counter()
        try:
            await self._tier._run(self._publish)
        except OSError as exc:
            raise _storage_error(self.key, exc) from exc
        seconds = time.perf_counter() - started
        trace.get_current_span().set_attribute("fsync_ms", seconds * 1000)
        metrics.blobstore().fsync_seconds.observe(seconds)

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
        try:
            self._tier._write_record(self.key)
        except OSError as exc:
            # The blob is durable and acknowledged either way: without a
            # record it ages from the next sweep (which writes one).
            log.warning("could not record the publication of blob %s (the sweeper will): %s", self.key, exc)

    async def _abort(self) -> None:
        # Never close the file under a write.
        await self._tier._clean_up_after([self._last_write], self._discard)

    def _discard(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a failed flush of bytes we are throwing away
        _unlink_quietly(self._temp_path)
        if self._published:
            # The commit failed after the link (directory fsync): the caller
            # was told it failed, so the blob must not stay.
            _unlink_quietly(self._final_path)
            _unlink_quietly(self._tier.record_path_of(self.key))


class FileReader(VerifyingReader):
    """Streams an open blob file. The open file handle keeps the data
    readable even if the blob is deleted meanwhile."""

    source_noun = "file"
