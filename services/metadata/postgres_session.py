"""What every PostgreSQL session of the metadata service shares, whether it
is the store's (`store.postgres`) or the change feed's (`change_feed`): how
it connects, how a driver error is worded, and the change notifications
that travel from the store of one replica to the feeds of all the others.

Here rather than in either of them, so that neither imports the other.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import conninfo

# Every replica's commits and deletions are announced on this channel, one
# notification per change (`change_payload`).
CHANNEL = "registry_versions"
# NOTIFY payloads must be shorter than 8000 bytes.
_MAX_PAYLOAD_BYTES = 7999

# Connection parameters used unless the URL sets them.
_CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "application_name": "cogment-model-registry-metadata",
    # Notice a vanished server (or a network partition) in about a minute
    # instead of the kernel's two hours.
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def connection_parameters(url: str, application_name: str | None = None) -> dict[str, Any]:
    """libpq parameters: the URL's, completed by `_CONNECTION_DEFAULTS`."""
    defaults = dict(_CONNECTION_DEFAULTS)
    if application_name is not None:
        defaults["application_name"] = application_name
    return {**defaults, **conninfo.conninfo_to_dict(url)}


def reason(error: BaseException) -> str:
    """The first line of a driver error (libpq adds hints and SQL excerpts)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def new_origin() -> str:
    """A random id for one replica, which tags the changes it announces (so
    that its own feed can skip them)."""
    return uuid.uuid4().hex


def change_payload(origin: str, model_id: str) -> str:
    """The NOTIFY payload for a change of `model_id`: "<origin>:<model_id>".
    An id too long to fit is left out, which `parse_change_payload` reads as
    "any model"."""
    payload = f"{origin}:{model_id}"
    if len(payload.encode()) > _MAX_PAYLOAD_BYTES:
        return f"{origin}:"
    return payload


def parse_change_payload(payload: str) -> tuple[str, str]:
    """(origin, model_id) of a `change_payload`; model_id "" means any model."""
    origin, _, model_id = payload.partition(":")
    return origin, model_id
