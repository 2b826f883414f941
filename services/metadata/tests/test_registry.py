"""The async layer: one store thread, notifications, watches without network."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from services.common.errors import NotFound, Unavailable
from services.metadata.records import Commit, Model
from services.metadata.registry import MetadataRegistry
from services.metadata.store.base import MetadataStore
from services.metadata.store.postgres import PostgresMetadataStore
from services.metadata.store.sqlite import SqliteMetadataStore
from services.metadata.tests.helpers import draft, new_blob_key, watch_versions


class Hooks:
    """Mixed into a store: records the threads it runs on and can run a hook
    (on the store thread) right after a watcher's read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.threads: set[str] = set()
        self.after_read: Callable[[MetadataStore], None] | None = None
        self.before_commit: Callable[[], None] | None = None

    def _run_hook(self) -> None:
        hook, self.after_read = self.after_read, None
        if hook is not None:
            hook(self)

    def read_latest_version(self, model_id):
        self.threads.add(threading.current_thread().name)
        batch = super().read_latest_version(model_id)
        self._run_hook()
        return batch

    def read_versions_after(self, model_id, after_number, limit):
        self.threads.add(threading.current_thread().name)
        batch = super().read_versions_after(model_id, after_number, limit)
        self._run_hook()
        return batch

    def commit_version(self, draft, blob_key):
        self.threads.add(threading.current_thread().name)
        if self.before_commit is not None:
            self.before_commit()
        return super().commit_version(draft, blob_key)


class HookedSqliteStore(Hooks, SqliteMetadataStore):
    pass


class HookedPostgresStore(Hooks, PostgresMetadataStore):
    pass


HookedStore = HookedSqliteStore | HookedPostgresStore


@pytest.fixture
async def registry(database):
    def open_store() -> HookedStore:
        return database.open(
            sqlite_class=HookedSqliteStore, postgres_class=HookedPostgresStore, close_at_end=False
        )

    registry = await MetadataRegistry.open(open_store, watch_batch_size=2)
    await registry.upsert_model(Model("m"))
    yield registry
    await registry.close()


def store_of(registry: MetadataRegistry) -> HookedStore:
    return registry._store  # type: ignore[return-value]


async def commit(registry: MetadataRegistry, model_id: str = "m") -> int:
    return (await registry.commit_version(draft(model_id), new_blob_key())).version.number


async def next_number(watch, timeout: float = 2.0) -> int:
    return (await asyncio.wait_for(anext(watch), timeout)).number


async def test_concurrent_commits_are_numbered_1_to_8_on_one_thread(registry):
    results = await asyncio.gather(*(commit(registry) for _ in range(8)))
    assert sorted(results) == list(range(1, 9))
    threads = store_of(registry).threads
    assert len(threads) == 1 and next(iter(threads)).startswith("metadata-store")


async def test_watch_from_zero_sends_the_latest_then_new_ones(registry):
    for _ in range(3):
        await commit(registry)
    watch = watch_versions(registry, "m")
    assert await next_number(watch) == 3
    for expected in (4, 5, 6, 7, 8):  # more than a batch (2) at a time is read in batches
        await commit(registry)
    assert [await next_number(watch) for _ in range(5)] == [4, 5, 6, 7, 8]
    await watch.aclose()
    assert registry.hub.subscriber_count() == 0


async def test_watch_catches_up_in_batches(registry):
    for _ in range(7):
        await commit(registry)
    watch = watch_versions(registry, "m", 2)
    assert [await next_number(watch) for _ in range(5)] == [3, 4, 5, 6, 7]
    await commit(registry)
    assert await next_number(watch) == 8
    await watch.aclose()


async def test_a_commit_right_after_the_first_read_is_not_missed(registry):
    """The commit lands after the watcher read the state and before it
    waits: only subscribing before reading catches it."""
    await commit(registry)
    loop = asyncio.get_running_loop()

    def commit_behind_the_watchers_back(store: MetadataStore) -> None:
        store.commit_version(draft("m"), new_blob_key())
        loop.call_soon_threadsafe(registry.hub.version_committed, "m")

    store_of(registry).after_read = commit_behind_the_watchers_back
    watch = watch_versions(registry, "m")
    assert await next_number(watch) == 1
    assert await next_number(watch) == 2
    await watch.aclose()


async def test_a_commit_right_after_a_later_read_is_not_missed(registry):
    """Same race on every later read: the flag must be cleared before reading."""
    await commit(registry)
    watch = watch_versions(registry, "m")
    assert await next_number(watch) == 1
    loop = asyncio.get_running_loop()

    def commit_behind_the_watchers_back(store: MetadataStore) -> None:
        store.commit_version(draft("m"), new_blob_key())
        loop.call_soon_threadsafe(registry.hub.version_committed, "m")

    store_of(registry).after_read = commit_behind_the_watchers_back
    await commit(registry)  # 2 wakes the watcher; 3 is committed right after it reads
    assert [await next_number(watch) for _ in range(2)] == [2, 3]
    await watch.aclose()


async def start_held_commit(registry: MetadataRegistry) -> tuple[asyncio.Future[Commit], threading.Event]:
    """Starts a commit to "m"; returns once it holds the store thread,
    waiting right before its transaction until the returned event is set
    (later commits are not held)."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(5)

    store_of(registry).before_commit = hold
    committer = asyncio.ensure_future(registry.commit_version(draft("m"), new_blob_key()))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    store_of(registry).before_commit = None
    return committer, release


async def test_watchers_are_woken_even_when_the_committer_gave_up(registry):
    """A commit whose caller is cancelled once it is running still commits,
    so its watchers must still hear of it."""
    watch = watch_versions(registry, "m")
    first = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.05)  # the watcher is waiting
    committer, release = await start_held_commit(registry)
    committer.cancel()
    release.set()
    assert (await asyncio.wait_for(first, 2)).number == 1
    await watch.aclose()


async def test_a_queued_call_is_dropped_when_its_caller_is_cancelled(registry):
    running, release = await start_held_commit(registry)
    queued = asyncio.ensure_future(registry.commit_version(draft("m"), new_blob_key()))
    await asyncio.sleep(0.01)
    queued.cancel()
    release.set()
    assert (await running).version.number == 1
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await commit(registry) == 2  # the cancelled commit never happened


async def test_deleting_the_model_ends_its_watches(registry):
    await commit(registry)
    watch = watch_versions(registry, "m")
    assert await next_number(watch) == 1
    await registry.delete_model("m")
    with pytest.raises(NotFound, match="model 'm' was deleted"):
        await next_number(watch)
    assert registry.hub.subscriber_count() == 0


async def test_a_model_re_created_under_a_watcher_ends_the_watch(registry):
    """The watcher is behind (not waiting) when the model is deleted and
    re-created: it must not continue on the new model's numbers."""
    for _ in range(3):
        await commit(registry)
    watch = watch_versions(registry, "m", 1)  # reads 2 and 3 (a full batch)
    assert await next_number(watch) == 2
    await registry.delete_model("m")
    await registry.upsert_model(Model("m"))
    await commit(registry)
    await commit(registry)
    await commit(registry)
    await commit(registry)
    assert await next_number(watch) == 3  # already read before the deletion
    with pytest.raises(NotFound, match="model 'm' was deleted"):
        await next_number(watch)


async def test_closing_ends_watches_and_refuses_calls(database):
    registry = await MetadataRegistry.open(lambda: database.open(close_at_end=False))
    await registry.upsert_model(Model("m"))
    watch = watch_versions(registry, "m")
    waiting = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.05)
    await registry.close()
    with pytest.raises(Unavailable, match="shutting down"):
        await asyncio.wait_for(waiting, 2)
    with pytest.raises(Unavailable):
        await registry.upsert_model(Model("x"))


async def test_a_model_replaced_by_another_writer_ends_the_watch(registry, database):
    """Another process deletes and re-creates the model (this hub hears of
    neither): the watcher must notice it is a different model, not stream
    the new model's versions as if they followed the old ones."""
    await commit(registry)
    watch = watch_versions(registry, "m")
    assert await next_number(watch) == 1
    other_writer = database.open()
    other_writer.delete_model("m")
    other_writer.upsert_model(Model("m"))
    for _ in range(3):
        other_writer.commit_version(draft("m"), new_blob_key())
    registry.hub.version_committed("m")
    with pytest.raises(NotFound, match="model 'm' was deleted"):
        await next_number(watch)


async def test_a_store_check_cancelled_as_the_database_answers_ends_cancelled(registry):
    """Wherever a cancel lands, even in the loop step that delivers the
    answer, the check raises CancelledError. One that returned instead kept
    the health follower of a stopping server checking forever (Python
    3.11's `asyncio.wait_for` swallows a cancel that coincides with the
    result)."""
    cancelled = 0
    for steps in range(12):
        check = asyncio.ensure_future(registry.check_store(timeout=5))
        await asyncio.sleep(0)  # submitted to the store thread
        time.sleep(0.05)  # the loop blocked: the store thread answers meanwhile
        for _ in range(steps):
            await asyncio.sleep(0)  # the answer travels one loop step further
        if check.cancel():
            cancelled += 1
            with pytest.raises(asyncio.CancelledError):
                await check
        else:
            await check
    assert cancelled > 0
