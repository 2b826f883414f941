"""The PostgreSQL store: several metadata replicas sharing one database.

Only what is specific to PostgreSQL lives here: connecting and reconnecting,
the schema and its migrations, transaction statements, the model sequence,
the transient-cache lock, and announcing changes (NOTIFY), which carries "a
version was committed" from the replica that committed it to the watchers
of every other replica (their `change_feed.PostgresChangeFeed`).

How concurrent replicas stay correct (docs/design.md, sections 1-3):

- Write transactions run at READ COMMITTED. A commit allocates its number
  with `UPDATE models SET next_version = next_version + 1 ... RETURNING`:
  the row lock makes a second commit to the same model wait until the
  first ends, then increment the value the first committed. Numbers are
  unique and gap-free, and a model's versions become visible in number
  order, so a watcher reading "versions after N" never skips one.
- Eviction reads the global cache totals under a transaction-scoped
  advisory lock (see `_lock_transient_cache`).
- Two replicas committing the same blob key (a retried commit) race on the
  unique constraint; the loser retries, finds the winner's version and
  returns it (`SqlMetadataStore.commit_version`).
- Read transactions run at REPEATABLE READ, READ ONLY: one snapshot per
  call, and never a serialisation failure.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors

from services.common.errors import InvalidArgument, Unavailable
from services.metadata.database_url import redacted_url
from services.common.limits import RequestLimits
from services.metadata.errors import StoreOpenError, database_disk_full
from services.metadata.postgres_session import CHANNEL, change_payload, connection_parameters, new_origin, reason
from services.metadata.records import CacheBudget
from services.metadata.store.base import MetadataStore
from services.metadata.store.sql import Cursor, SqlMetadataStore, apply_migrations

log = logging.getLogger("registry.metadata")

T = TypeVar("T")

BLOB_KEY_CONSTRAINT = "versions_blob_key_unique"

# Advisory locks are keyed (namespace, hash of the schema), so registries in
# different schemas of one database do not wait for each other.
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(726001, hashtext(current_schema()))"
_CACHE_LOCK = "SELECT pg_advisory_xact_lock(726002, hashtext(current_schema()))"

# Explicit levels: the concurrency argument above must not depend on the
# server's default_transaction_isolation.
_BEGIN_WRITE = "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"

# Our transactions never wait on the client between statements: one left
# open (a replica stopped mid-transaction) must not hold row locks that
# other replicas wait for.
_SESSION_SETUP = "SET idle_in_transaction_session_timeout = '60s'"

# Each entry migrates the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # seq: creation order from a sequence, never reused (deleted models'
        # positions included); the key of model pagination handles.
        """CREATE TABLE models (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            model_id TEXT NOT NULL UNIQUE,
            user_data TEXT NOT NULL,          -- JSON object of strings
            next_version BIGINT NOT NULL      -- the last version number allocated (0: none yet)
        )""",
        f"""CREATE TABLE versions (
            model_seq BIGINT NOT NULL REFERENCES models (seq),
            number BIGINT NOT NULL,
            creation_timestamp BIGINT NOT NULL,  -- ns since the Unix epoch
            archived BOOLEAN NOT NULL,
            data_hash TEXT NOT NULL,
            data_size BIGINT NOT NULL,
            user_data TEXT NOT NULL,             -- JSON object of strings
            blob_key TEXT NOT NULL,
            last_used BIGINT NOT NULL,           -- LRU stamp (ns), meaningful for transient versions
            PRIMARY KEY (model_seq, number),
            CONSTRAINT {BLOB_KEY_CONSTRAINT} UNIQUE (blob_key)
        )""",
        # Eviction picks the least recently used transient versions.
        "CREATE INDEX versions_transient_lru ON versions (last_used) WHERE archived = FALSE",
    ),
    (
        # The database's identity (see the SQLite store's migration 2).
        "CREATE TABLE database_identity (database_id TEXT NOT NULL)",
        "INSERT INTO database_identity (database_id) "
        "VALUES (md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text))",
    ),
    (
        # Blobstore replicas alive, each until its lease expires (ns since
        # the epoch); `slot` is where it runs: a new id in a slot replaces the old.
        """CREATE TABLE blobstore_leases (
            replica_id TEXT PRIMARY KEY,
            slot TEXT NOT NULL,
            expires_at BIGINT NOT NULL
        )""",
        "CREATE INDEX blobstore_leases_slot ON blobstore_leases (slot)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _connect(url: str) -> psycopg.Connection:
    # autocommit: the driver opens no transaction by itself; `_begin` does,
    # explicitly, as for SQLite.
    connection = psycopg.connect(**connection_parameters(url), autocommit=True)
    try:
        connection.execute(_SESSION_SETUP)
    except BaseException:
        connection.close()
        raise
    return connection


@functools.lru_cache(maxsize=256)
def _placeholders(statement: str) -> str:
    # The shared statements use `?` and contain no `%` nor literal `?`.
    return statement.replace("?", "%s")


def _contract_through_call(cls: type[PostgresMetadataStore]) -> type[PostgresMetadataStore]:
    """Makes every method of the contract (the abstract methods of
    `MetadataStore`) but `close` run through `cls._call`.

    Driven by the contract rather than a list, so that a method added to it
    cannot miss the reconnect-and-translate step. A class decorator rather
    than `__init_subclass__`: the wrapping belongs to this one class and is
    done once, where the class is defined, whereas `__init_subclass__` would
    run again for every subclass (the tests' failure-injecting stores) and
    wrap what is wrapped already, nesting retries. Rather than
    `__getattribute__`: the names are known when the class is made, and the
    wrappers are ordinary methods, visible as such.

    `check` goes through `_call` too: a lost connection is replaced first, so
    the check says whether the database can be reached now. `close` does
    not: it must not reconnect, and closing a lost connection cannot fail.
    """
    for name in MetadataStore.__abstractmethods__ - {"close"}:
        method = _through_call(getattr(cls, name))
        method.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, method)
    return cls


def _through_call(implementation: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(implementation)
    def method(self: PostgresMetadataStore, *args: Any, **kwargs: Any) -> T:
        return self._call(implementation, self, *args, **kwargs)

    return method


@_contract_through_call
class PostgresMetadataStore(SqlMetadataStore):
    """`MetadataStore` in a PostgreSQL database (the schema is created or
    migrated at start); see `base` for the contract.

    `url` is a libpq URL; tables live in the first schema of its
    `search_path` (e.g. `?options=-csearch_path%3Dregistry`). `origin` tags
    the changes this store announces (`PostgresChangeFeed` ignores its own).

    Each call of the contract (`_contract_through_call`) is retried once, on
    a new connection, when the connection was lost before the transaction
    could have committed (a restarted server, a terminated backend);
    otherwise database failures are `Unavailable`.
    """

    def __init__(
        self, url: str, budget: CacheBudget, *, origin: str | None = None, limits: RequestLimits | None = None
    ) -> None:
        self._url = url
        self.description = redacted_url(url)
        self.origin = origin or new_origin()
        try:
            connection = _connect(url)
        except psycopg.Error as exc:
            raise StoreOpenError(
                f"cannot connect to the metadata database {self.description}: {reason(exc)}"
            ) from None
        try:
            _migrate(connection, self.description)
            (sequence,) = connection.execute("SELECT pg_get_serial_sequence('models', 'seq')").fetchone()
        except psycopg.Error as exc:
            connection.close()
            raise StoreOpenError(
                f"cannot prepare the metadata database {self.description}: {reason(exc)}"
            ) from None
        except BaseException:
            connection.close()
            raise
        super().__init__(connection, budget, limits)
        # `sequence` is a name PostgreSQL quoted itself. last_value counts
        # positions handed out, including those of deleted models.
        self._largest_seq_statement = f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}"
        self._closed = False
        # What the current transaction is, for deciding whether a failure may be retried.
        self._writing = False
        self._committing = False

    # -- dialect hooks ---------------------------------------------------

    def _begin(self, cursor: Cursor, *, write: bool) -> None:
        self._writing, self._committing = write, False
        cursor.execute(_BEGIN_WRITE if write else _BEGIN_READ)

    def _end(self, cursor: Cursor, *, commit: bool) -> None:
        if commit:
            self._committing = True  # stays set if COMMIT fails
            cursor.execute("COMMIT")
            self._committing = False
            return
        if self._connection.closed:
            return  # the server rolls back the transaction of a lost connection
        try:
            cursor.execute("ROLLBACK")
        except psycopg.OperationalError:
            if not self._connection.closed:
                raise

    def _largest_model_seq(self, cursor: Cursor) -> int:
        return cursor.execute(self._largest_seq_statement).fetchone()[0]

    def _sql(self, statement: str) -> str:
        return _placeholders(statement)

    def _lock_transient_cache(self, cursor: Cursor) -> None:
        # A transaction-scoped advisory lock rather than row locks: eviction
        # decides from global totals (count and bytes of every transient
        # version), which no set of row locks protects. `FOR UPDATE SKIP
        # LOCKED` would let two replicas each skip the other's candidates
        # while both count them, and rows inserted by commits still in
        # flight cannot be locked at all. Under this lock each evicting
        # transaction sees every commit that evicted before it (READ
        # COMMITTED: each statement takes a fresh snapshot), so the committed
        # state always fits the budget. It is held until COMMIT: commits of
        # transient versions serialise from their eviction step onwards,
        # short against the upload that precedes every commit.
        cursor.execute(_CACHE_LOCK)

    def _announce_change(self, cursor: Cursor, model_id: str) -> None:
        # Delivered to listeners only if, and when, the transaction commits.
        cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, change_payload(self.origin, model_id)))

    def _is_duplicate_blob_key(self, error: Exception) -> bool:
        return isinstance(error, errors.UniqueViolation) and error.diag.constraint_name == BLOB_KEY_CONSTRAINT

    # -- connection failures ---------------------------------------------

    def _call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs one store operation (one or two transactions), retrying it
        once on a new connection when that cannot repeat a committed write:
        the connection was lost before COMMIT (or during a read's COMMIT),
        or the server rolled the transaction back (deadlock, serialisation
        failure). A write whose COMMIT got no answer may have committed:
        that is `Unavailable`, as is any failure the retry does not cure.
        """
        for attempt in (1, 2):
            self._reconnect_if_lost()
            try:
                return operation(*args, **kwargs)
            except psycopg.DataError as exc:
                # The only data PostgreSQL refuses that SQLite takes: NUL
                # characters in text (ids, keys, hashes).
                raise InvalidArgument(
                    f"the request holds a value the metadata database cannot store: {reason(exc)}"
                ) from None
            except errors.DiskFull as exc:
                # SQLSTATE 53100, on a connection that is still there: the
                # statement, or COMMIT, failed and the transaction is rolled
                # back. (A server that lost its WAL write ends the connection:
                # that is the "lost while committing" case below.)
                if self._connection.closed:
                    raise Unavailable(
                        f"the metadata database {self.description} ran out of disk space and dropped the "
                        f"connection; the change may or may not have been made: {reason(exc)}"
                    ) from exc
                raise database_disk_full(self.description, reason(exc)) from None
            except psycopg.OperationalError as exc:
                lost = self._connection_lost(exc)
                if lost and self._committing and self._writing:
                    raise Unavailable(
                        "the connection to the metadata database was lost while committing; "
                        f"the change may or may not have been made: {reason(exc)}"
                    ) from exc
                if attempt == 1 and (lost or isinstance(exc, errors.TransactionRollback)):
                    log.warning("metadata database call failed (%s); retrying once", reason(exc))
                    continue
                raise Unavailable(f"the metadata database {self.description} is unavailable: {reason(exc)}") from exc
        raise AssertionError("unreachable")

    def _connection_lost(self, exc: psycopg.OperationalError) -> bool:
        """Whether the connection is gone. The server's "terminating
        connection" notice (SQLSTATE class 57P, or 08 for a connection
        failure) can arrive before the driver has seen the socket close, so
        the code counts as much as the connection's state (`closed`, which a
        broken connection is too); the connection is then closed here so
        that the next attempt opens a new one."""
        if self._connection.closed:
            return True
        if (exc.sqlstate or "").startswith(("57P", "08")):
            self._connection.close()
            return True
        return False

    def _reconnect_if_lost(self) -> None:
        if self._closed:
            raise Unavailable("the metadata store is closed")
        if not self._connection.closed:
            return
        try:
            self._connection = _connect(self._url)
        except psycopg.Error as exc:
            raise Unavailable(f"cannot reach the metadata database {self.description}: {reason(exc)}") from None
        log.info("reconnected to the metadata database %s", self.description)

    @property
    def backend_pid(self) -> int | None:
        """The server process of the current connection (for tests and logs)."""
        return None if self._connection.closed else self._connection.info.backend_pid

    def close(self) -> None:
        self._closed = True
        self._connection.close()


def _migrate(connection: psycopg.Connection, description: str) -> None:
    """Brings the schema up to date in one transaction, under an advisory
    lock: replicas starting together migrate one after the other (the later
    ones find the work done)."""
    with connection.transaction():
        connection.execute(_MIGRATION_LOCK)
        apply_migrations(connection.execute, MIGRATIONS, description, "%s")

