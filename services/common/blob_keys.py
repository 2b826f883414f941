"""The format of blob keys, which the frontend makes and the blobstore checks.

- An archived blob lives in shared storage (a directory or a bucket) that
  every blobstore replica reads: its key is a random 32-hex-digit id.
- A transient blob lives in the memory of one replica: its key is the
  random id, `-`, and the id of that replica (`DescribeReplica`). Any
  frontend can tell from the key alone where the bytes are, and a replica
  that restarted (new id) is known not to hold them.
"""

from __future__ import annotations

import re
import secrets
import uuid

_HOLDER_SEPARATOR = "-"
_REPLICA_ID_PATTERN = re.compile(r"[0-9a-f]{16}")


def new_replica_id() -> str:
    """A fresh id for a blobstore process (16 hex digits)."""
    return secrets.token_hex(8)


def new_archived_key() -> str:
    return uuid.uuid4().hex


def new_transient_key(replica_id: str) -> str:
    """A key for a transient blob stored by replica `replica_id`."""
    if _REPLICA_ID_PATTERN.fullmatch(replica_id) is None:
        raise ValueError(f"{replica_id!r} is not a blobstore replica id")
    return f"{uuid.uuid4().hex}{_HOLDER_SEPARATOR}{replica_id}"


def keys_held_by_pattern(replica_id: str) -> str:
    """A SQL LIKE pattern matching the transient keys held by `replica_id`
    (for metadata, which forgets them when that replica is gone)."""
    if _REPLICA_ID_PATTERN.fullmatch(replica_id) is None:  # also: no LIKE wildcard
        raise ValueError(f"{replica_id!r} is not a blobstore replica id")
    return f"%{_HOLDER_SEPARATOR}{replica_id}"


def is_replica_id(value: str) -> bool:
    return _REPLICA_ID_PATTERN.fullmatch(value) is not None


def holder_of(key: str) -> str | None:
    """The id of the replica a transient key names; None for other keys."""
    _, separator, holder = key.rpartition(_HOLDER_SEPARATOR)
    if not separator or _REPLICA_ID_PATTERN.fullmatch(holder) is None:
        return None
    return holder
