"""The store's logic, in SQL that SQLite and PostgreSQL both accept.

Subclasses supply a DB-API connection and the dialect specifics, which are
kept to a handful of hooks: how transactions begin and end, the largest
model position ever assigned, placeholder style (statements here use `?`;
`_sql` rewrites them for drivers that want something else), and the two
things only a database shared by several processes needs: a lock on the
transient cache, recognising a lost race on a blob key, and announcing
changes to the other processes.

Lock order, the same in every write transaction, so that concurrent writers
(PostgreSQL replicas) cannot deadlock: the model's row first, then the
transient cache lock, then version rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from services.common import metrics
from services.common.blob_keys import is_replica_id, keys_held_by_pattern
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, RegistryError, quoted
from services.common.limits import RequestLimits, ReplyBudget, check_version_fits_cache, listed_item_bytes, reply_too_large
from services.metadata.errors import StoreOpenError, model_not_found, require_model_id
from services.metadata.paging import parse_handle
from services.metadata.records import (
    BlobRef,
    CacheUsage,
    CacheBudget,
    Commit,
    DatabaseIdentity,
    Model,
    ModelPage,
    ResolvedVersion,
    Version,
    VersionBatch,
    VersionDraft,
    VersionPage,
)
from services.metadata.store.base import MetadataStore

log = logging.getLogger("registry.metadata")

Cursor = Any  # a DB-API 2.0 cursor

# A no-op until tracing is configured (services.common.telemetry).
_tracer = trace.get_tracer("registry.metadata")

# Columns are stored as signed 64-bit integers in both dialects.
_INT64_MAX = 2**63 - 1
# Version numbers are uint32 on the wire.
_UINT32_MAX = 2**32 - 1
# Bound on the parameters of one `IN (...)` list.
_IN_LIST_CHUNK = 500
# Rows a listing with no count reads at a time, until its reply is full.
_LISTING_BATCH = 1000

_VERSION_COLUMNS = "number, creation_timestamp, archived, data_hash, data_size, user_data"

UPDATE_MODEL = "UPDATE models SET user_data = ? WHERE model_id = ?"
# Only for a model UPDATE_MODEL did not find: an INSERT that turns into an
# update still consumes a position from the sequence, which would leave gaps
# in model positions (handles) at every update. The ON CONFLICT clause covers
# a concurrent creation by another writer.
INSERT_MODEL = (
    "INSERT INTO models (model_id, user_data, next_version) VALUES (?, ?, 0) "
    "ON CONFLICT (model_id) DO UPDATE SET user_data = excluded.user_data"
)
# An import creates a model only if it is missing, never changing an existing one.
INSERT_MODEL_IF_MISSING = (
    "INSERT INTO models (model_id, user_data, next_version) VALUES (?, ?, 0) ON CONFLICT (model_id) DO NOTHING"
)
# An imported number raises the counter, never lowers it.
RAISE_VERSION_COUNTER = (
    "UPDATE models SET next_version = CASE WHEN next_version < ? THEN ? ELSE next_version END WHERE seq = ?"
)
SELECT_MODEL = "SELECT seq, next_version FROM models WHERE model_id = ?"
SELECT_MODEL_INFO = "SELECT user_data FROM models WHERE model_id = ?"
LIST_MODELS = "SELECT seq, model_id, user_data FROM models WHERE seq > ? ORDER BY seq"
DELETE_MODEL = "DELETE FROM models WHERE seq = ?"
# Takes the model's row lock without changing it (portable `SELECT ... FOR
# UPDATE`): a deletion then waits for, or excludes, commits to the model.
LOCK_MODEL = "UPDATE models SET next_version = next_version WHERE model_id = ? RETURNING seq"
# Allocating the number and taking the model's row lock are one statement
# (under PostgreSQL this serialises concurrent commits to one model).
ALLOCATE_VERSION_NUMBER = (
    "UPDATE models SET next_version = next_version + 1 WHERE model_id = ? RETURNING seq, next_version"
)

SELECT_VERSION = f"SELECT {_VERSION_COLUMNS}, blob_key FROM versions WHERE model_seq = ? AND number = ?"
SELECT_NTH_LATEST_VERSION = (
    f"SELECT {_VERSION_COLUMNS}, blob_key FROM versions WHERE model_seq = ? "
    "ORDER BY number DESC LIMIT 1 OFFSET ?"
)
COUNT_VERSIONS = "SELECT COUNT(*) FROM versions WHERE model_seq = ?"
# One version of a model named by its id, in one statement (no transaction).
_VERSIONS_OF_MODEL_ID = (
    "SELECT v.number, v.creation_timestamp, v.archived, v.data_hash, v.data_size, v.user_data "
    "FROM models m JOIN versions v ON v.model_seq = m.seq WHERE m.model_id = ?"
)
ONE_VERSION_BY_MODEL_ID = _VERSIONS_OF_MODEL_ID + " AND v.number = ?"
NTH_LATEST_VERSION_BY_MODEL_ID = _VERSIONS_OF_MODEL_ID + " ORDER BY v.number DESC LIMIT 1 OFFSET ?"
LATEST_NUMBERS = "SELECT number FROM versions WHERE model_seq = ? ORDER BY number DESC LIMIT ?"
LIST_VERSIONS_FROM = f"SELECT {_VERSION_COLUMNS} FROM versions WHERE model_seq = ? AND number >= ? ORDER BY number"
LIST_VERSIONS_AFTER = (
    f"SELECT {_VERSION_COLUMNS} FROM versions WHERE model_seq = ? AND number > ? ORDER BY number LIMIT ?"
)
SELECT_VERSION_BY_BLOB = (
    f"SELECT m.model_id, {', '.join('v.' + c for c in _VERSION_COLUMNS.split(', '))} "
    "FROM versions v JOIN models m ON m.seq = v.model_seq WHERE v.blob_key = ?"
)
INSERT_VERSION = (
    "INSERT INTO versions (model_seq, number, creation_timestamp, archived, data_hash, data_size, "
    "user_data, blob_key, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Unless it is the most recently used already (its stamp is the latest):
# then the order does not change, and nothing is written.
TOUCH_VERSION = (
    "UPDATE versions SET last_used = ? WHERE model_seq = ? AND number = ? AND archived = FALSE AND last_used < ?"
)
SELECT_MODEL_BLOBS = "SELECT blob_key, archived FROM versions WHERE model_seq = ? ORDER BY number"
DELETE_MODEL_VERSIONS = "DELETE FROM versions WHERE model_seq = ?"
DELETE_VERSION = "DELETE FROM versions WHERE model_seq = ? AND number = ?"
SELECT_DATABASE_ID = "SELECT database_id FROM database_identity"
COUNT_VERSIONS_BY_TIER = (
    "SELECT COALESCE(SUM(CASE WHEN archived THEN 1 ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN archived THEN 0 ELSE 1 END), 0) FROM versions"
)
UPSERT_LEASE = (
    "INSERT INTO blobstore_leases (replica_id, slot, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (replica_id) DO UPDATE SET slot = excluded.slot, expires_at = excluded.expires_at"
)
SELECT_REPLACED_LEASES = "SELECT replica_id FROM blobstore_leases WHERE slot = ? AND replica_id <> ?"
SELECT_EXPIRED_LEASES = "SELECT replica_id FROM blobstore_leases WHERE expires_at < ?"
DELETE_LEASE = "DELETE FROM blobstore_leases WHERE replica_id = ?"
# Transient versions are few (the cache's budget): the pattern scans them only.
FORGET_HELD_VERSIONS = "DELETE FROM versions WHERE archived = FALSE AND blob_key LIKE ?"
FORGET_LOST_VERSION = "DELETE FROM versions WHERE blob_key = ? AND archived = FALSE"

# The transient LRU; `archived = FALSE` matches the partial index's predicate.
LATEST_TRANSIENT_USE = "SELECT COALESCE(MAX(last_used), 0) FROM versions WHERE archived = FALSE"
TRANSIENT_TOTALS = "SELECT COUNT(*), COALESCE(SUM(data_size), 0) FROM versions WHERE archived = FALSE"
TRANSIENT_BY_LAST_USE = (
    "SELECT model_seq, number, blob_key, data_size FROM versions WHERE archived = FALSE "
    "ORDER BY last_used, model_seq, number"
)


def apply_migrations(
    execute: Callable[[str, Sequence[Any]], Any],
    migrations: Sequence[Sequence[str]],
    description: str,
    placeholder: str,
) -> None:
    """Brings the schema to `len(migrations)`, inside the caller's
    transaction (each backend brings its own, and its own locking).

    `migrations[i]` migrates from version i to i + 1; a database newer than
    the code is refused rather than guessed at.
    """
    target = len(migrations)
    execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", ())
    row = execute("SELECT version FROM schema_version", ()).fetchone()
    current = row[0] if row is not None else 0
    if current > target:
        raise StoreOpenError(
            f"the metadata database {description} has schema version {current}, newer than the "
            f"{target} this service knows: run a newer metadata service"
        )
    for version in range(current, target):
        for statement in migrations[version]:
            execute(statement, ())
    if row is None:
        execute(f"INSERT INTO schema_version (version) VALUES ({placeholder})", (target,))
    elif current != target:
        execute(f"UPDATE schema_version SET version = {placeholder}", (target,))
    if current != target:
        log.info("metadata database %s migrated from schema %d to %d", description, current, target)


def _dump_user_data(user_data: Mapping[str, str]) -> str:
    return json.dumps(dict(user_data), sort_keys=True, separators=(",", ":"))


def _load_user_data(text: str) -> dict[str, str]:
    return json.loads(text)


def _version_from_row(model_id: str, row: Sequence[Any]) -> Version:
    """A `Version` from the first six columns of a row (`_VERSION_COLUMNS`)."""
    number, creation_timestamp, archived, data_hash, data_size, user_data = row[:6]
    return Version(
        model_id=model_id,
        number=number,
        creation_timestamp=creation_timestamp,
        archived=bool(archived),
        data_hash=data_hash,
        data_size=data_size,
        user_data=_load_user_data(user_data),
    )


def _plural_versions(count: int) -> str:
    if count == 0:
        return "no versions"
    return f"{count} version" if count == 1 else f"{count} versions"


class SqlMetadataStore(MetadataStore):
    """`MetadataStore` over a DB-API connection; see `base` for the contract.

    Not thread-safe: one store, one thread (the connection is not shared).
    """

    def __init__(self, connection: Any, budget: CacheBudget, limits: RequestLimits | None = None) -> None:
        self._connection = connection
        self._budget = budget
        measured = metrics.metadata()
        # write -> the series of its transactions (bound once: every call has one or two).
        self._measured = {
            write: (measured.database_seconds.labels(access), measured.database_errors.labels(access))
            for write, access in ((False, "read"), (True, "write"))
        }
        # Only the reply size is the store's business: the frontend checks the rest.
        self._limits = limits or RequestLimits()

    # Rows a listing without a count ("as many as fit a reply") reads per
    # query. A store serving reads on the event loop reads fewer, and has
    # the rest of a longer listing read where waiting is harmless
    # (`_next_listing_batch`).
    listing_batch_rows = _LISTING_BATCH

    def _next_listing_batch(self) -> None:
        """Called before a listing without a count reads a second batch of
        rows: a store that must not hold its thread for long raises
        `ReadDeferred` here."""

    # -- dialect hooks ---------------------------------------------------

    @abstractmethod
    def _begin(self, cursor: Cursor, *, write: bool) -> None:
        """Starts a transaction. What a write transaction reads then writes
        must not race with other writers: SQLite excludes them from the
        start; PostgreSQL relies on the row locks its writing statements take
        (ALLOCATE_VERSION_NUMBER, LOCK_MODEL), `_lock_transient_cache`, and
        the unique key on blob keys (`_is_duplicate_blob_key`)."""

    @abstractmethod
    def _end(self, cursor: Cursor, *, commit: bool) -> None:
        """Commits (durably) or rolls back the current transaction."""

    @abstractmethod
    def _largest_model_seq(self, cursor: Cursor) -> int:
        """The largest model position ever assigned (0 if none), including
        positions of models deleted since."""

    def _sql(self, statement: str) -> str:
        """`statement` in the driver's placeholder style (written with `?`)."""
        return statement

    def _lock_transient_cache(self, cursor: Cursor) -> None:
        """Makes the caller the only transaction that evicts or deletes
        versions until it ends, and lets it see every commit that released
        the lock before (so cache totals read afterwards are exact).

        Nothing to do where write transactions already exclude each other
        (SQLite); PostgreSQL takes a transaction-scoped lock.
        """

    def _announce_change(self, cursor: Cursor, model_id: str) -> None:
        """Tells other processes sharing the database, once the transaction
        commits, that `model_id` got a version or was deleted (their
        watchers re-read). Nothing to do where one process owns the database
        (SQLite): the registry wakes its own watchers."""

    def _is_duplicate_blob_key(self, error: Exception) -> bool:
        """Whether `error` is the unique constraint on `versions.blob_key`:
        a concurrent commit of the same key won the race. Never the case
        where write transactions exclude each other (SQLite), as the lookup
        by key then sees every earlier commit."""
        return False

    # -- plumbing ---------------------------------------------------------

    def check(self) -> None:
        with self._transaction(write=False) as cursor:
            cursor.execute("SELECT 1").fetchone()

    @contextmanager
    def _transaction(self, *, write: bool, single_statement: bool = False) -> Iterator[Cursor]:
        """A cursor in a transaction, committed at the end unless the block
        raises. `single_statement`: the block runs one read-only statement,
        which both databases run atomically on its own (autocommit), so no
        BEGIN and COMMIT are sent (two statements, two round trips to
        PostgreSQL, less)."""
        seconds, errors = self._measured[write]
        started = time.perf_counter()
        try:
            cursor = self._connection.cursor()
            try:
                if single_statement:
                    assert not write
                    yield cursor
                else:
                    self._begin(cursor, write=write)
                    try:
                        yield cursor
                    except BaseException:
                        self._end(cursor, commit=False)
                        raise
                    self._end(cursor, commit=True)
            finally:
                cursor.close()
        except Exception as exc:
            # A refused request (NotFound...) is an answer; anything else is the database failing.
            if not isinstance(exc, RegistryError):
                errors.inc()
            translated = self._database_error(exc)
            if translated is not None:
                raise translated from exc
            raise
        finally:
            seconds.observe(time.perf_counter() - started)

    def _database_error(self, exc: Exception) -> Exception | None:
        """What a database's own failure means to callers, where it means
        more than a failure (disk full, a lock held); None: raised as is."""
        return None

    def _execute(self, cursor: Cursor, statement: str, parameters: Sequence[Any] = ()) -> Cursor:
        cursor.execute(self._sql(statement), tuple(parameters))
        return cursor

    def _model_row(self, cursor: Cursor, model_id: str) -> tuple[int, int]:
        """(seq, last allocated version number) of a model, or NotFound."""
        row = self._execute(cursor, SELECT_MODEL, (model_id,)).fetchone()
        if row is None:
            raise model_not_found(model_id)
        return row[0], row[1]

    def _latest_transient_use(self, cursor: Cursor) -> int:
        (latest,) = self._execute(cursor, LATEST_TRANSIENT_USE).fetchone()
        return latest

    def _next_use_stamp(self, cursor: Cursor, latest: int | None = None) -> int:
        """A `last_used` value later than every one recorded (`latest`, read
        if not given): wall-clock nanoseconds, nudged forward when the clock
        stalls or steps back, so the LRU order is the order of use (and of
        insertion on ties)."""
        if latest is None:
            latest = self._latest_transient_use(cursor)
        return max(time.time_ns(), latest + 1)

    # -- models -------------------------------------------------------------

    def upsert_model(self, model: Model) -> None:
        require_model_id(model.model_id)
        user_data = _dump_user_data(model.user_data)
        with self._transaction(write=True) as cursor:
            if self._execute(cursor, UPDATE_MODEL, (user_data, model.model_id)).rowcount == 0:
                self._execute(cursor, INSERT_MODEL, (model.model_id, user_data))

    def delete_model(self, model_id: str) -> tuple[BlobRef, ...]:
        require_model_id(model_id)
        with self._transaction(write=True) as cursor:
            locked = self._execute(cursor, LOCK_MODEL, (model_id,)).fetchall()
            if not locked:
                raise model_not_found(model_id)
            ((seq,),) = locked
            # Deleting version rows while an eviction deletes some of them
            # (in another order) could deadlock: take the cache lock first.
            self._lock_transient_cache(cursor)
            blobs = tuple(
                BlobRef(key=key, archived=bool(archived))
                for key, archived in self._execute(cursor, SELECT_MODEL_BLOBS, (seq,)).fetchall()
            )
            self._execute(cursor, DELETE_MODEL_VERSIONS, (seq,))
            self._execute(cursor, DELETE_MODEL, (seq,))
            self._announce_change(cursor, model_id)
        return blobs

    def retrieve_models(self, model_ids: Sequence[str], count: int, handle: str) -> ModelPage:
        if not model_ids and not handle:
            page = self._first_models_page(count)
            if page is not None:
                return page
        with self._transaction(write=False) as cursor:
            if model_ids:
                return self._models_by_id(cursor, model_ids, count, handle)
            return self._list_models(cursor, count, handle)

    def _first_models_page(self, count: int) -> ModelPage | None:
        """The first page of the listing when one statement reads it all
        (a dozen models: what actors list), without BEGIN and COMMIT; None
        when the listing goes on past one batch of rows, for
        `_list_models` to read it in one transaction."""
        limit = count or self.listing_batch_rows
        with self._transaction(write=False, single_statement=True) as cursor:
            rows = self._execute(cursor, LIST_MODELS + " LIMIT ?", (0, limit)).fetchall()
        models: list[Model] = []
        page, _ = self._fill_models_page(rows, models, self._limits.reply_budget(), count, 0, limit)
        return page

    def _list_models(self, cursor: Cursor, count: int, handle: str) -> ModelPage:
        after = 0
        if handle:
            largest = self._largest_model_seq(cursor)
            after = parse_handle(handle, field="model_handle", low=0, high=largest, meaning="a model position")
        budget = self._limits.reply_budget()
        # count 0 ("no limit"): as many as one reply holds; the rows are
        # read a page's worth at a time, never the whole table.
        limit = count or self.listing_batch_rows
        models: list[Model] = []
        last_seq = after
        while True:
            if models:
                self._next_listing_batch()
            rows = self._execute(cursor, LIST_MODELS + " LIMIT ?", (last_seq, limit)).fetchall()
            page, last_seq = self._fill_models_page(rows, models, budget, count, last_seq, limit)
            if page is not None:
                return page

    def _fill_models_page(
        self, rows: Sequence[Any], models: list[Model], budget: ReplyBudget, count: int, last_seq: int, limit: int
    ) -> tuple[ModelPage | None, int]:
        """Adds a batch of model rows to `models`: (the page, if the listing
        ends with this batch, else None; the seq of the last model added)."""
        for seq, model_id, data in rows:
            user_data = _load_user_data(data)
            if not budget.take(listed_item_bytes(model_id, user_data)):
                if count:
                    raise reply_too_large("models", count, len(models), budget.max_bytes, field="models_count", paged=True)
                return ModelPage(models=tuple(models), next_handle=str(last_seq)), last_seq
            models.append(Model(model_id=model_id, user_data=user_data))
            last_seq = seq
        if count or len(rows) < limit:
            return ModelPage(models=tuple(models), next_handle=str(last_seq)), last_seq
        return None, last_seq

    def _models_by_id(self, cursor: Cursor, model_ids: Sequence[str], count: int, handle: str) -> ModelPage:
        offset = 0
        if handle:
            offset = parse_handle(
                handle,
                field="model_handle",
                low=0,
                high=len(model_ids),
                meaning=f"a position in the {len(model_ids)} model_ids requested",
            )
        selected = model_ids[offset : offset + count] if count else model_ids[offset:]
        for index, model_id in enumerate(selected, start=offset):
            require_model_id(model_id, f"model_ids[{index}]")
        # One query per batch of ids, not one per id.
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(selected))
        for start in range(0, len(unique), _IN_LIST_CHUNK):
            chunk = unique[start : start + _IN_LIST_CHUNK]
            statement = f"SELECT model_id, user_data FROM models WHERE model_id IN ({', '.join('?' * len(chunk))})"
            found.update(self._execute(cursor, statement, chunk).fetchall())
        budget = self._limits.reply_budget()
        models: list[Model] = []
        for model_id in selected:
            if model_id not in found:
                raise model_not_found(model_id)
            user_data = _load_user_data(found[model_id])
            if not budget.take(listed_item_bytes(model_id, user_data)):
                if count:
                    raise reply_too_large(
                        "models", len(selected), len(models), budget.max_bytes, field="models_count", paged=True
                    )
                break
            models.append(Model(model_id=model_id, user_data=user_data))
        return ModelPage(models=tuple(models), next_handle=str(offset + len(models)))

    # -- versions -------------------------------------------------------------

    def resolve_version_number(self, cursor: Cursor, model_id: str, model_seq: int, number: int) -> ResolvedVersion:
        """The one place where a requested version number becomes a version.

        n > 0 is that version; -k the k-th latest among the versions that
        exist now (-1: the latest). Anything else is NotFound, with a message
        saying what does exist.
        """
        if number > 0:
            row = self._execute(cursor, SELECT_VERSION, (model_seq, number)).fetchone()
            if row is None:
                _, last_allocated = self._model_row(cursor, model_id)
                why = (
                    "it was evicted from the transient version cache"
                    if number <= last_allocated
                    else f"the last version created is {last_allocated}"
                )
                raise NotFound(f"model {quoted(model_id)} has no version {number} ({why})")
        elif number < 0:
            row = self._execute(cursor, SELECT_NTH_LATEST_VERSION, (model_seq, -number - 1)).fetchone()
            if row is None:
                (existing,) = self._execute(cursor, COUNT_VERSIONS, (model_seq,)).fetchone()
                raise NotFound(f"model {quoted(model_id)} has {_plural_versions(existing)}, {number} is out of range")
        else:
            raise NotFound(
                f"model {quoted(model_id)} has no version 0: versions are numbered from 1, and -1 is the latest"
            )
        return ResolvedVersion(version=_version_from_row(model_id, row), blob_key=row[6])

    def retrieve_versions(self, model_id: str, numbers: Sequence[int], count: int, handle: str) -> VersionPage:
        require_model_id(model_id)
        if numbers:
            versions = self._one_existing_version(model_id, numbers[0]) if len(numbers) == 1 else None
            if versions is None:
                with self._transaction(write=False) as cursor:
                    seq, _ = self._model_row(cursor, model_id)
                    versions = self._versions_by_number(cursor, model_id, seq, numbers)
            budget = self._limits.reply_budget()
            for fitting, version in enumerate(versions):
                if not budget.take(listed_item_bytes(model_id, version.user_data)):
                    raise reply_too_large(
                        "versions", len(numbers), fitting, budget.max_bytes, field="version_numbers", paged=False
                    )
            return VersionPage(versions=versions, next_handle=str(versions[-1].number + 1))
        with self._transaction(write=False) as cursor:
            seq, last_allocated = self._model_row(cursor, model_id)
            start = 1
            if handle:
                start = parse_handle(
                    handle,
                    field="version_handle",
                    low=1,
                    high=last_allocated + 1,
                    meaning=f"a version number of model {quoted(model_id)}",
                )
            versions = self._list_versions(cursor, model_id, seq, start, count)
        next_handle = str(versions[-1].number + 1) if versions else str(start)
        return VersionPage(versions=versions, next_handle=next_handle)

    def _list_versions(self, cursor: Cursor, model_id: str, seq: int, start: int, count: int) -> tuple[Version, ...]:
        """Versions numbered from `start`: `count` of them (all must fit one
        reply), or with count 0 as many as fit one reply."""
        budget = self._limits.reply_budget()
        limit = count or self.listing_batch_rows
        versions: list[Version] = []
        while True:
            if versions:
                self._next_listing_batch()
            rows = self._execute(cursor, LIST_VERSIONS_FROM + " LIMIT ?", (seq, start, limit)).fetchall()
            for row in rows:
                version = _version_from_row(model_id, row)
                if not budget.take(listed_item_bytes(model_id, version.user_data)):
                    if count:
                        raise reply_too_large(
                            "versions", count, len(versions), budget.max_bytes, field="versions_count", paged=True
                        )
                    return tuple(versions)
                versions.append(version)
                start = version.number + 1
            if count or len(rows) < limit:
                return tuple(versions)

    def _one_existing_version(self, model_id: str, number: int) -> tuple[Version] | None:
        """Version `number` (n > 0, or -n from the latest) of the model in one
        statement (the question actors ask all the time: "which is the
        latest?"); None when there is no such version (or model), for the
        general path to say which is missing."""
        if number > 0:
            statement, parameters = ONE_VERSION_BY_MODEL_ID, (model_id, number)
        elif number < 0:
            statement, parameters = NTH_LATEST_VERSION_BY_MODEL_ID, (model_id, -number - 1)
        else:
            return None
        with self._transaction(write=False, single_statement=True) as cursor:
            row = self._execute(cursor, statement, parameters).fetchone()
        return None if row is None else (_version_from_row(model_id, row),)

    def _versions_by_number(
        self, cursor: Cursor, model_id: str, seq: int, numbers: Sequence[int]
    ) -> tuple[Version, ...]:
        """Each of `numbers` resolved as by `resolve_version_number` (n > 0,
        or -n from the latest), in request order, in a few queries whatever
        their count: the -n are located in one, the versions read in one per
        batch of numbers. The first one that does not exist is NotFound,
        worded as `resolve_version_number` words it."""
        deepest = max((-number for number in numbers if number < 0), default=0)
        latest: list[int] = []
        if deepest:
            rows = self._execute(cursor, LATEST_NUMBERS, (seq, deepest)).fetchall()
            latest = [number for (number,) in rows]
        wanted: list[int] = []
        for number in numbers:
            if number < 0 and -number <= len(latest):
                wanted.append(latest[-number - 1])
            elif number > 0:
                wanted.append(number)
        rows_by_number: dict[int, Sequence[Any]] = {}
        unique = list(dict.fromkeys(wanted))
        for start in range(0, len(unique), _IN_LIST_CHUNK):
            chunk = unique[start : start + _IN_LIST_CHUNK]
            statement = (
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE model_seq = ? "
                f"AND number IN ({', '.join('?' * len(chunk))})"
            )
            rows_by_number.update((row[0], row) for row in self._execute(cursor, statement, (seq, *chunk)).fetchall())
        versions = []
        for number in numbers:
            if number < 0 and -number <= len(latest):
                number = latest[-number - 1]
            row = rows_by_number.get(number) if number > 0 else None
            if row is None:
                # Raises the NotFound that says what exists.
                self.resolve_version_number(cursor, model_id, seq, number)
                raise AssertionError("unreachable")  # pragma: no cover - it exists after all
            versions.append(_version_from_row(model_id, row))
        return tuple(versions)

    def resolve_version(self, model_id: str, number: int, *, touch: bool) -> ResolvedVersion:
        require_model_id(model_id)
        with self._transaction(write=touch) as cursor:
            seq, _ = self._model_row(cursor, model_id)
            resolved = self.resolve_version_number(cursor, model_id, seq, number)
            if touch and not resolved.version.archived:
                # Every actor pulls the latest version after a push: all but
                # the first touch change nothing, so they write nothing. A
                # transaction that writes nothing commits no change, and the
                # public reads' reply caches stay valid (reply_cache.py).
                latest = self._latest_transient_use(cursor)
                stamp = self._next_use_stamp(cursor, latest)
                self._execute(cursor, TOUCH_VERSION, (stamp, seq, resolved.version.number, latest))
        return resolved

    def commit_version(self, draft: VersionDraft, blob_key: str) -> Commit:
        self._check_draft(draft, blob_key)
        attributes = {"model_id": draft.model_id, "archived": draft.archived, "data_size": draft.data_size}
        with _tracer.start_as_current_span("commit version", attributes=attributes) as span:
            try:
                commit = self._commit_version(draft, blob_key)
            except Exception as error:
                if not self._is_duplicate_blob_key(error):
                    raise
                # Another writer committed the same key between our lookup and
                # our insert (a retried commit reaching two replicas). Ours was
                # rolled back, number included; the lookup now finds theirs.
                span.add_event("concurrent commit of the same blob_key")
                commit = self._commit_version(draft, blob_key)
            span.set_attributes(
                {"version_number": commit.version.number, "created": commit.created, "evicted": len(commit.evicted)}
            )
        return commit

    def _commit_version(self, draft: VersionDraft, blob_key: str) -> Commit:
        """One attempt at `commit_version`, in one transaction."""
        with self._transaction(write=True) as cursor:
            existing = self._execute(cursor, SELECT_VERSION_BY_BLOB, (blob_key,)).fetchone()
            if existing is not None:
                version = _version_from_row(existing[0], existing[1:])
                if version.model_id != draft.model_id:
                    raise AlreadyExists(
                        f"blob_key {quoted(blob_key)} is already committed as version {version.number} "
                        f"of model {quoted(version.model_id)}, not of model {quoted(draft.model_id)}"
                    )
                return Commit(version=version, evicted=(), created=False)

            allocated = self._execute(cursor, ALLOCATE_VERSION_NUMBER, (draft.model_id,)).fetchall()
            if not allocated:
                raise model_not_found(draft.model_id)
            ((seq, number),) = allocated
            version = Version(
                model_id=draft.model_id,
                number=number,
                creation_timestamp=draft.creation_timestamp or time.time_ns(),
                archived=draft.archived,
                data_hash=draft.data_hash,
                data_size=draft.data_size,
                user_data=dict(draft.user_data),
            )
            self._execute(
                cursor,
                INSERT_VERSION,
                (
                    seq,
                    number,
                    version.creation_timestamp,
                    version.archived,
                    version.data_hash,
                    version.data_size,
                    _dump_user_data(version.user_data),
                    blob_key,
                    self._next_use_stamp(cursor),
                ),
            )
            evicted = self._evict(cursor, keep=(seq, number), transient=not version.archived)
            self._announce_change(cursor, draft.model_id)
        return Commit(version=version, evicted=evicted, created=True)

    def import_model(self, model: Model) -> tuple[Model, bool]:
        require_model_id(model.model_id)
        with self._transaction(write=True) as cursor:
            created = (
                self._execute(cursor, INSERT_MODEL_IF_MISSING, (model.model_id, _dump_user_data(model.user_data))).rowcount
                == 1
            )
            (user_data,) = self._execute(cursor, SELECT_MODEL_INFO, (model.model_id,)).fetchone()
        return Model(model_id=model.model_id, user_data=_load_user_data(user_data)), created

    def import_version(self, version: Version, blob_key: str) -> Commit:
        self._check_import(version, blob_key)
        attributes = {"model_id": version.model_id, "version_number": version.number, "data_size": version.data_size}
        with _tracer.start_as_current_span("import version", attributes=attributes) as span:
            try:
                commit = self._import_version(version, blob_key)
            except Exception as error:
                if not self._is_duplicate_blob_key(error):
                    raise
                span.add_event("concurrent import of the same blob_key")
                commit = self._import_version(version, blob_key)
            span.set_attribute("created", commit.created)
        return commit

    def _import_version(self, version: Version, blob_key: str) -> Commit:
        """One attempt at `import_version`, in one transaction."""
        with self._transaction(write=True) as cursor:
            existing = self._execute(cursor, SELECT_VERSION_BY_BLOB, (blob_key,)).fetchone()
            if existing is not None:  # a retry: this blob already is that version
                stored = _version_from_row(existing[0], existing[1:])
                if (stored.model_id, stored.number) != (version.model_id, version.number):
                    raise AlreadyExists(
                        f"blob_key {blob_key!r} is already committed as version {stored.number} "
                        f"of model {stored.model_id!r}"
                    )
                return Commit(version=stored, evicted=(), created=True)
            locked = self._execute(cursor, LOCK_MODEL, (version.model_id,)).fetchall()
            if not locked:
                raise model_not_found(version.model_id)
            ((seq,),) = locked
            row = self._execute(cursor, SELECT_VERSION, (seq, version.number)).fetchone()
            if row is not None:
                stored = _version_from_row(version.model_id, row)
                if (stored.data_hash, stored.data_size) == (version.data_hash, version.data_size):
                    return Commit(version=stored, evicted=(), created=False)
                raise AlreadyExists(
                    f"model {version.model_id!r} already has a version {version.number} with other data "
                    f"({stored.data_size} bytes, data_hash {stored.data_hash}, not {version.data_size} bytes, "
                    f"{version.data_hash}): nothing was imported"
                )
            self._execute(
                cursor,
                INSERT_VERSION,
                (
                    seq,
                    version.number,
                    version.creation_timestamp,
                    True,
                    version.data_hash,
                    version.data_size,
                    _dump_user_data(version.user_data),
                    blob_key,
                    self._next_use_stamp(cursor),
                ),
            )
            self._execute(cursor, RAISE_VERSION_COUNTER, (version.number, version.number, seq))
            self._announce_change(cursor, version.model_id)
        imported = dataclasses.replace(version, archived=True, user_data=dict(version.user_data))
        return Commit(version=imported, evicted=(), created=True)

    def _check_import(self, version: Version, blob_key: str) -> None:
        """Rejects an import that cannot succeed, before anything is written."""
        require_model_id(version.model_id, "version_info.model_id")
        if not blob_key:
            raise InvalidArgument("blob_key must not be empty")
        if not version.data_hash:
            raise InvalidArgument("an imported version needs its data_hash")
        if not 0 < version.number <= _UINT32_MAX:
            raise InvalidArgument(f"version_info.version_number {version.number} must be from 1 to {_UINT32_MAX}")
        for name, value in (("data_size", version.data_size), ("creation_timestamp", version.creation_timestamp)):
            if not 0 <= value <= _INT64_MAX:
                raise InvalidArgument(f"version_info.{name} {value} is out of range (0 to {_INT64_MAX})")

    def _check_draft(self, draft: VersionDraft, blob_key: str) -> None:
        """Rejects a commit that cannot succeed, before anything is written."""
        require_model_id(draft.model_id, "version_info.model_id")
        if not blob_key:
            raise InvalidArgument("blob_key must not be empty")
        if not draft.data_hash:
            raise InvalidArgument("version_info.data_hash must not be empty")
        for name, value in (("data_size", draft.data_size), ("creation_timestamp", draft.creation_timestamp)):
            if not 0 <= value <= _INT64_MAX:
                raise InvalidArgument(f"version_info.{name} {value} is out of range (0 to {_INT64_MAX})")
        check_version_fits_cache(archived=draft.archived, size=draft.data_size, max_bytes=self._budget.max_bytes)

    def _evict(self, cursor: Cursor, *, keep: tuple[int, int], transient: bool) -> tuple[BlobRef, ...]:
        """Deletes least-recently-used transient versions, except `keep`
        (model_seq, number, just inserted), until the cache budget holds.

        Totals are read under the cache lock: two concurrent commits that
        each counted only their own new version would both stop one short
        and together exceed the budget. An archived commit adds nothing to
        the cache, so it takes the lock only if the cache is over budget
        (the budget was lowered since the last commit).
        """
        if not transient and self._fits(*self._transient_totals(cursor)):
            return ()
        self._lock_transient_cache(cursor)
        count, size = self._transient_totals(cursor)
        if self._fits(count, size):
            return ()
        with _tracer.start_as_current_span("evict") as span:
            victims: list[tuple[int, int, str, int]] = []
            for model_seq, number, blob_key, data_size in self._execute(cursor, TRANSIENT_BY_LAST_USE):
                if self._fits(count, size):
                    break
                if (model_seq, number) == keep:
                    continue
                victims.append((model_seq, number, blob_key, data_size))
                count -= 1
                size -= data_size
            for model_seq, number, _, _ in victims:
                self._execute(cursor, DELETE_VERSION, (model_seq, number))
            span.set_attributes({"count": len(victims), "bytes": sum(victim[3] for victim in victims)})
        return tuple(BlobRef(key=blob_key, archived=False) for _, _, blob_key, _ in victims)

    def _transient_totals(self, cursor: Cursor) -> tuple[int, int]:
        """(count, bytes) of the transient versions."""
        count, size = self._execute(cursor, TRANSIENT_TOTALS).fetchone()
        return int(count), int(size)  # PostgreSQL sums BIGINTs as NUMERIC (Decimal)

    def cache_usage(self) -> CacheUsage:
        with self._transaction(write=False) as cursor:
            return CacheUsage(*self._transient_totals(cursor))

    def _fits(self, count: int, size: int) -> bool:
        """Whether `count` transient versions of `size` bytes fit the budget."""
        return count <= self._budget.max_items and size <= self._budget.max_bytes

    # -- watches ---------------------------------------------------------------

    def read_latest_version(self, model_id: str) -> VersionBatch:
        require_model_id(model_id)
        with self._transaction(write=False) as cursor:
            seq, _ = self._model_row(cursor, model_id)
            row = self._execute(cursor, SELECT_NTH_LATEST_VERSION, (seq, 0)).fetchone()
        versions = (_version_from_row(model_id, row),) if row is not None else ()
        return VersionBatch(model_seq=seq, versions=versions)

    def read_versions_after(self, model_id: str, after_number: int, limit: int) -> VersionBatch:
        require_model_id(model_id)
        with self._transaction(write=False) as cursor:
            seq, _ = self._model_row(cursor, model_id)
            rows = self._execute(cursor, LIST_VERSIONS_AFTER, (seq, after_number, limit)).fetchall()
        return VersionBatch(model_seq=seq, versions=tuple(_version_from_row(model_id, row) for row in rows))

    # -- blobs -------------------------------------------------------------------

    def find_unreferenced_blobs(self, keys: Sequence[str]) -> tuple[str, ...]:
        unique = list(dict.fromkeys(keys))
        referenced: set[str] = set()
        with self._transaction(write=False) as cursor:
            for start in range(0, len(unique), _IN_LIST_CHUNK):
                chunk = unique[start : start + _IN_LIST_CHUNK]
                statement = f"SELECT blob_key FROM versions WHERE blob_key IN ({', '.join('?' * len(chunk))})"
                referenced.update(key for (key,) in self._execute(cursor, statement, chunk))
        return tuple(key for key in unique if key not in referenced)

    def describe_database(self) -> DatabaseIdentity:
        with self._transaction(write=False) as cursor:
            (database_id,) = self._execute(cursor, SELECT_DATABASE_ID).fetchone()
            archived, transient = self._execute(cursor, COUNT_VERSIONS_BY_TIER).fetchone()
        return DatabaseIdentity(database_id, int(archived), int(transient))

    def renew_replica_lease(self, replica_id: str, slot: str, lease_seconds: float, now_ns: int) -> int:
        if not is_replica_id(replica_id):
            raise InvalidArgument(f"{quoted(replica_id)} is not a blobstore replica id (16 lowercase hex digits)")
        if not slot:
            raise InvalidArgument("slot must not be empty")
        with self._transaction(write=True) as cursor:
            gone = [row[0] for row in self._execute(cursor, SELECT_REPLACED_LEASES, (slot, replica_id)).fetchall()]
            if lease_seconds <= 0:
                gone.append(replica_id)
            else:
                expires_at = min(now_ns + int(lease_seconds * 1e9), _INT64_MAX)
                self._execute(cursor, UPSERT_LEASE, (replica_id, slot, expires_at))
            return self._forget_replicas(cursor, gone)

    def expire_replica_leases(self, now_ns: int) -> int:
        with self._transaction(write=True) as cursor:
            gone = [row[0] for row in self._execute(cursor, SELECT_EXPIRED_LEASES, (now_ns,)).fetchall()]
            return self._forget_replicas(cursor, gone)

    def _forget_replicas(self, cursor: Cursor, replica_ids: Sequence[str]) -> int:
        """Deletes the transient versions held by `replica_ids`, and their leases."""
        if not replica_ids:
            return 0
        # Deletes versions, as eviction does: under the same lock.
        self._lock_transient_cache(cursor)
        forgotten = 0
        for replica_id in replica_ids:
            forgotten += self._execute(cursor, FORGET_HELD_VERSIONS, (keys_held_by_pattern(replica_id),)).rowcount
            self._execute(cursor, DELETE_LEASE, (replica_id,))
        if forgotten:
            log.warning(
                "forgot %d transient versions held by blobstore replicas gone for good: %s",
                forgotten,
                ", ".join(replica_ids),
            )
        return forgotten

    def forget_lost_version(self, blob_key: str) -> bool:
        with self._transaction(write=True) as cursor:
            deleted = self._execute(cursor, FORGET_LOST_VERSION, (blob_key,)).rowcount
        return deleted > 0

    def close(self) -> None:
        self._connection.close()
