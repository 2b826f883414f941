"""Reading typed settings from the environment, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping

PREFIX = "COGMENT_MODEL_REGISTRY_"

# Ports of the internal listeners, used when nothing overrides them (the
# container images rely on these; the local launcher passes free ports).
DEFAULT_PUBLIC_PORT = 9000
DEFAULT_FRONTEND_PORT = 9010
DEFAULT_METADATA_PORT = 9020
# Metadata's second listener: the public reads Envoy routes to it.
DEFAULT_METADATA_READS_PORT = 9021
DEFAULT_BLOBSTORE_PORT = 9030
DEFAULT_ENVOY_INTERNAL_PORT = 9100
DEFAULT_ENVOY_ADMIN_PORT = 9901

# The variable each kind of service reads its port from, and its default.
SERVICE_PORTS = {
    "frontend": (PREFIX + "FRONTEND_PORT", DEFAULT_FRONTEND_PORT),
    "metadata": (PREFIX + "METADATA_PORT", DEFAULT_METADATA_PORT),
    "blobstore": (PREFIX + "BLOBSTORE_PORT", DEFAULT_BLOBSTORE_PORT),
}
# Where metadata answers the public reads (RetrieveModels, RetrieveVersionInfos).
METADATA_READS_PORT = (PREFIX + "METADATA_READS_PORT", DEFAULT_METADATA_READS_PORT)

MIB = 1024 * 1024
GIB = 1024 * MIB

# The largest data reply chunk: 2 MiB, as Cogment 2.x. Every gRPC client
# left at its defaults (the Cogment SDK's included) refuses a message over
# 4 MiB, and a reply chunk is a message: the original's 5 MiB default made
# every download of a version over 4 MiB fail in those clients.
SENT_CHUNK_SIZE_VARIABLE = PREFIX + "SENT_MODEL_VERSION_DATA_CHUNK_SIZE"
DEFAULT_SENT_CHUNK_SIZE = 2 * MIB
DEFAULT_CLIENT_RECEIVE_LIMIT = 4 * MIB
# Above this a reply chunk, with its few bytes of framing, may not fit a
# default client's limit (measured: 4 MiB - 5 data bytes is the most that does).
SAFE_SENT_CHUNK_SIZE = DEFAULT_CLIENT_RECEIVE_LIMIT - 1024
DEFAULT_VERSION_CACHE_MAX_ITEMS = 100
DEFAULT_VERSION_CACHE_MAX_BYTES = 2048 * MIB


class ConfigError(ValueError):
    """A setting is present but unusable; the message names the variable."""


def _raw(name: str, env: Mapping[str, str] | None) -> str | None:
    value = (os.environ if env is None else env).get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str, env: Mapping[str, str] | None = None) -> str:
    value = _raw(name, env)
    return default if value is None else value


def env_int(
    name: str,
    default: int,
    env: Mapping[str, str] | None = None,
    *,
    minimum: int | None = None,
) -> int:
    value = _raw(name, env)
    if value is None:
        return default
    try:
        number = int(value.replace("_", ""), 0)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} must be at least {minimum}")
    return number


def env_float(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    value = _raw(name, env)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None


def env_addresses(name: str, default: tuple[str, ...], env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A comma-separated list of `host:port` addresses."""
    value = _raw(name, env)
    if value is None:
        return default
    addresses = tuple(part.strip() for part in value.split(",") if part.strip())
    for address in addresses:
        host, separator, port = address.rpartition(":")
        if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name}: {address!r} is not host:port (expected e.g. blobstore:9030,10.0.0.7:9030)")
    if not addresses:
        raise ConfigError(f"{name}={value!r} lists no address")
    return addresses


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    """Booleans as the original read them: set means on, unless spelled as off."""
    value = _raw(name, env)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use true/false)")


def env_sent_chunk_size(env: Mapping[str, str] | None = None) -> int:
    """COGMENT_MODEL_REGISTRY_SENT_MODEL_VERSION_DATA_CHUNK_SIZE: the most
    data bytes a RetrieveVersionData reply carries (every service reads it:
    the blobstore slices by it, every hop sizes its message limit by it)."""
    return env_int(SENT_CHUNK_SIZE_VARIABLE, DEFAULT_SENT_CHUNK_SIZE, env, minimum=1)


def sent_chunk_size_warning(chunk_size: int) -> str | None:
    """What to tell the operator at start when `chunk_size` breaks downloads
    for clients left at gRPC's defaults; None when it does not."""
    if chunk_size <= SAFE_SENT_CHUNK_SIZE:
        return None
    return (
        f"{SENT_CHUNK_SIZE_VARIABLE}={chunk_size} is above {SAFE_SENT_CHUNK_SIZE} (4 MiB - 1 KiB): "
        f"gRPC clients left at their default receive limit of {DEFAULT_CLIENT_RECEIVE_LIMIT} bytes, the Cogment SDK's "
        "included, cannot download any version larger than that (the Cogment SDK's retrieve_model then returns None "
        "and track_latest_model never advances); leave it unset (2 MiB) unless every client raises "
        "grpc.max_receive_message_length"
    )


def grpc_message_limit(chunk_size: int) -> int:
    """Largest gRPC message any hop accepts.

    Clients choose their own upload chunk size, so the limit is generous
    (16 MiB) and always leaves room for a full download chunk plus framing.
    """
    return max(16 * MIB, chunk_size + MIB)
