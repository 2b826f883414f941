"""The PostgreSQL change feed: what other metadata replicas commit and
delete, heard through LISTEN/NOTIFY and fed to this replica's watch hub.

The store of each replica announces its changes inside their transactions
(`PostgresMetadataStore._announce_change`); this feed is the receiving end.
"""

from __future__ import annotations

import asyncio
import logging
import random

import psycopg

from services.metadata.database_url import redacted_url
from services.metadata.errors import StoreOpenError
from services.metadata.postgres_session import CHANNEL, connection_parameters, parse_change_payload, reason
from services.metadata.watch import VersionHub

log = logging.getLogger("registry.metadata")


class PostgresChangeFeed:
    """A `registry.ChangeFeed`: wakes this replica's watchers when another
    replica commits a version of their model or deletes it.

    One dedicated connection per replica LISTENs on `CHANNEL`, as an async
    psycopg connection on the event loop (where the hub lives). Changes this
    replica announced itself are skipped: the registry woke its watchers
    already. A deletion is a wake-up too: the woken watcher re-reads and
    ends with NOT_FOUND itself, which, unlike ending every current watcher
    of the id, is right even if the model was re-created meanwhile.

    Notifications sent while the connection is down are lost, so after
    reconnecting (with backoff) the feed wakes every watcher: each
    re-reads the store and misses nothing. A connection that stays silent is
    probed every `probe_seconds`, so a dead network does not go unnoticed.
    """

    def __init__(
        self,
        url: str,
        origin: str,
        *,
        probe_seconds: float = 10.0,
        retry_seconds: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self._url = url
        self._origin = origin
        self._description = redacted_url(url)
        self._probe_seconds = probe_seconds
        self._first_retry, self._max_retry = retry_seconds
        self._hub: VersionHub | None = None
        self._connection: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.reconnections = 0  # for tests and logs

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection, if connected."""
        connection = self._connection
        return None if connection is None or connection.closed else connection.info.backend_pid

    async def start(self, hub: VersionHub) -> None:
        """Returns once listening: no change committed afterwards is missed."""
        self._hub = hub
        try:
            self._connection = await self._connect()
        except psycopg.Error as exc:
            raise StoreOpenError(
                f"cannot listen for version notifications on {self._description}: {reason(exc)}"
            ) from None
        self._task = asyncio.create_task(self._run(), name="metadata-change-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._drop_connection()

    async def _connect(self) -> psycopg.AsyncConnection:
        parameters = connection_parameters(self._url, "cogment-model-registry-metadata-listener")
        connection = await psycopg.AsyncConnection.connect(**parameters, autocommit=True)
        try:
            await connection.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            except psycopg.Error:
                pass

    async def _run(self) -> None:
        assert self._hub is not None
        while True:
            try:
                await self._listen()
            except Exception as exc:  # noqa: BLE001 - whatever broke, listen again
                log.warning(
                    "lost the notification connection to %s (%s); reconnecting", self._description, reason(exc)
                )
            await self._drop_connection()
            await self._reconnect()
            self.reconnections += 1
            # Whatever was announced while we were deaf is lost: every
            # watcher re-reads the store instead.
            self._hub.wake_all()

    async def _listen(self) -> None:
        connection = self._connection
        assert connection is not None
        while True:
            async for notify in connection.notifies(timeout=self._probe_seconds):
                self._dispatch(notify.payload)
            # Notifications arriving during the probe wait in the driver's
            # backlog for the next `notifies()`.
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
            # cancellation of `close()` when it lands as the probe answers.
            async with asyncio.timeout(self._probe_seconds):
                await connection.execute("SELECT 1")

    async def _reconnect(self) -> None:
        delay = self._first_retry
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: replicas do not reconnect in step
            try:
                self._connection = await self._connect()
            except psycopg.Error as exc:
                log.warning("cannot listen on %s yet (%s)", self._description, reason(exc))
                delay = min(delay * 2, self._max_retry)
                continue
            log.info("listening for version notifications on %s again", self._description)
            return

    def _dispatch(self, payload: str) -> None:
        assert self._hub is not None
        origin, model_id = parse_change_payload(payload)
        if origin == self._origin:
            return
        if model_id:
            self._hub.version_committed(model_id)
        else:
            self._hub.wake_all()
