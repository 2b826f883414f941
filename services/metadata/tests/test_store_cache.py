"""The transient version cache: LRU eviction by count and by bytes."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from services.common.errors import ResourceExhausted
from services.metadata.records import BlobRef, CacheBudget, Model
from services.metadata.tests.helpers import commit, numbers


@pytest.fixture
def small_store(open_store):
    store = open_store(CacheBudget(max_items=3, max_bytes=100))
    for model_id in ("a", "b"):
        store.upsert_model(Model(model_id))
    return store


def test_eviction_by_count_removes_the_least_recently_used(small_store):
    for n in range(1, 4):
        assert commit(small_store, "a", key=f"a{n}").evicted == ()
    result = commit(small_store, "a", key="a4")
    assert result.version.number == 4
    assert result.evicted == (BlobRef("a1", archived=False),)
    assert numbers(small_store, "a") == [2, 3, 4]


def test_touch_moves_a_version_to_the_back_of_the_queue(small_store):
    for n in range(1, 4):
        commit(small_store, "a", key=f"a{n}")
    small_store.resolve_version("a", 1, touch=True)
    small_store.resolve_version("a", 2, touch=False)  # reading without touch changes nothing
    assert commit(small_store, "a", key="a4").evicted == (BlobRef("a2", archived=False),)
    assert commit(small_store, "a", key="a5").evicted == (BlobRef("a3", archived=False),)
    assert commit(small_store, "a", key="a6").evicted == (BlobRef("a1", archived=False),)


@pytest.fixture
def database_state(database):
    """What any commit changes: SQLite's change counter as another
    connection sees it, or PostgreSQL's current snapshot."""
    if database.is_postgres:
        connection = psycopg.connect(database.url, autocommit=True)
        query = "SELECT pg_current_snapshot()::text"
    else:
        connection = sqlite3.connect(database.path)
        query = "PRAGMA data_version"
    yield lambda: connection.execute(query).fetchone()[0]
    connection.close()


def test_touching_the_most_recently_used_version_keeps_the_order_and_writes_nothing(small_store, database_state):
    """The latest version, pulled by every actor after a push: its touches
    change no order, and commit no change (a change would empty every
    replica's reply cache)."""
    for n in range(1, 4):
        commit(small_store, "a", key=f"a{n}")
    small_store.resolve_version("a", 2, touch=True)  # order: 1, 3, 2
    before = database_state()
    for _ in range(3):
        small_store.resolve_version("a", 2, touch=True)
    assert database_state() == before
    small_store.resolve_version("a", 1, touch=True)  # a real change of order: 3, 2, 1
    assert database_state() != before
    assert commit(small_store, "a", key="a4").evicted == (BlobRef("a3", archived=False),)
    assert commit(small_store, "a", key="a5").evicted == (BlobRef("a2", archived=False),)


def test_listing_infos_does_not_count_as_use(small_store):
    for n in range(1, 4):
        commit(small_store, "a", key=f"a{n}")
    small_store.retrieve_versions("a", [1], 0, "")
    small_store.retrieve_versions("a", [], 0, "")
    assert commit(small_store, "a", key="a4").evicted == (BlobRef("a1", archived=False),)


def test_eviction_by_bytes(small_store):
    commit(small_store, "a", size=40, key="big-1")
    commit(small_store, "a", size=40, key="big-2")
    result = commit(small_store, "a", size=50, key="big-3")  # 130 > 100: evict until <= 100
    assert result.evicted == (BlobRef("big-1", archived=False),)
    result = commit(small_store, "a", size=100, key="huge")  # only room for itself
    assert set(result.evicted) == {BlobRef("big-2", False), BlobRef("big-3", False)}
    assert numbers(small_store, "a") == [4]


def test_the_cache_is_global_across_models(small_store):
    commit(small_store, "a", key="a1")
    commit(small_store, "b", key="b1")
    commit(small_store, "a", key="a2")
    assert commit(small_store, "b", key="b2").evicted == (BlobRef("a1", archived=False),)
    assert numbers(small_store, "a") == [2]
    assert numbers(small_store, "b") == [1, 2]


def test_archived_versions_are_never_evicted_and_do_not_count(small_store):
    for n in range(5):
        commit(small_store, "a", archived=True, size=1000, key=f"archived-{n}")
    for n in range(3):
        assert commit(small_store, "a", key=f"t{n}").evicted == ()
    assert commit(small_store, "a", key="t3").evicted == (BlobRef("t0", archived=False),)
    # Touching an archived version is harmless.
    small_store.resolve_version("a", 1, touch=True)
    assert numbers(small_store, "a") == [1, 2, 3, 4, 5, 7, 8, 9]


def test_an_oversized_transient_version_is_refused_without_side_effects(small_store):
    commit(small_store, "a", key="kept")
    with pytest.raises(
        ResourceExhausted,
        match=r"transient version of 101 bytes exceeds the version cache budget of 100 bytes "
        r"\(COGMENT_MODEL_REGISTRY_VERSION_CACHE_MAX_BYTES\); archive it instead",
    ):
        commit(small_store, "a", size=101, key="too-big")
    assert numbers(small_store, "a") == [1]  # nothing evicted
    assert small_store.find_unreferenced_blobs(["too-big"]) == ("too-big",)
    assert commit(small_store, "a").version.number == 2  # no number consumed
    # The same size archived is fine: archived data is not cached.
    assert commit(small_store, "a", size=101, archived=True).evicted == ()


def test_a_smaller_budget_at_reopening_applies_on_the_next_commit(open_store, db_path):
    store = open_store(CacheBudget(max_items=10, max_bytes=10**6))
    store.upsert_model(Model("a"))
    for n in range(5):
        commit(store, "a", key=f"k{n}")
    store.close()
    smaller = open_store(CacheBudget(max_items=2, max_bytes=10**6))
    result = commit(smaller, "a", key="k5")
    assert [ref.key for ref in result.evicted] == ["k0", "k1", "k2", "k3"]
    assert numbers(smaller, "a") == [5, 6]
