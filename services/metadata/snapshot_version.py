"""PostgreSQL's data version for the reply cache: the server's current snapshot.

A snapshot (`pg_current_snapshot()`: the first transaction id not yet
assigned, and those still running) says exactly which transactions are
visible. Two equal snapshots see the same committed data; any commit in
between, of any replica, changes it (it assigned a transaction id, then
finished). So a reply read under a snapshot may be served for as long as
the server's current snapshot stays equal to it (reply_cache.py). Read-only
transactions assign no id: the reads themselves do not move it.

The snapshot is cluster-wide: a write to another database of the same
server empties the cache too. That costs misses, never a stale reply.

Freshness costs a round trip to the server, which is what the cache exists
to avoid, so it is made cheap:

- Lookups that arrive while a snapshot query is in flight share the next
  one (as Raft's ReadIndex batches linearizable reads). A lookup never
  shares the query already in flight: its snapshot may predate a commit the
  caller was told of.
- The query is a prepared statement sent through libpq itself (psycopg's
  `pgconn`, non-blocking) and answered from a reader callback on the event
  loop: about a third of the CPU of psycopg's async cursor, and no task or
  thread per lookup. The connection is apart from the store's: a lookup
  never waits behind a write on the store's worker thread.

A failure (server gone, no answer within `timeout`) answers None ("no
version": the request is read from the store, whose errors it gets) and
closes the connection; each new connection starts a new epoch, part of the
version, so nothing kept before a reconnection (a server restored from a
backup reuses transaction ids) is served after it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from psycopg import pq

from services.metadata.postgres_session import connection_parameters, reason

log = logging.getLogger("registry.metadata")

_STATEMENT = b"registry_snapshot"
_PREPARE = "PREPARE registry_snapshot AS SELECT pg_current_snapshot()::text"

SnapshotVersion = tuple[int, str]  # (connection epoch, snapshot)
_Waiters = list[asyncio.Future[SnapshotVersion | None]]


class PostgresSnapshotVersion:
    """`DataVersion` (reply_cache.py) of a PostgreSQL server at `url`.

    Connecting, or a snapshot query, that fails or takes longer than
    `timeout` seconds answers None, and so does every lookup for the next
    `timeout` seconds (a server that is away is not asked again by every
    request). Used from the event loop thread only."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._connection: psycopg.AsyncConnection | None = None
        self._socket = -1
        self._connecting: asyncio.Task[None] | None = None
        self._epoch = 0
        self._waiting: _Waiters = []  # for the next query
        self._in_flight: _Waiters | None = None  # for the query sent
        self._deadline: asyncio.TimerHandle | None = None
        self._quiet_until = 0.0
        self._failing = False
        self._closed = False

    async def current(self) -> SnapshotVersion | None:
        """The server's snapshot, read after this call began; None if it
        cannot be read now."""
        if self._closed or time.monotonic() < self._quiet_until:
            return None
        waiter: asyncio.Future[SnapshotVersion | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        if self._in_flight is None:
            self._send()
        return await waiter

    # -- one query at a time ------------------------------------------------------

    def _send(self) -> None:
        """Sends the query for the lookups waiting (connecting first if needed)."""
        if self._connection is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        self._in_flight, self._waiting = self._waiting, []
        try:
            self._start_query()
        except (psycopg.Error, OSError) as exc:
            self._fail(exc)
            return
        self._deadline = asyncio.get_running_loop().call_later(
            self._timeout, self._fail, TimeoutError(f"no answer within {self._timeout:g}s")
        )

    def _answered(self, snapshot: str) -> None:
        """The query in flight answered: its lookups get the snapshot, and
        those that arrived meanwhile get the next query."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        in_flight, self._in_flight = self._in_flight or [], None
        if self._failing:
            self._failing = False
            log.info("the database's snapshot reads again: small reads are cached again")
        version = (self._epoch, snapshot)
        for waiter in in_flight:
            if not waiter.done():  # its caller may have given up
                waiter.set_result(version)
        if self._waiting:
            self._send()

    def _fail(self, exc: BaseException | None) -> None:
        """Answers every lookup with None, drops the connection; quiet for
        `timeout` seconds (nothing if closing: `exc` None)."""
        if exc is not None:
            if not self._failing:  # once per outage, not every `timeout` seconds
                log.info("cannot read the database's snapshot, small reads are not cached for now: %s", reason(exc))
            self._failing = True
            self._quiet_until = time.monotonic() + self._timeout
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        waiters = (self._in_flight or []) + self._waiting
        self._in_flight, self._waiting = None, []
        self._drop_connection()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- the connection and libpq ------------------------------------------------

    async def _connect(self) -> None:
        connection = None
        try:
            async with asyncio.timeout(self._timeout):
                connection = await psycopg.AsyncConnection.connect(
                    **connection_parameters(self._url), autocommit=True
                )
                await connection.execute(_PREPARE)
        except Exception as exc:  # any: lookups must never wait on a task that died
            if connection is not None:
                await connection.close()
            self._connecting = None
            self._fail(exc)
            return
        except BaseException:  # cancelled: closing
            if connection is not None:
                await connection.close()
            raise
        self._connecting = None
        if self._closed:
            await connection.close()
            return
        self._connection = connection
        self._socket = connection.pgconn.socket  # libpq no longer says, once the connection is lost
        self._epoch += 1
        asyncio.get_running_loop().add_reader(self._socket, self._on_readable)
        if self._waiting:
            self._send()

    def _start_query(self) -> None:
        assert self._connection is not None
        pgconn = self._connection.pgconn  # non-blocking, as in every async connection
        pgconn.send_query_prepared(_STATEMENT, None)
        if pgconn.flush() != 0:  # a few bytes: only a full socket buffer leaves any behind
            raise OSError("the database connection does not take the query")

    def _on_readable(self) -> None:
        connection = self._connection
        if connection is None:
            return
        pgconn = connection.pgconn
        try:
            pgconn.consume_input()  # raises if the server went away, even while idle
            if self._in_flight is None or pgconn.is_busy():
                return
            snapshot: bytes | None = None
            while (result := pgconn.get_result()) is not None:
                if result.status != pq.ExecStatus.TUPLES_OK:
                    raise psycopg.OperationalError(result.get_error_message() or "the snapshot query failed")
                snapshot = result.get_value(0, 0)
            if snapshot is None:
                raise psycopg.OperationalError("the snapshot query returned nothing")
        except psycopg.Error as exc:
            self._fail(exc)
            return
        self._answered(snapshot.decode())

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        asyncio.get_running_loop().remove_reader(self._socket)
        # What `AsyncConnection.close` does, without awaiting (this runs in callbacks).
        connection.pgconn.finish()

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            try:
                await self._connecting
            except asyncio.CancelledError:
                pass
            self._connecting = None
        self._fail(None)
