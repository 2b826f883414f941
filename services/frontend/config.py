"""Frontend settings, read from the environment (see README, "Configuration")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from services.common import config as c
from services.common.access import AccessSettings
from services.common.limits import RequestLimits
from services.common.tls import public_tls_enabled

# The longest deadline a blob stream gets, whatever its size: a deadline
# derived from an absurd size (2^63 bytes) would overflow gRPC's timeout
# range and expire at once. Stalled streams are ended by the idle timeouts
# long before this.
MAX_BLOB_STREAM_TIMEOUT_SECONDS = 30 * 24 * 3600.0

# Cogment 2.x's names (its services and SDK read the same variables).
DIRECTORY_ENDPOINT_VARIABLE = "COGMENT_DIRECTORY_ENDPOINT"
DIRECTORY_TOKEN_VARIABLE = "COGMENT_DIRECTORY_AUTHENTICATION_TOKEN"
REGISTRATION_HOST_VARIABLE = c.PREFIX + "DIRECTORY_REGISTRATION_HOST"
REGISTRATION_PROPERTIES_VARIABLE = c.PREFIX + "DIRECTORY_REGISTRATION_PROPERTIES"


@dataclass(frozen=True)
class DirectorySettings:
    """Where and how this frontend registers the public endpoint in a
    Cogment Directory (docs: README, "Coming from Cogment")."""

    # host:port of the directory (COGMENT_DIRECTORY_ENDPOINT, grpc://host:port).
    address: str
    token: str
    # None: the host's outbound IPv4, found at start.
    registration_host: str | None
    public_port: int
    public_tls: bool
    properties: Mapping[str, str] = field(default_factory=dict)
    # How often the registration is looked up, and made again when the
    # directory no longer lists it (restarted, or dropped it).
    check_interval_seconds: float = 5.0
    # Bound on each directory call, and so on the Deregister at shutdown.
    call_timeout_seconds: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DirectorySettings | None:
        """None when COGMENT_DIRECTORY_ENDPOINT is unset: no registration."""
        endpoint = c.env_str(DIRECTORY_ENDPOINT_VARIABLE, "", env)
        if not endpoint:
            return None
        return cls(
            address=parse_directory_endpoint(endpoint),
            token=c.env_str(DIRECTORY_TOKEN_VARIABLE, "", env),
            registration_host=c.env_str(REGISTRATION_HOST_VARIABLE, "", env) or None,
            public_port=c.env_int(c.PREFIX + "PORT", c.DEFAULT_PUBLIC_PORT, env, minimum=1),
            public_tls=public_tls_enabled(env),
            properties=parse_properties(c.env_str(REGISTRATION_PROPERTIES_VARIABLE, "", env)),
            check_interval_seconds=c.env_float(c.PREFIX + "DIRECTORY_CHECK_INTERVAL_SECONDS", 5.0, env),
        )


def parse_directory_endpoint(value: str) -> str:
    """`grpc://host:port` (Cogment's form) or `host:port` → `host:port`."""
    url = urlsplit(value if "://" in value else f"grpc://{value}")
    try:
        port = url.port
    except ValueError:
        port, problem = None, "its port is not a number from 1 to 65535"
    else:
        problem = None
    if url.scheme != "grpc":
        problem = f"the scheme must be grpc, not {url.scheme!r} (a Cogment Directory speaks plaintext gRPC)"
    elif problem is None and (not url.hostname or not port):
        problem = "it needs a host and a port"
    elif problem is None and (url.path.strip("/") or url.query):
        problem = "it has a path or a query"
    if problem is not None or url.hostname is None:
        raise c.ConfigError(f"{DIRECTORY_ENDPOINT_VARIABLE}={value!r} is not usable: {problem} (expected grpc://host:port)")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"{host}:{port}"


def parse_properties(value: str) -> dict[str, str]:
    """`k=v,k=v` (Cogment's form) → a dict; an item without `=` is a ConfigError."""
    properties: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, separator, text = item.partition("=")
        if not separator or not key.strip():
            raise c.ConfigError(
                f"{REGISTRATION_PROPERTIES_VARIABLE}: {item.strip()!r} is not key=value (expected e.g. team=rl,env=prod)"
            )
        properties[key.strip()] = text.strip()
    return properties


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
    # Calls in flight (not subscriptions) that Status reports as overall_load 100.
    full_load_calls: int = 16
    # None: not registered in a Cogment Directory.
    directory: DirectorySettings | None = None
    limits: RequestLimits = field(default_factory=RequestLimits)
    # Who may call what on the public API (no credentials file: everyone).
    access: AccessSettings = field(default_factory=AccessSettings)

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
            sent_chunk_size=c.env_sent_chunk_size(env),
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
            full_load_calls=c.env_int(p + "FULL_LOAD_CALLS", 16, env, minimum=1),
            directory=DirectorySettings.from_env(env),
            limits=RequestLimits.from_env(env),
            access=AccessSettings.from_env(env),
        )

    def blob_stream_timeout(self, size: int) -> float:
        return min(
            self.blob_stream_base_timeout_seconds + size / self.blob_stream_min_rate_bytes_per_second,
            MAX_BLOB_STREAM_TIMEOUT_SECONDS,
        )
