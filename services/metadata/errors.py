"""The metadata service's errors, worded once.

Requests fail with `services.common.errors` (which carry their gRPC code);
the functions here build the ones raised from several places so that their
messages stay identical. `StoreOpenError` is a start-up failure, not a
request error.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted, quoted


class StoreOpenError(RuntimeError):
    """The database cannot be opened or is not one this service can use."""


def model_not_found(model_id: str) -> NotFound:
    return NotFound(f"model {quoted(model_id)} not found")


def model_deleted(model_id: str) -> NotFound:
    return NotFound(f"model {quoted(model_id)} was deleted")


def require_model_id(model_id: str, field: str = "model_id") -> None:
    if not model_id:
        raise InvalidArgument(f"{field} must not be empty")


def database_disk_full(description: str, detail: str) -> ResourceExhausted:
    """A write the database refused for lack of disk space. It was rolled
    back: nothing changed (so the frontend may treat the request as refused,
    not as perhaps committed), and reads still work."""
    return ResourceExhausted(
        f"the metadata database {description} has no disk space left ({detail}): nothing was changed; "
        "free space on its disk and retry (reads keep working meanwhile)"
    )
