"""Blobstore settings, read from the environment (see README, "Configuration")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import config as c

# Twice metadata's default version-cache budget: a new transient version is
# uploaded before its commit evicts older ones, and evicted blobs are deleted
# after the commit, so the tier briefly holds more than the logical cache.
DEFAULT_MEMORY_MAX_BYTES = 2 * c.DEFAULT_VERSION_CACHE_MAX_BYTES

MEMORY_MAX_BYTES_VARIABLE = c.PREFIX + "BLOBSTORE_MEMORY_MAX_BYTES"


@dataclass(frozen=True)
class BlobstoreConfig:
    bind_host: str = "0.0.0.0"
    port: int = c.DEFAULT_BLOBSTORE_PORT
    # Archived blobs live in <archive_dir>/blobs/<key[:2]>/<key>.
    archive_dir: Path = Path("./data")
    memory_max_bytes: int = DEFAULT_MEMORY_MAX_BYTES
    # GetBlob chunk size when the request leaves it at 0.
    sent_chunk_size: int = c.DEFAULT_SENT_CHUNK_SIZE
    # Where registry.MetadataService is reached (Envoy's internal listener);
    # without it orphaned blobs are not swept.
    internal_address: str | None = None
    internal_call_timeout_seconds: float = 10.0
    sweep_interval_seconds: float = 300.0
    # Blobs younger than this are never swept: their upload may still be
    # on its way to the commit.
    orphan_grace_seconds: float = 600.0
    shutdown_grace_seconds: float = 10.0

    @property
    def max_message_bytes(self) -> int:
        return c.grpc_message_limit(self.sent_chunk_size)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BlobstoreConfig:
        p = c.PREFIX
        return cls(
            bind_host=c.env_str(p + "BIND_HOST", "0.0.0.0", env),
            port=c.env_int(p + "BLOBSTORE_PORT", c.DEFAULT_BLOBSTORE_PORT, env, minimum=0),
            archive_dir=Path(c.env_str(p + "ARCHIVE_DIR", "./data", env)).expanduser(),
            memory_max_bytes=c.env_int(
                MEMORY_MAX_BYTES_VARIABLE, DEFAULT_MEMORY_MAX_BYTES, env, minimum=0
            ),
            sent_chunk_size=c.env_int(
                p + "SENT_MODEL_VERSION_DATA_CHUNK_SIZE", c.DEFAULT_SENT_CHUNK_SIZE, env, minimum=1
            ),
            internal_address=c.env_str(p + "INTERNAL_ADDRESS", "", env) or None,
            internal_call_timeout_seconds=c.env_float(p + "INTERNAL_CALL_TIMEOUT_SECONDS", 10.0, env),
            sweep_interval_seconds=c.env_float(p + "BLOBSTORE_SWEEP_INTERVAL_SECONDS", 300.0, env),
            orphan_grace_seconds=c.env_float(p + "BLOBSTORE_ORPHAN_GRACE_SECONDS", 600.0, env),
            shutdown_grace_seconds=c.env_float(p + "SHUTDOWN_GRACE_SECONDS", 10.0, env),
        )
