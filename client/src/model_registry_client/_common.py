"""What the sync and async clients share: settings, data sources, download checks, backoff."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import os
import random
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Union

import grpc

from ._proto import pb
from .errors import DataIntegrityError
from .records import VersionInfo

DEFAULT_ADDRESS = "localhost:9000"
ADDRESS_ENV = "MODEL_REGISTRY_ADDRESS"
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"
PASSWORD_ENV = "MODEL_REGISTRY_PASSWORD"
MESSAGE_LIMIT = 32 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
PAGE_SIZE = 100

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    # While the registry is unreachable, gRPC waits longer and longer
    # between connection attempts (up to 2 minutes by default) and fails
    # every call at once in between: after a restart of the registry a
    # long-running client would keep failing for that long. Retrying the
    # connection every second at most makes it usable again within a second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# What `follow` reconnects after (besides the server ending the stream).
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` while data moves."""

PathLike = Union[str, "os.PathLike[str]"]
SyncData = Union[bytes, bytearray, memoryview, PathLike, IO[bytes], Iterable[bytes]]
"""What `push` accepts: bytes, a file path, a binary stream, or an iterable of byte chunks."""


def resolve_address(address: str | None) -> str:
    """The explicit address, else $MODEL_REGISTRY_ADDRESS, else localhost:9000."""
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def call_metadata(
    token: str | None, user: str | None = None, password: str | None = None
) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: ``authorization: Basic
    base64(user:password)`` when a user is given (the password explicit,
    else $MODEL_REGISTRY_PASSWORD), else ``authorization: Bearer <token>``
    (explicit, else $MODEL_REGISTRY_TOKEN), else nothing."""
    if user:
        password = password if password is not None else os.environ.get(PASSWORD_ENV)
        if password is None:
            raise ValueError(f"a user ({user!r}) needs a password: pass password= or set ${PASSWORD_ENV}")
        pair = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
        return (("authorization", f"Basic {pair}"),)
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    return (("authorization", f"Bearer {token}"),) if token else ()


def encode_hash(digest: bytes) -> str:
    """`data_hash` as the registry writes it: base64 of the raw SHA-256."""
    return base64.b64encode(digest).decode("ascii")


def check_chunk_size(chunk_size: int) -> int:
    if not 0 < chunk_size <= MESSAGE_LIMIT - 1024:
        raise ValueError(f"chunk_size must be between 1 and {MESSAGE_LIMIT - 1024} bytes, not {chunk_size}")
    return chunk_size


def header(model_id: str, upload: Upload, archived: bool, user_data: dict[str, str] | None) -> Any:
    return pb.CreateVersionRequestChunk(
        header=pb.CreateVersionRequestChunk.Header(
            version_info=pb.ModelVersionInfo(
                model_id=model_id,
                archived=archived,
                data_size=upload.size,
                data_hash=upload.data_hash,
                user_data=user_data or {},
            )
        )
    )


def body(chunk: bytes) -> Any:
    return pb.CreateVersionRequestChunk(body=pb.CreateVersionRequestChunk.Body(data_chunk=chunk))


# -- push: data with its size and hash known before the first byte is sent ---


class Upload:
    """The data of one push. `size` and `data_hash` are known up front (the
    header carries both, so the registry refuses the version unless every
    byte arrived intact); `chunks()` reads the data again, hashes it as it is
    sent, and raises `DataIntegrityError` if it is not what was announced
    (a file changed mid-push)."""

    def __init__(self, stream: Any, start: int, size: int, data_hash: str, chunk_size: int, owned: bool) -> None:
        self._stream, self._start, self._chunk_size, self._owned = stream, start, chunk_size, owned
        self.size = size
        self.data_hash = data_hash

    def chunks(self) -> Iterator[bytes]:
        self._stream.seek(self._start)
        digest, sent = hashlib.sha256(), 0
        while sent < self.size:
            chunk = self._stream.read(min(self._chunk_size, self.size - sent))
            if not chunk:
                break
            digest.update(chunk)
            sent += len(chunk)
            yield chunk
        if sent != self.size or encode_hash(digest.digest()) != self.data_hash:
            raise DataIntegrityError(f"the data changed while it was being pushed ({sent} of {self.size} bytes read)")

    def close(self) -> None:
        if self._owned:
            self._stream.close()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MemoryReader:
    """Reads chunks of in-memory data without copying all of it (as BytesIO would)."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def seek(self, pos: int) -> int:
        self._pos = pos
        return pos

    def read(self, size: int) -> bytes:
        chunk = bytes(self._view[self._pos : self._pos + size])
        self._pos += len(chunk)
        return chunk


def _hash_stream(stream: IO[bytes], size: int, chunk_size: int) -> str:
    digest, left = hashlib.sha256(), size
    while left > 0:
        chunk = stream.read(min(chunk_size, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return encode_hash(digest.digest())


def _seekable(stream: Any) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class Spool:
    """A temporary file that hashes and counts what is written to it: the
    size of a stream of unknown length is only known once it has been read."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="model-registry-push-")
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    def upload(self, chunk_size: int) -> Upload:
        self.file.flush()
        return Upload(self.file, 0, self.size, encode_hash(self._digest.digest()), chunk_size, owned=True)


def prepare_upload(data: SyncData, chunk_size: int) -> Upload:
    """An `Upload` for any accepted data. Never loads a file whole: paths and
    seekable streams are hashed in one streaming pass and sent in a second;
    other streams and iterables are spooled to a temporary file first."""
    check_chunk_size(chunk_size)
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        digest = encode_hash(hashlib.sha256(view).digest())
        return Upload(_MemoryReader(view), 0, view.nbytes, digest, chunk_size, owned=False)
    if isinstance(data, (str, os.PathLike)):
        stream: IO[bytes] = open(data, "rb")  # noqa: SIM115 - owned by the Upload
        try:
            size = os.fstat(stream.fileno()).st_size
            return Upload(stream, 0, size, _hash_stream(stream, size, chunk_size), chunk_size, owned=True)
        except BaseException:
            stream.close()
            raise
    if hasattr(data, "read"):
        stream = data  # type: ignore[assignment]
        if _seekable(stream):
            start = stream.tell()
            size = stream.seek(0, io.SEEK_END) - start
            stream.seek(start)
            return Upload(stream, start, size, _hash_stream(stream, size, chunk_size), chunk_size, owned=False)
        spool = Spool()
        try:
            while chunk := stream.read(chunk_size):
                spool.write(chunk)
            return spool.upload(chunk_size)
        except BaseException:
            spool.file.close()
            raise
    if isinstance(data, Iterable):
        spool = Spool()
        try:
            for chunk in data:
                spool.write(bytes(chunk))
            return spool.upload(chunk_size)
        except BaseException:
            spool.file.close()
            raise
    raise TypeError(f"cannot push {type(data).__name__}: expected bytes, a path, a binary stream or an iterable of bytes")


# -- pull: checked against the version's size and hash ------------------------


class Download:
    """Receives a version's data into memory or into a temporary file beside
    `dest`, checks size and SHA-256 against its info, and only then returns
    the bytes or renames the file into place."""

    def __init__(self, info: VersionInfo, dest: PathLike | None) -> None:
        self.info = info
        self.received = 0
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._dest = Path(dest) if dest is not None else None
        self._tmp: Path | None = None
        self._file: IO[bytes] | None = None
        if self._dest is not None:
            if self._dest.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self._dest))
            self._tmp = self._dest.with_name(f".{self._dest.name}.{secrets.token_hex(4)}.part")
            # os.open with 0o666 so the final file gets the usual umask-derived mode.
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.info.data_size:
            raise DataIntegrityError(
                f"received more than the {self.info.data_size} bytes of version "
                f"{self.info.version_number} of model {self.info.model_id!r}"
            )
        self._digest.update(chunk)
        if self._file is not None:
            self._file.write(chunk)
        else:
            self._buffer += chunk

    def finish(self) -> bytes | None:
        """Checks the totals; returns the data (in memory) or moves the file into place (None)."""
        what = f"version {self.info.version_number} of model {self.info.model_id!r}"
        if self.received != self.info.data_size:
            raise DataIntegrityError(f"received {self.received} bytes of {what}, expected {self.info.data_size}")
        actual = encode_hash(self._digest.digest())
        if self.info.data_hash and actual != self.info.data_hash:
            raise DataIntegrityError(f"the SHA-256 of {what} is {actual}, expected {self.info.data_hash}")
        if self._file is None:
            return bytes(self._buffer)
        assert self._tmp is not None and self._dest is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._dest)
        self._tmp = None
        return None

    def abort(self) -> None:
        """Removes the temporary file, if any (safe to call after `finish`)."""
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


# -- follow ------------------------------------------------------------------


class Backoff:
    """Exponential backoff with jitter: initial, ×2 per failure, capped at maximum."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt (and doubles the one after)."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._next = self.initial


class VersionFilter:
    """Lets through only versions newer than the last one let through: a
    resumed subscription repeats the latest version, never goes backwards."""

    def __init__(self) -> None:
        self.last = 0

    def accept(self, message: Any) -> VersionInfo | None:
        number = message.version_number
        if number <= self.last:
            return None
        self.last = number
        return VersionInfo.from_proto(message)
