"""The PostgreSQL store as several replicas use it: schema start-up, races
between stores on separate connections (as separate processes would be),
lost connections.

The contract itself is tested on both backends by test_store_*.py.
"""

from __future__ import annotations

from contextlib import contextmanager

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import pytest

from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from services.metadata.errors import StoreOpenError
from services.metadata.records import CacheBudget, Commit, Model
from services.metadata.store.base import MetadataStore
from services.metadata.store.postgres import SCHEMA_VERSION, PostgresMetadataStore
from services.metadata.tests.helpers import LARGE_BUDGET, commit, draft, imported, new_blob_key, numbers

pytestmark = pytest.mark.postgres


@pytest.fixture
def open_replica(postgres_url) -> Callable[..., PostgresMetadataStore]:
    """Opens stores on the test's schema, each with its own connection."""
    opened: list[PostgresMetadataStore] = []

    def open_(budget: CacheBudget = LARGE_BUDGET, cls: type = PostgresMetadataStore) -> PostgresMetadataStore:
        store = cls(postgres_url, budget)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def sql(postgres_url):
    """Runs SQL in the test's schema on a connection of its own."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:

        def run(statement: str, parameters=()):
            cursor = connection.execute(statement, parameters)
            return cursor.fetchall() if cursor.description is not None else None

        run.connection = connection
        yield run


def run_together(*tasks: Callable[[], object]) -> list[object]:
    """Runs the tasks on as many threads, started at once; re-raises the
    first failure."""
    barrier = threading.Barrier(len(tasks))

    def start(task):
        barrier.wait()
        return task()

    with ThreadPoolExecutor(len(tasks)) as pool:
        return [future.result() for future in [pool.submit(start, task) for task in tasks]]


def wait_until_blocked(sql, pid: int, timeout: float = 5.0) -> None:
    """Waits until the backend `pid` waits for a lock."""
    deadline = time.monotonic() + timeout
    while not sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", (pid,)):
        assert time.monotonic() < deadline, "the store never waited for the lock"
        time.sleep(0.01)


# -- schema ------------------------------------------------------------------------


def test_the_schema_is_created_with_its_version(open_replica, sql):
    open_replica()
    assert sql("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    tables = {name for (name,) in sql("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert tables == {"schema_version", "models", "versions", "database_identity", "blobstore_leases"}


def test_replicas_starting_together_migrate_once(postgres_url, sql):
    stores = run_together(*[lambda: PostgresMetadataStore(postgres_url, LARGE_BUDGET)] * 6)
    for store in stores:
        store.close()
    assert sql("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused(open_replica, postgres_url, sql):
    open_replica()
    sql("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreOpenError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        PostgresMetadataStore(postgres_url, LARGE_BUDGET)


def test_an_unreachable_server_is_a_start_up_error_without_the_password():
    with pytest.raises(StoreOpenError, match=r"postgresql://registry@127\.0\.0\.1:1/registry") as error:
        PostgresMetadataStore("postgresql://registry:secret@127.0.0.1:1/registry?connect_timeout=2", LARGE_BUDGET)
    assert "secret" not in str(error.value)


def test_failed_transactions_leave_nothing_behind(open_replica, sql):
    store = open_replica()
    store.upsert_model(Model("m"))
    commit(store, "m")
    # The insert fails after the number was allocated in the same
    # transaction: the allocation must be rolled back with it.
    sql(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$;"
        "CREATE TRIGGER boom BEFORE INSERT ON versions FOR EACH ROW EXECUTE FUNCTION boom()"
    )
    with pytest.raises(psycopg.errors.RaiseException, match="boom"):
        commit(store, "m")
    sql("DROP TRIGGER boom ON versions")
    assert commit(store, "m").version.number == 2


def test_text_postgresql_cannot_store_is_invalid_argument(store_with_model):
    with pytest.raises(InvalidArgument, match="NUL"):
        store_with_model.upsert_model(Model("bad\x00id"))
    with pytest.raises(InvalidArgument, match="NUL"):
        store_with_model.commit_version(draft("m"), "key\x00")
    assert commit(store_with_model, "m").version.number == 1


@pytest.fixture
def store_with_model(open_replica) -> PostgresMetadataStore:
    store = open_replica()
    store.upsert_model(Model("m"))
    return store


# -- replicas racing ------------------------------------------------------------------


def test_concurrent_commits_from_several_replicas_are_numbered_1_to_n(open_replica):
    replicas = [open_replica() for _ in range(4)]
    replicas[0].upsert_model(Model("m"))

    def commit_many(store: PostgresMetadataStore) -> Callable[[], list[int]]:
        return lambda: [commit(store, "m", archived=True).version.number for _ in range(25)]

    results = run_together(*(commit_many(store) for store in replicas))
    assert sorted(number for numbers_ in results for number in numbers_) == list(range(1, 101))
    for received in results:
        assert received == sorted(received)  # each replica sees its numbers grow
    assert numbers(replicas[1], "m") == list(range(1, 101))


@pytest.mark.parametrize(
    "budget",
    [CacheBudget(max_items=5, max_bytes=10**9), CacheBudget(max_items=50, max_bytes=500)],
    ids=["by-count", "by-bytes"],
)
def test_concurrent_eviction_by_several_replicas_keeps_the_budget_and_loses_nothing(
    open_replica, sql, postgres_url, budget
):
    replicas = [open_replica(budget) for _ in range(3)]
    for model_id in ("a", "b", "c"):
        replicas[0].upsert_model(Model(model_id))
    largest = 100
    committed: dict[str, Commit] = {}
    lock = threading.Lock()
    done = threading.Event()
    worst = [0, 0]

    def writer(store: PostgresMetadataStore, seed: int) -> Callable[[], None]:
        rng = random.Random(seed)

        def run() -> None:
            for n in range(40):
                key = new_blob_key()
                result = commit(
                    store, rng.choice("abc"), archived=n % 7 == 0, size=rng.randint(1, largest), key=key
                )
                with lock:
                    committed[key] = result

        return run

    def monitor() -> None:
        # Committed state, as any reader sees it, must fit at every moment.
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            while not done.is_set():
                count, size = connection.execute(
                    "SELECT COUNT(*), COALESCE(SUM(data_size), 0) FROM versions WHERE NOT archived"
                ).fetchone()
                worst[0], worst[1] = max(worst[0], count), max(worst[1], size)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    try:
        run_together(*(writer(store, seed) for seed, store in enumerate(replicas)))
    finally:
        done.set()
        watcher.join()

    assert worst[0] <= budget.max_items and worst[1] <= budget.max_bytes
    present = {key: archived for key, archived in sql("SELECT blob_key, archived FROM versions")}
    evicted = [ref.key for result in committed.values() for ref in result.evicted]
    assert len(evicted) == len(set(evicted)), "a version was reported evicted twice"
    archived = {key for key, result in committed.items() if result.version.archived}
    assert archived <= set(present), "an archived version was evicted"
    # Every version is present, or gone and reported (its blob gets deleted).
    assert set(evicted) == set(committed) - set(present)
    # Nothing was evicted beyond need: the last eviction stopped as soon as
    # the cache fitted, and later commits only added to it.
    count, size = sql("SELECT COUNT(*), SUM(data_size) FROM versions WHERE NOT archived")[0]
    assert count == budget.max_items or size > budget.max_bytes - largest


def test_commits_touches_and_deletions_on_two_replicas_do_not_deadlock(open_replica, caplog):
    """Evictions, touches and a model's deletion all lock rows of `versions`,
    each in its own order (an eviction in LRU order, here the reverse of
    the deletion's); commits and deletions lock the model's row too.
    Without one lock order PostgreSQL detects deadlocks (after
    deadlock_timeout) and aborts a transaction, which the store retries,
    with a warning."""
    budget = CacheBudget(max_items=100, max_bytes=100)
    one, two = open_replica(budget), open_replica(budget)
    one.upsert_model(Model("a"))
    deadline = time.monotonic() + 2

    def ignoring_deletion(call: Callable[[], object]) -> None:
        try:
            call()
        except NotFound:
            pass  # "b" is being deleted and re-created

    def commits_and_touches() -> None:
        while time.monotonic() < deadline:
            commit(one, "a", size=100)  # evicts every other version at once
            ignoring_deletion(lambda: commit(one, "b", size=10))
            ignoring_deletion(lambda: one.resolve_version("b", -1, touch=True))

    def deletions() -> None:
        while time.monotonic() < deadline:
            two.upsert_model(Model("b"))
            for _ in range(4):
                commit(two, "b", size=10)
            for number in range(4, 0, -1):  # LRU order: the reverse of number order
                ignoring_deletion(lambda: two.resolve_version("b", number, touch=True))
            two.delete_model("b")

    with caplog.at_level(logging.WARNING, logger="registry.metadata"):
        run_together(commits_and_touches, deletions)
    assert not [record for record in caplog.records if "deadlock" in record.getMessage()]


def test_racing_commits_of_one_blob_key_create_one_version(open_replica):
    """A retried commit reaching two replicas at once: one version per key,
    the same answer to both, and no number wasted."""
    one, two = open_replica(), open_replica()
    one.upsert_model(Model("m"))
    keys = [new_blob_key() for _ in range(30)]

    def commit_all(store: PostgresMetadataStore) -> Callable[[], list[Commit]]:
        return lambda: [store.commit_version(draft("m"), key) for key in keys]

    first, second = run_together(commit_all(one), commit_all(two))
    for a, b in zip(first, second):
        assert a.version == b.version
        assert a.created != b.created
    assert numbers(one, "m") == list(range(1, 31))


def start_another_commit(sql, model_id: str, blob_key: str) -> int:
    """Another replica's commit of `blob_key` as the next version of
    `model_id`, on the `sql` connection: inserted, not yet committed.
    Returns its number."""
    other = sql.connection
    other.execute("BEGIN")
    ((seq, number),) = other.execute(
        "UPDATE models SET next_version = next_version + 1 WHERE model_id = %s RETURNING seq, next_version",
        (model_id,),
    ).fetchall()
    other.execute("INSERT INTO versions VALUES (%s, %s, 1, TRUE, 'h', 1, '{}', %s, 1)", (seq, number, blob_key))
    return number


def commit_behind_the_other(store: PostgresMetadataStore, sql, blob_key: str) -> Commit:
    """Commits `blob_key` to model "m" while `start_another_commit` is in
    flight: once the store waits for it (on the model's row lock, or on the
    key's unique index entry), the other commits. The store's answer."""
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(store.commit_version, draft("m", archived=True), blob_key)
        wait_until_blocked(sql, store.backend_pid)
        sql.connection.execute("COMMIT")
        return pending.result(timeout=5)


def test_losing_the_race_on_a_blob_key_returns_the_winners_version(open_replica, sql):
    """Deterministic version of the race: the other replica has inserted the
    key but not committed when this one looks it up."""
    store = open_replica()
    store.upsert_model(Model("m"))
    number = start_another_commit(sql, "m", "contested")
    result = commit_behind_the_other(store, sql, "contested")
    assert not result.created and result.version.number == number == 1
    assert commit(store, "m").version.number == 2  # the loser's number was rolled back


def test_losing_the_race_on_a_blob_key_to_another_model_is_already_exists(open_replica, sql):
    store = open_replica()
    store.upsert_model(Model("m"))
    store.upsert_model(Model("other"))
    start_another_commit(sql, "other", "contested")
    with pytest.raises(AlreadyExists, match="already committed as version 1 of model 'other'"):
        commit_behind_the_other(store, sql, "contested")
    assert commit(store, "m").version.number == 1


# -- lost connections -------------------------------------------------------------------


def terminate(sql, pid: int) -> None:
    assert sql("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]


def test_a_connection_lost_while_idle_is_replaced_and_the_call_made(store_with_model, sql):
    before = store_with_model.backend_pid
    terminate(sql, before)
    assert commit(store_with_model, "m").version.number == 1
    assert store_with_model.backend_pid not in (None, before)


class DyingStore(PostgresMetadataStore):
    """Loses its connection (the server ends it) at a chosen point, once;
    counts the transactions it begins."""

    die_after_begin = False
    die_before_commit = False
    die_mid_transaction = False
    notice_at_commit = False
    killer: Callable[[int], None]
    transactions_begun = 0

    def _begin(self, cursor, *, write):
        self.transactions_begun += 1
        super()._begin(cursor, write=write)
        if self.die_after_begin:
            self.die_after_begin = False
            self.killer(self.backend_pid)

    @contextmanager
    def _transaction(self, *, write, single_statement=False):
        if single_statement:
            # A read of one statement sends no BEGIN or COMMIT: the
            # connection is lost where they would be, before its statement.
            self.transactions_begun += 1
            if self.die_after_begin or self.die_before_commit:
                self.die_after_begin = self.die_before_commit = False
                self.killer(self.backend_pid)
        with super()._transaction(write=write, single_statement=single_statement) as cursor:
            yield cursor

    def _next_use_stamp(self, cursor, latest=None):
        if self.die_mid_transaction:
            self.die_mid_transaction = False
            self.killer(self.backend_pid)
        return super()._next_use_stamp(cursor, latest)

    def _end(self, cursor, *, commit):
        if commit and self.die_before_commit:
            self.die_before_commit = False
            self.killer(self.backend_pid)
        if commit and self.notice_at_commit:
            # What the driver raises when the server's "terminating
            # connection" notice is read before the socket is seen closed.
            self.notice_at_commit = False
            self._committing = True
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
        return super()._end(cursor, commit=commit)


@pytest.fixture
def dying_store(open_replica, sql) -> DyingStore:
    store = open_replica(cls=DyingStore)
    store.killer = lambda pid: terminate(sql, pid)
    store.upsert_model(Model("m"))
    return store


def test_a_transaction_cut_before_commit_is_retried_once(dying_store):
    dying_store.die_mid_transaction = True
    result = dying_store.commit_version(draft("m"), "k")
    assert result.created and result.version.number == 1
    assert numbers(dying_store, "m") == [1]


def test_a_write_cut_at_commit_is_unavailable_as_its_outcome_is_unknown(dying_store):
    dying_store.die_before_commit = True
    with pytest.raises(Unavailable, match="may or may not have been made"):
        dying_store.commit_version(draft("m"), "k")
    # (Here the server ended the session before COMMIT: nothing was made.)
    assert numbers(dying_store, "m") == []
    assert dying_store.commit_version(draft("m"), "k").version.number == 1


def test_a_read_cut_at_commit_is_retried(dying_store):
    commit(dying_store, "m")
    dying_store.die_before_commit = True
    assert numbers(dying_store, "m") == [1]


def test_a_termination_notice_at_commit_counts_as_a_lost_connection(dying_store):
    # The connection still looks open: the SQLSTATE (57P01) says it is not.
    dying_store.notice_at_commit = True
    with pytest.raises(Unavailable, match="may or may not have been made"):
        dying_store.commit_version(draft("m"), "k")
    commit(dying_store, "m")
    dying_store.notice_at_commit = True
    assert numbers(dying_store, "m") == [1]  # a read is retried on a new connection


def test_an_unreachable_database_makes_calls_unavailable(store_with_model, sql):
    store_with_model._url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"  # the server "went away"
    terminate(sql, store_with_model.backend_pid)
    with pytest.raises(Unavailable, match="cannot reach the metadata database"):
        store_with_model.retrieve_models([], 0, "")
    with pytest.raises(Unavailable):
        commit(store_with_model, "m")



# -- a lost connection, for each call of the contract ------------------------------------


@dataclass(frozen=True)
class ContractCall:
    """How the test below calls one method of the contract, on a store
    holding model "m" with one transient version stored under LOST_KEY."""

    make: Callable[[PostgresMetadataStore], object]
    writes: bool  # in a write transaction: a COMMIT left unanswered may have committed


LOST_KEY = "lost-key"
CONTRACT_CALLS: dict[str, ContractCall] = {
    "upsert_model": ContractCall(lambda store: store.upsert_model(Model("m", {"k": "v"})), writes=True),
    "delete_model": ContractCall(lambda store: store.delete_model("m"), writes=True),
    "retrieve_models": ContractCall(lambda store: store.retrieve_models([], 0, ""), writes=False),
    "retrieve_versions": ContractCall(lambda store: store.retrieve_versions("m", [], 0, ""), writes=False),
    "resolve_version": ContractCall(lambda store: store.resolve_version("m", -1, touch=True), writes=True),
    "commit_version": ContractCall(lambda store: commit(store, "m"), writes=True),
    "read_latest_version": ContractCall(lambda store: store.read_latest_version("m"), writes=False),
    "read_versions_after": ContractCall(lambda store: store.read_versions_after("m", 0, 10), writes=False),
    "find_unreferenced_blobs": ContractCall(
        lambda store: store.find_unreferenced_blobs([LOST_KEY, "unknown"]), writes=False
    ),
    "forget_lost_version": ContractCall(lambda store: store.forget_lost_version(LOST_KEY), writes=True),
    "check": ContractCall(lambda store: store.check(), writes=False),
    "import_model": ContractCall(lambda store: store.import_model(Model("imported")), writes=True),
    "import_version": ContractCall(lambda store: store.import_version(imported("m", 7), new_blob_key()), writes=True),
    "cache_usage": ContractCall(lambda store: store.cache_usage(), writes=False),
    "describe_database": ContractCall(lambda store: store.describe_database(), writes=False),
    "renew_replica_lease": ContractCall(
        lambda store: store.renew_replica_lease("0123456789abcdef", "a:1", 30, 0), writes=True
    ),
    "expire_replica_leases": ContractCall(lambda store: store.expire_replica_leases(0), writes=True),
}
# From the contract itself, so that a method added to it gets its cases
# here (which fail until CONTRACT_CALLS says how to call it). `close` must
# not reconnect.
CONTRACT_METHODS = sorted(MetadataStore.__abstractmethods__ - {"close"})


@pytest.mark.parametrize("method", CONTRACT_METHODS)
@pytest.mark.parametrize("moment", ["while-idle", "after-begin", "before-commit"])
def test_each_call_survives_a_lost_connection_or_is_unavailable(dying_store, sql, method, moment):
    """Retried once on a new connection, unless the lost connection was a
    write's COMMIT (the outcome is unknown): then `Unavailable`. Never a
    driver error, which the service would answer as INTERNAL."""
    call = CONTRACT_CALLS.get(method)
    assert call is not None, f"say in CONTRACT_CALLS how to call {method}"
    commit(dying_store, "m", key=LOST_KEY)
    before = dying_store.backend_pid
    dying_store.transactions_begun = 0
    if moment == "while-idle":
        terminate(sql, before)
    dying_store.die_after_begin = moment == "after-begin"
    dying_store.die_before_commit = moment == "before-commit"
    if moment == "before-commit" and call.writes:
        with pytest.raises(Unavailable, match="may or may not have been made"):
            call.make(dying_store)
        assert dying_store.transactions_begun == 1
    else:
        call.make(dying_store)
        assert dying_store.transactions_begun == 2  # the one retry
    dying_store.check()
    assert dying_store.backend_pid not in (None, before)
