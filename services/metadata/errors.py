"""The metadata service's errors, worded once.

Requests fail with `services.common.errors` (which carry their gRPC code);
the functions here build the ones raised from several places so that their
messages stay identical. `StoreOpenError` is a start-up failure, not a
request error.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument, NotFound, quoted


class StoreOpenError(RuntimeError):
    """The database cannot be opened or is not one this service can use."""


def model_not_found(model_id: str) -> NotFound:
    return NotFound(f"model {quoted(model_id)} not found")


def model_deleted(model_id: str) -> NotFound:
    return NotFound(f"model {quoted(model_id)} was deleted")


def require_model_id(model_id: str, field: str = "model_id") -> None:
    if not model_id:
        raise InvalidArgument(f"{field} must not be empty")
