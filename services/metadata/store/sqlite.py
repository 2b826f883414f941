"""The SQLite store: one file, WAL journal, `synchronous=FULL`.

Only what is specific to SQLite lives here: opening the connection, the
schema and its migrations, transaction statements and `sqlite_sequence`;
and `SqliteReader`, a second, read-only connection whose reads are cheap
enough to serve on the event loop thread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.common.limits import RequestLimits
from services.metadata.errors import StoreOpenError, database_disk_full
from services.metadata.records import CacheBudget
from services.metadata.store.base import ReadDeferred
from services.metadata.store.sql import Cursor, SqlMetadataStore, apply_migrations

# The most rows a listing without a count reads on the event loop thread
# (`SqliteReader`): about 0.1 ms of work; a longer listing is read on the
# store's thread.
READER_LISTING_ROWS = 100

# How long a write waits for another connection's write transaction (only
# other processes can hold one: this service writes from a single thread).
BUSY_TIMEOUT_SECONDS = 10.0

# Each entry migrates the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # seq: creation order, never reused (AUTOINCREMENT); the key of
        # model pagination handles.
        """CREATE TABLE models (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id TEXT NOT NULL UNIQUE,
            user_data TEXT NOT NULL,          -- JSON object of strings
            next_version INTEGER NOT NULL     -- the last version number allocated (0: none yet)
        )""",
        """CREATE TABLE versions (
            model_seq INTEGER NOT NULL REFERENCES models (seq),
            number INTEGER NOT NULL,
            creation_timestamp INTEGER NOT NULL,  -- ns since the Unix epoch
            archived BOOLEAN NOT NULL,
            data_hash TEXT NOT NULL,
            data_size INTEGER NOT NULL,
            user_data TEXT NOT NULL,              -- JSON object of strings
            blob_key TEXT NOT NULL UNIQUE,
            last_used INTEGER NOT NULL,           -- LRU stamp (ns), meaningful for transient versions
            PRIMARY KEY (model_seq, number)
        )""",
        # Eviction picks the least recently used transient versions.
        "CREATE INDEX versions_transient_lru ON versions (last_used) WHERE archived = FALSE",
    ),
    (
        # The database's identity, drawn once when the database is created
        # (or first migrated): the blobstore's sweeper refuses to sweep
        # against a database other than the one it last swept against.
        "CREATE TABLE database_identity (database_id TEXT NOT NULL)",
        "INSERT INTO database_identity (database_id) VALUES (lower(hex(randomblob(16))))",
    ),
    (
        # Blobstore replicas alive, each until its lease expires (ns since
        # the epoch); `slot` is where it runs: a new id in a slot replaces the old.
        """CREATE TABLE blobstore_leases (
            replica_id TEXT PRIMARY KEY,
            slot TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        )""",
        "CREATE INDEX blobstore_leases_slot ON blobstore_leases (slot)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteMetadataStore(SqlMetadataStore):
    """`MetadataStore` in a SQLite file, created (with its directory) if needed.

    Use from the thread that created it only (sqlite3 enforces this).
    """

    def __init__(self, path: Path, budget: CacheBudget, limits: RequestLimits | None = None) -> None:
        self.path = path
        super().__init__(self._open(path), budget, limits)

    def _open(self, path: Path) -> sqlite3.Connection:
        """A configured connection to `path`, with the schema up to date."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: the driver opens no transaction by itself;
            # `_begin` does, explicitly.
            connection = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
        except (OSError, sqlite3.Error) as exc:
            raise StoreOpenError(f"cannot open the metadata database {path}: {exc}") from exc
        try:
            _configure(connection, path)
            _migrate(connection, path)
        except BaseException:
            connection.close()
            raise
        return connection

    def _database_error(self, exc: Exception) -> Exception | None:
        # SQLITE_FULL ("database or disk is full"): the transaction is
        # rolled back, nothing is written (a WAL commit is its last frame).
        # Extended codes keep the primary code in the low byte.
        if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL:
            return database_disk_full(str(self.path), str(exc))
        return super()._database_error(exc)

    def _begin(self, cursor: Cursor, *, write: bool) -> None:
        # IMMEDIATE takes the write lock at once, so a transaction that reads
        # then writes never fails half-way on a concurrent writer.
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _end(self, cursor: Cursor, *, commit: bool) -> None:
        if commit:
            cursor.execute("COMMIT")
        elif self._connection.in_transaction:  # SQLite may have rolled back already
            cursor.execute("ROLLBACK")

    def _largest_model_seq(self, cursor: Cursor) -> int:
        row = cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = 'models'").fetchone()
        return row[0] if row is not None else 0


class SqliteReader(SqliteMetadataStore):
    """The read half of a `SqliteMetadataStore` on its own connection, for
    reads served on the event loop thread (`MetadataRegistry`).

    Under WAL, readers neither wait for the writer nor make it wait, and
    each read transaction sees every transaction committed before it began:
    a read after a commit returned sees that commit. The connection refuses
    writes (`query_only`) and never waits for a lock: where SQLite would
    have to wait (another process holds the database exclusively), a read
    raises `ReadDeferred` instead of stalling the event loop.

    A listing without a count ("as many as fit a reply") is read here
    while it ends within `READER_LISTING_ROWS` rows, the common case (a
    dozen models, a model's versions); a longer one raises `ReadDeferred`
    after its first batch and is read on the store's thread, so the loop is
    never held for more than that many rows.

    Open it once the `SqliteMetadataStore` has created or migrated the
    database; use it from the thread that opened it only.
    """

    listing_batch_rows = READER_LISTING_ROWS

    def _next_listing_batch(self) -> None:
        raise ReadDeferred(f"a listing longer than {READER_LISTING_ROWS} rows")

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(path, isolation_level=None, timeout=0)
        except sqlite3.Error as exc:
            raise StoreOpenError(f"cannot open the metadata database {path}: {exc}") from exc
        try:
            (journal_mode,) = connection.execute("PRAGMA journal_mode").fetchone()
            if journal_mode.lower() != "wal":
                # Without WAL, readers and the writer would block each other.
                raise StoreOpenError(f"the metadata database {path} is not in WAL mode ({journal_mode!r})")
            connection.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            connection.close()
            raise StoreOpenError(f"cannot read the metadata database {path}: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def data_version(self) -> int | None:
        # SQLite's own change counter, as this connection sees it: another
        # connection's commit (this process's writer, or another process)
        # changes it. It reads the WAL index only, in a few µs.
        try:
            return self._connection.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None

    def _database_error(self, exc: Exception) -> Exception | None:
        # Extended codes (SQLITE_BUSY_RECOVERY...) keep the primary code in the low byte.
        if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF in (
            sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED,
        ):
            return ReadDeferred(f"the metadata database is locked: {exc}")
        return super()._database_error(exc)


def _configure(connection: sqlite3.Connection, path: Path) -> None:
    try:
        (journal_mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        # FULL: a commit is on disk (WAL fsynced) when COMMIT returns.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StoreOpenError(f"cannot use {path} as the metadata database: {exc}") from exc
    if journal_mode.lower() != "wal":
        raise StoreOpenError(
            f"the metadata database {path} cannot use write-ahead logging (journal_mode is {journal_mode!r}); "
            "put it on a local file system"
        )


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Brings the schema up to date, in one transaction."""
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            apply_migrations(connection.execute, MIGRATIONS, str(path), "?")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreOpenError(f"cannot prepare the metadata database {path}: {exc}") from exc
