"""The database's identity: what the blobstore's sweeper checks before it
deletes anything (docs/design.md, "the sweeper's safety rules")."""

from __future__ import annotations

import sqlite3

from services.metadata.records import Model
from services.metadata.store.sqlite import SqliteMetadataStore
from services.metadata.tests.helpers import LARGE_BUDGET, commit


def test_the_identity_is_kept_across_reopening_and_counts_follow_versions(open_store):
    store = open_store()
    first = store.describe_database()
    assert len(first.database_id) == 32
    assert (first.archived_versions, first.transient_versions) == (0, 0)
    store.upsert_model(Model("m"))
    commit(store, "m", archived=True, key="a1")
    commit(store, "m", archived=True, key="a2")
    commit(store, "m", archived=False, key="t1")
    store.close()
    again = open_store().describe_database()
    assert again.database_id == first.database_id
    assert (again.archived_versions, again.transient_versions) == (2, 1)


def test_another_database_has_another_identity(tmp_path):
    one = SqliteMetadataStore(tmp_path / "one.sqlite3", LARGE_BUDGET)
    two = SqliteMetadataStore(tmp_path / "two.sqlite3", LARGE_BUDGET)
    try:
        assert one.describe_database().database_id != two.describe_database().database_id
    finally:
        one.close()
        two.close()


def test_a_database_of_the_previous_schema_gets_an_identity_when_migrated(tmp_path):
    path = tmp_path / "old.sqlite3"
    store = SqliteMetadataStore(path, LARGE_BUDGET)
    store.upsert_model(Model("m"))
    commit(store, "m", archived=True, key="a1")
    store.close()
    # Back to schema 1, as a database written before identities existed.
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE database_identity")
        connection.execute("DROP TABLE blobstore_leases")
        connection.execute("UPDATE schema_version SET version = 1")
    migrated = SqliteMetadataStore(path, LARGE_BUDGET)
    try:
        identity = migrated.describe_database()
        assert len(identity.database_id) == 32 and identity.archived_versions == 1
    finally:
        migrated.close()
