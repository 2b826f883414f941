"""Frontend settings, read from the environment (see README, "Configuration")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common import config as c
from services.common.limits import RequestLimits

# The longest deadline a blob stream gets, whatever its size: a deadline
# derived from an absurd size (2^63 bytes) would overflow gRPC's timeout
# range and expire at once. Stalled streams are ended by the idle timeouts
# long before this.
MAX_BLOB_STREAM_TIMEOUT_SECONDS = 30 * 24 * 3600.0


@dataclass(frozen=True)
class FrontendConfig:
    bind_host: str
    port: int
    # Where metadata is reached: Envoy's internal listener.
    internal_address: str
    # The blobstore replicas, called directly; a name may resolve to several.
    blobstore_addresses: tuple[str, ...]
    sent_chunk_size: int
    version_cache_max_bytes: int
    grpc_reflection: bool
    # Deadline of unary internal calls.
    internal_call_timeout_seconds: float
    # Deadline of blob streams: this much plus the time to move the data at
    # the minimum rate below (a 1 GiB upload gets 60 s + 1024 s).
    blob_stream_base_timeout_seconds: float
    blob_stream_min_rate_bytes_per_second: int
    # Internal watch streams are renewed this often (transparently to clients).
    watch_renewal_seconds: float
    upstream_health_interval_seconds: float
    shutdown_grace_seconds: float
    limits: RequestLimits = field(default_factory=RequestLimits)

    @property
    def max_message_bytes(self) -> int:
        return c.grpc_message_limit(self.sent_chunk_size)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FrontendConfig:
        p = c.PREFIX
        return cls(
            bind_host=c.env_str(p + "BIND_HOST", "0.0.0.0", env),
            port=c.env_int(*c.SERVICE_PORTS["frontend"], env, minimum=0),
            internal_address=c.env_str(
                p + "INTERNAL_ADDRESS", f"127.0.0.1:{c.DEFAULT_ENVOY_INTERNAL_PORT}", env
            ),
            blobstore_addresses=c.env_addresses(
                p + "BLOBSTORE_ADDRESSES", (f"127.0.0.1:{c.DEFAULT_BLOBSTORE_PORT}",), env
            ),
            sent_chunk_size=c.env_int(
                p + "SENT_MODEL_VERSION_DATA_CHUNK_SIZE", c.DEFAULT_SENT_CHUNK_SIZE, env, minimum=1
            ),
            version_cache_max_bytes=c.env_int(
                p + "VERSION_CACHE_MAX_BYTES", c.DEFAULT_VERSION_CACHE_MAX_BYTES, env, minimum=1
            ),
            grpc_reflection=c.env_bool(p + "GRPC_REFLECTION", False, env),
            internal_call_timeout_seconds=c.env_float(p + "INTERNAL_CALL_TIMEOUT_SECONDS", 10.0, env),
            blob_stream_base_timeout_seconds=c.env_float(p + "BLOB_STREAM_BASE_TIMEOUT_SECONDS", 60.0, env),
            blob_stream_min_rate_bytes_per_second=c.env_int(
                p + "BLOB_STREAM_MIN_RATE_BYTES_PER_SECOND", c.MIB, env, minimum=1
            ),
            watch_renewal_seconds=c.env_float(p + "WATCH_RENEWAL_SECONDS", 3600.0, env),
            upstream_health_interval_seconds=c.env_float(p + "UPSTREAM_HEALTH_INTERVAL_SECONDS", 1.0, env),
            shutdown_grace_seconds=c.env_float(p + "SHUTDOWN_GRACE_SECONDS", 10.0, env),
            limits=RequestLimits.from_env(env),
        )

    def blob_stream_timeout(self, size: int) -> float:
        return min(
            self.blob_stream_base_timeout_seconds + size / self.blob_stream_min_rate_bytes_per_second,
            MAX_BLOB_STREAM_TIMEOUT_SECONDS,
        )
