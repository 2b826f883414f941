"""A metadata database out of disk space: writes are RESOURCE_EXHAUSTED
(refused, nothing changed: the frontend must not take them for "perhaps
committed"), never INTERNAL; reads keep working; writes work again once
space is back, on the same connection."""

from __future__ import annotations

import pytest

from services.common.errors import ResourceExhausted
from services.metadata.records import Model
from services.metadata.store.sqlite import SqliteMetadataStore
from services.metadata.tests.helpers import LARGE_BUDGET, commit, numbers

BIG_USER_DATA = {"blob": "x" * 200_000}  # needs new pages


def test_sqlite_database_or_disk_is_full_is_resource_exhausted(tmp_path):
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite3", LARGE_BUDGET)
    try:
        store.upsert_model(Model("m"))
        commit(store, "m", archived=True)
        (pages,) = store._connection.execute("PRAGMA page_count").fetchone()
        # What a full disk does to SQLite: no page can be added.
        store._connection.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(ResourceExhausted, match="no disk space left.*nothing was changed"):
            store.upsert_model(Model("new", BIG_USER_DATA))
        with pytest.raises(ResourceExhausted):
            for _ in range(200):  # transient commits until one needs a page
                commit(store, "m", archived=False, size=1)
        count = len(numbers(store, "m"))
        # Reads work; the refused writes left nothing.
        assert store.retrieve_models([], 0, "").models == (Model("m"),)
        store._connection.execute("PRAGMA max_page_count = 1073741823")
        store.upsert_model(Model("new", BIG_USER_DATA))
        assert commit(store, "m").version.number == count + 1
    finally:
        store.close()


@pytest.fixture
def postgres_store(postgres_url):
    from services.metadata.store.postgres import PostgresMetadataStore

    store = PostgresMetadataStore(postgres_url, LARGE_BUDGET)
    yield store
    store.close()


@pytest.fixture
def pg_sql(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection.execute


# What PostgreSQL answers when it cannot extend a file: SQLSTATE 53100.
RAISE_DISK_FULL = """CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'could not extend file "base/16384/16385": No space left on device' USING ERRCODE = 'disk_full';
END $$"""


@pytest.mark.postgres
def test_postgres_disk_full_in_a_statement_is_resource_exhausted(postgres_store, pg_sql):
    postgres_store.upsert_model(Model("m"))
    pg_sql(RAISE_DISK_FULL)
    pg_sql("CREATE TRIGGER full_models BEFORE INSERT OR UPDATE ON models FOR EACH ROW EXECUTE FUNCTION disk_full()")
    with pytest.raises(ResourceExhausted, match="no disk space left.*No space left on device"):
        postgres_store.upsert_model(Model("new"))
    with pytest.raises(ResourceExhausted):
        commit(postgres_store, "m")  # allocating a number updates the model's row
    assert [model.model_id for model in postgres_store.retrieve_models([], 0, "").models] == ["m"]
    assert numbers(postgres_store, "m") == []
    pg_sql("DROP TRIGGER full_models ON models")
    postgres_store.upsert_model(Model("new"))
    assert commit(postgres_store, "m").version.number == 1


@pytest.mark.postgres
def test_postgres_disk_full_at_commit_is_resource_exhausted_and_nothing_committed(postgres_store, pg_sql):
    postgres_store.upsert_model(Model("m"))
    pg_sql(RAISE_DISK_FULL)
    # Fires at COMMIT: the "commit failed, connection still there" case.
    pg_sql(
        "CREATE CONSTRAINT TRIGGER full_at_commit AFTER INSERT ON versions DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION disk_full()"
    )
    with pytest.raises(ResourceExhausted):
        commit(postgres_store, "m", key="refused")
    assert numbers(postgres_store, "m") == []
    assert postgres_store.find_unreferenced_blobs(["refused"]) == ("refused",)
    pg_sql("DROP TRIGGER full_at_commit ON versions")
    # The refused commit consumed no number: it was rolled back whole.
    assert commit(postgres_store, "m").version.number == 1
