"""Blobstore settings, read from the environment (see README, "Configuration")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from services.common import config as c
from services.common.limits import RequestLimits

# Twice metadata's default version-cache budget: a new transient version is
# uploaded before its commit evicts older ones, and evicted blobs are deleted
# after the commit, so the tier briefly holds more than the logical cache.
DEFAULT_MEMORY_MAX_BYTES = 2 * c.DEFAULT_VERSION_CACHE_MAX_BYTES

MEMORY_MAX_BYTES_VARIABLE = c.PREFIX + "BLOBSTORE_MEMORY_MAX_BYTES"
ACCEPT_DATABASE_ID_VARIABLE = c.PREFIX + "BLOBSTORE_ACCEPT_DATABASE_ID"
ARCHIVE_RESERVED_BYTES_VARIABLE = c.PREFIX + "ARCHIVE_RESERVED_BYTES"
LEASE_SECONDS_VARIABLE = c.PREFIX + "BLOBSTORE_LEASE_SECONDS"
# Free space archived blobs never take from a file archive's disk: the
# metadata database lives beside it by default, and a disk filled to the
# last byte by blobs would refuse model updates and transient commits too.
DEFAULT_ARCHIVE_RESERVED_BYTES = 64 * c.MIB
ARCHIVE_URL_VARIABLE = c.PREFIX + "ARCHIVE_URL"

# Loose on purpose (S3-compatible stores differ): what cannot be a bucket
# name in a URL, not every rule of AWS's naming.
_BUCKET_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")


@dataclass(frozen=True)
class S3Location:
    """Where the S3 tier keeps archived blobs: `<prefix>/<key[:2]>/<key>`
    in `bucket` (no leading `<prefix>/` when the prefix is empty)."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_archive_url(value: str) -> S3Location:
    """`s3://bucket` or `s3://bucket/prefix`; anything else is a ConfigError
    naming the variable."""
    url = urlsplit(value)
    # Never echo credentials someone put in the URL.
    shown = f"{ARCHIVE_URL_VARIABLE}={value!r}" if "@" not in url.netloc else f"{ARCHIVE_URL_VARIABLE} (hidden)"

    def unusable(reason: str) -> c.ConfigError:
        return c.ConfigError(
            f"{shown} is not usable: {reason} (expected s3://bucket or s3://bucket/prefix; "
            "leave it unset to archive in the archive directory)"
        )

    if url.scheme != "s3":
        raise unusable(f"the scheme must be s3, not {url.scheme!r}" if url.scheme else "it has no scheme")
    if "@" in url.netloc:
        raise unusable("credentials do not go in the URL: boto3 reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if url.query or url.fragment:
        raise unusable("a query or fragment has no meaning here")
    if ":" in url.netloc:
        raise unusable("the endpoint (host and port) goes in AWS_ENDPOINT_URL, not in the bucket URL")
    if not _BUCKET_PATTERN.fullmatch(url.netloc):
        raise unusable(f"{url.netloc!r} is not a bucket name")
    prefix = url.path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise unusable(f"the prefix {prefix!r} has an empty, '.' or '..' segment")
    return S3Location(url.netloc, prefix)


@dataclass(frozen=True)
class BlobstoreConfig:
    bind_host: str = "0.0.0.0"
    port: int = c.DEFAULT_BLOBSTORE_PORT
    # Archived blobs live in <archive_dir>/blobs/<key[:2]>/<key>, unless
    # an S3 location is configured (ARCHIVE_URL); S3 endpoint, credentials
    # and region come from the standard AWS_* variables, read by boto3.
    archive_dir: Path = Path("./data")
    archive_s3: S3Location | None = None
    archive_reserved_bytes: int = DEFAULT_ARCHIVE_RESERVED_BYTES
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
    # A metadata database the sweeper accepts although it is not the one it
    # last swept against, or is empty (see services.blobstore.sweeper).
    accept_database_id: str | None = None
    # How long metadata takes this replica for alive (holding its transient
    # blobs) without hearing from it: a frozen replica is not gone before.
    lease_seconds: float = 30.0
    shutdown_grace_seconds: float = 10.0
    limits: RequestLimits = field(default_factory=RequestLimits)

    @property
    def archive_location(self) -> str:
        """Where archived blobs go, for logs."""
        return str(self.archive_s3) if self.archive_s3 is not None else str(self.archive_dir)

    @property
    def max_message_bytes(self) -> int:
        return c.grpc_message_limit(self.sent_chunk_size)

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0:
            raise c.ConfigError(f"{LEASE_SECONDS_VARIABLE}={self.lease_seconds} must be above 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BlobstoreConfig:
        p = c.PREFIX
        archive_url = c.env_str(ARCHIVE_URL_VARIABLE, "", env)
        return cls(
            bind_host=c.env_str(p + "BIND_HOST", "0.0.0.0", env),
            port=c.env_int(*c.SERVICE_PORTS["blobstore"], env, minimum=0),
            archive_dir=Path(c.env_str(p + "ARCHIVE_DIR", "./data", env)).expanduser(),
            archive_s3=parse_archive_url(archive_url) if archive_url else None,
            archive_reserved_bytes=c.env_int(
                ARCHIVE_RESERVED_BYTES_VARIABLE, DEFAULT_ARCHIVE_RESERVED_BYTES, env, minimum=0
            ),
            memory_max_bytes=c.env_int(
                MEMORY_MAX_BYTES_VARIABLE, DEFAULT_MEMORY_MAX_BYTES, env, minimum=0
            ),
            sent_chunk_size=c.env_sent_chunk_size(env),
            internal_address=c.env_str(p + "INTERNAL_ADDRESS", "", env) or None,
            internal_call_timeout_seconds=c.env_float(p + "INTERNAL_CALL_TIMEOUT_SECONDS", 10.0, env),
            sweep_interval_seconds=c.env_float(p + "BLOBSTORE_SWEEP_INTERVAL_SECONDS", 300.0, env),
            orphan_grace_seconds=c.env_float(p + "BLOBSTORE_ORPHAN_GRACE_SECONDS", 600.0, env),
            accept_database_id=c.env_str(ACCEPT_DATABASE_ID_VARIABLE, "", env).strip() or None,
            lease_seconds=c.env_float(LEASE_SECONDS_VARIABLE, 30.0, env),
            shutdown_grace_seconds=c.env_float(p + "SHUTDOWN_GRACE_SECONDS", 10.0, env),
            limits=RequestLimits.from_env(env),
        )
