"""What an upload must match: the size and SHA-256 its header announced.

`data_hash`, in the public API, is the base64 encoding of the SHA-256 of a
version's data; the two functions here are the only translation between
that text and the raw digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from services.common.errors import InvalidArgument, RegistryError, quoted

_SHA256_BYTES = hashlib.sha256().digest_size


def decode_data_hash(data_hash: str) -> bytes:
    """The raw digest of a `data_hash` (base64 of a SHA-256); InvalidArgument
    when it is anything else."""
    try:
        digest = base64.b64decode(data_hash, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != _SHA256_BYTES:
        raise InvalidArgument(
            f"data_hash {quoted(data_hash, 64)} is not the base64 encoding of a SHA-256 digest (32 bytes)"
        )
    return digest


def encode_data_hash(digest: bytes) -> str:
    """The `data_hash` of a raw SHA-256 digest."""
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
