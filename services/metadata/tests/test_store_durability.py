"""What survives: reopening, kill -9, concurrent writers, schema versions.

Tests taking `open_store`, `store` or `database` run on both backends; the
others are about the SQLite file itself (PostgreSQL's own are in
test_store_postgres.py).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from services.metadata.errors import StoreOpenError
from services.metadata.records import CacheBudget, Model
from services.metadata.store.sqlite import SCHEMA_VERSION, SqliteMetadataStore
from services.metadata.tests.helpers import LARGE_BUDGET, commit, numbers


def test_the_database_and_its_directory_are_created(tmp_path):
    path = tmp_path / "deep" / "er" / "metadata.sqlite3"
    store = SqliteMetadataStore(path, LARGE_BUDGET)
    store.close()
    assert path.is_file()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_everything_survives_reopening(open_store):
    store = open_store()
    store.upsert_model(Model("m", {"k": "v"}))
    version = commit(store, "m", archived=True, key="archived").version
    store.close()
    reopened = open_store()
    assert reopened.retrieve_models([], 0, "").models == (Model("m", {"k": "v"}),)
    assert reopened.resolve_version("m", 1, touch=False).version == version
    assert reopened.retrieve_models([], 0, "").next_handle == "1"


def test_numbers_are_never_reused_after_eviction_nor_after_reopening(open_store):
    store = open_store(CacheBudget(max_items=1, max_bytes=10**6))
    store.upsert_model(Model("m"))
    for _ in range(3):
        commit(store, "m")
    assert numbers(store, "m") == [3]  # 1 and 2 evicted
    store.close()
    reopened = open_store(CacheBudget(max_items=1, max_bytes=10**6))
    assert commit(reopened, "m").version.number == 4
    assert numbers(reopened, "m") == [4]


def test_evicting_the_latest_version_does_not_lower_the_counter(open_store):
    store = open_store(CacheBudget(max_items=2, max_bytes=10**6))
    store.upsert_model(Model("a"))
    store.upsert_model(Model("b"))
    commit(store, "a")
    commit(store, "a")
    store.resolve_version("a", 1, touch=True)  # a/2 is now the least recently used
    commit(store, "b")  # the cache is global: evicts a/2, a's latest
    assert numbers(store, "a") == [1]
    assert store.retrieve_versions("a", [], 0, "3").next_handle == "3"  # 3 is still a valid handle
    assert commit(store, "a").version.number == 3
    store.close()
    assert commit(open_store(CacheBudget(max_items=2, max_bytes=10**6)), "a").version.number == 4


def test_model_positions_are_not_reused_after_reopening(open_store):
    store = open_store()
    store.upsert_model(Model("a"))
    store.upsert_model(Model("b"))
    store.delete_model("b")
    store.close()
    reopened = open_store()
    reopened.upsert_model(Model("c"))
    assert reopened.retrieve_models([], 0, "1").next_handle == "3"


def test_concurrent_commits_get_unique_gap_free_numbers(store, database):
    """8 writers on 8 connections (as 8 processes would be) commit at once: 1..8."""
    store.upsert_model(Model("m"))
    barrier = threading.Barrier(8)
    results: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        # sqlite3 connections belong to their thread: each opens its own.
        own = database.open(close_at_end=False)
        try:
            barrier.wait()
            results.append(commit(own, "m").version.number)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == list(range(1, 9))
    assert numbers(store, "m") == list(range(1, 9))


def test_acknowledged_commits_survive_kill_9(database):
    opening = (
        f"PostgresMetadataStore({database.url!r}, LARGE_BUDGET)"
        if database.is_postgres
        else f"SqliteMetadataStore(Path({str(database.path)!r}), LARGE_BUDGET)"
    )
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from services.metadata.records import Model
        from services.metadata.store.postgres import PostgresMetadataStore
        from services.metadata.store.sqlite import SqliteMetadataStore
        from services.metadata.tests.helpers import LARGE_BUDGET, draft

        store = {opening}
        store.upsert_model(Model("m"))
        for n in range(20):
            number = store.commit_version(draft("m", archived=True), f"key-{{n}}").version.number
            print(number, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert process.returncode == -9, process.stderr
    acknowledged = [int(line) for line in process.stdout.split()]
    assert acknowledged == list(range(1, 21))
    assert numbers(database.open(), "m") == acknowledged


def test_a_newer_schema_is_refused(db_path):
    SqliteMetadataStore(db_path, LARGE_BUDGET).close()
    with sqlite3.connect(db_path) as connection:
        connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreOpenError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        SqliteMetadataStore(db_path, LARGE_BUDGET)


def test_a_file_that_is_not_a_database_is_refused_naming_it(db_path):
    db_path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreOpenError, match=str(db_path)):
        SqliteMetadataStore(db_path, LARGE_BUDGET)


def test_failed_transactions_leave_nothing_behind(db_path):
    store = SqliteMetadataStore(db_path, LARGE_BUDGET)
    store.upsert_model(Model("m"))
    commit(store, "m", key="dup")
    # Make the insert itself fail after the number was allocated in the
    # same transaction: the allocation must be rolled back with it.
    store._connection.execute("CREATE TRIGGER boom BEFORE INSERT ON versions BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        commit(store, "m")
    store._connection.execute("DROP TRIGGER boom")
    assert not store._connection.in_transaction
    assert commit(store, "m").version.number == 2
    store.close()
