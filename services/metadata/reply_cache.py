"""Encoded replies of the public small reads, kept while the database is unchanged.

Actors ask `RetrieveVersionInfos` (the latest version) and `RetrieveModels`
far more often than anything changes. While the database is unchanged the
answer to the same request is the same bytes, so metadata keeps it, encoded,
and a repeated request costs a lookup instead of a database read, the
conversions and the encoding.

Fresh by construction, never by expiry: the database says when it changed.
Each lookup first asks the database's `DataVersion` for its current
version, and empties the cache when it moved:

- SQLite: its change counter (`PRAGMA data_version` on the reader's
  connection), which any connection's commit moves, this process's writer's
  or another process's; read in a few µs, without waiting.
- PostgreSQL: the server's current snapshot, which any replica's commit
  changes (snapshot_version.py); a round trip, shared by the lookups that
  arrive together.

A reply is kept under the version read before it was read, so it reflects
at least that state, and it is served only while the version has not moved
since: a client that was told a write succeeded (by any replica) never gets
a reply read before it.

Used from the event loop thread only.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

ReplyKey = tuple[str, bytes]  # (method, the request as encoded)


class DataVersion(Protocol):
    """What moves whenever anything is committed to the database."""

    async def current(self) -> Hashable | None:
        """The version now (read after this call began), or None if the
        database cannot say: then nothing is served from the cache nor
        kept in it."""

    async def close(self) -> None: ...


class ReplyCache:
    """At most `max_bytes` of keys and replies; a reply larger than
    1/`ENTRY_SHARE` of that is not kept (a large listing is read again)."""

    ENTRY_SHARE = 64

    def __init__(self, max_bytes: int, data_version: DataVersion) -> None:
        self.max_bytes = max_bytes
        self._data_version = data_version
        self._version: Hashable | None = None
        self._entries: dict[ReplyKey, bytes] = {}
        self._bytes = 0

    async def lookup(self, key: ReplyKey) -> tuple[bytes | None, Hashable | None]:
        """The reply kept for `key` if the database is unchanged since, and
        the version to `put` a new reply under (None: do not keep it)."""
        version = await self._data_version.current()
        if version is None or version != self._version:
            self._entries.clear()
            self._bytes = 0
            self._version = version
            return None, version
        return self._entries.get(key), version

    def put(self, key: ReplyKey, version: Hashable | None, reply: bytes) -> None:
        """Keeps `reply`, read after `lookup` returned `version`."""
        size = len(key[0]) + len(key[1]) + len(reply)
        if version is None or version != self._version or size * self.ENTRY_SHARE > self.max_bytes:
            return
        if self._bytes + size > self.max_bytes:
            # Rare (a change empties the cache far more often): start again
            # rather than keep an order of use on every hit.
            self._entries.clear()
            self._bytes = 0
        previous = self._entries.get(key)
        if previous is not None:
            self._bytes -= len(key[0]) + len(key[1]) + len(previous)
        self._entries[key] = reply
        self._bytes += size

    def __len__(self) -> int:
        return len(self._entries)
