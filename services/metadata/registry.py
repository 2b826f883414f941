"""The metadata domain as the servicer uses it: async, serialised, observable.

Every write runs on one dedicated worker thread, one at a time: the
store's connection never crosses threads and writes never contend inside
this process. Commits and deletions notify the watch hub from that thread,
right after their transaction committed, so notifications follow commit
order and happen even when the caller that asked for the write has gone.
Store calls run in the caller's context (contextvars), so their spans are
children of the request's.

Reads take the same path, unless the registry has a reader: a second store
whose reads are cheap and never wait (SQLite under WAL, `SqliteReader`).
Reads then run right on the event loop thread: a small read costs less
than handing it to the worker thread and back (two thread switches, a
future and a wake-up of the loop). A read that began after a write
returned sees that write (read-your-writes). A read the reader cannot serve
without waiting (`ReadDeferred`) falls back to the worker thread.
PostgreSQL has no reader: its reads wait on the network.

When other processes write to the same database (PostgreSQL replicas), a
`ChangeFeed` wakes this process's watchers for their changes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from opentelemetry import trace

from services.common import metrics
from services.common.errors import NotFound, Unavailable
from services.metadata.errors import model_deleted, require_model_id
from services.metadata.records import (
    BlobRef,
    CacheUsage,
    Commit,
    DatabaseIdentity,
    Model,
    ModelPage,
    ResolvedVersion,
    Version,
    VersionBatch,
    VersionDraft,
    VersionPage,
    WatchStart,
)
from services.metadata.reply_cache import DataVersion, ReplyCache
from services.metadata.store.base import MetadataStore, ReadDeferred
from services.metadata.watch import VersionHub

log = logging.getLogger("registry.metadata")

T = TypeVar("T")

# Versions a watcher reads per store call: bounds its memory when it is far behind.
WATCH_BATCH_SIZE = 64

# The most items a read served on the event loop may ask for (see `_read`).
SMALL_READ = 100


def _is_small(count: int) -> bool:
    """Whether a listing of `count` items may be read on the event loop. A
    count of 0 ("as many as fit a reply") may: the reader reads a first
    batch of rows only, and defers a listing that goes on
    (`SqliteReader`)."""
    return count <= SMALL_READ


class ChangeFeed(Protocol):
    """Changes made by other processes sharing the database, fed to the hub."""

    async def start(self, hub: VersionHub) -> None:
        """Returns once every change committed from now on will reach `hub`."""

    async def close(self) -> None: ...


class _ReaderDataVersion:
    """The `DataVersion` of a reader that reads it without waiting (SQLite)."""

    def __init__(self, reader: MetadataStore) -> None:
        self._reader = reader

    async def current(self) -> int | None:
        return self._reader.data_version()

    async def close(self) -> None:
        pass  # the registry closes the reader


def _annotate(**attributes: str | int | bool) -> None:
    """Sets attributes on the current (server) span, if one is recording."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


class MetadataRegistry:
    """Models and versions (through a `MetadataStore`) plus version watches."""

    def __init__(
        self,
        store: MetadataStore,
        executor: ThreadPoolExecutor,
        loop: asyncio.AbstractEventLoop,
        *,
        watch_batch_size: int = WATCH_BATCH_SIZE,
        reader: MetadataStore | None = None,
        data_version: DataVersion | None = None,
        reply_cache_bytes: int = 0,
    ) -> None:
        """Use `open`; `store` must have been created on `executor`'s only
        thread, `reader` (if any) on the event loop's."""
        self._store = store
        self._reader = reader
        # The reply cache needs to know when the database changed: from
        # `data_version`, else from a reader that can tell without waiting.
        if data_version is None and reader is not None and reader.data_version() is not None:
            data_version = _ReaderDataVersion(reader)
        self._data_version = data_version
        self.reply_cache: ReplyCache | None = None
        if data_version is not None and reply_cache_bytes:
            self.reply_cache = ReplyCache(reply_cache_bytes, data_version)
        self._executor = executor
        self._loop = loop
        self._watch_batch_size = watch_batch_size
        self.hub = VersionHub()
        self._feed: ChangeFeed | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        open_store: Callable[[], MetadataStore],
        *,
        open_reader: Callable[[], MetadataStore] | None = None,
        feed: ChangeFeed | None = None,
        data_version: DataVersion | None = None,
        reply_cache_bytes: int = 0,
        watch_batch_size: int = WATCH_BATCH_SIZE,
    ) -> MetadataRegistry:
        """Opens the store (`open_store()`, on the worker thread), then the
        reader if given (`open_reader()`, on the loop thread: only reads that
        never wait may use it), then starts `feed` (other processes'
        changes) if given, and returns the registry. `reply_cache_bytes`
        (with `data_version`, or a reader that knows when the database
        changed): the size of the public reads' `reply_cache`; the registry
        closes `data_version`."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metadata-store")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, open_store)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        reader = None
        if open_reader is not None:
            try:
                reader = open_reader()
            except BaseException:
                await loop.run_in_executor(executor, store.close)
                executor.shutdown(wait=False)
                raise
        registry = cls(
            store,
            executor,
            loop,
            reader=reader,
            data_version=data_version,
            reply_cache_bytes=reply_cache_bytes,
            watch_batch_size=watch_batch_size,
        )
        if feed is not None:
            try:
                await feed.start(registry.hub)
            except BaseException:
                await registry.close()
                raise
            registry._feed = feed
        return registry

    async def close(self) -> None:
        """Ends watches with UNAVAILABLE, then closes the feed and the store."""
        if self._closed:
            return
        self._closed = True
        self.hub.close(Unavailable("the metadata service is shutting down, watch again"))
        if self._feed is not None:
            await self._feed.close()
        if self._data_version is not None:
            await self._data_version.close()
        if self._reader is not None:
            self._reader.close()
        await self._loop.run_in_executor(self._executor, self._store.close)
        self._executor.shutdown(wait=True)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        """Runs a store call on the worker thread, in the caller's context (its
        current span). A caller cancelled while the call is still queued also
        cancels the call (the executor drops it)."""
        if self._closed:
            raise Unavailable("the metadata service is shutting down")
        context = contextvars.copy_context()
        return await self._loop.run_in_executor(self._executor, context.run, function, *args)

    async def _read(self, call: Callable[[MetadataStore], T], *, small: bool = True) -> T:
        """Runs a read-only store call: `call(reader)` right here on the loop
        thread if there is a reader and the read is `small`, else (or if the
        reader would have to wait) `call(store)` on the worker thread.

        A big read (a listing without a small count, many ids or numbers)
        would hold the event loop, and every other call and watch with it,
        for as long as it takes: it waits its turn on the worker thread."""
        if self._reader is None or not small:
            return await self._run(call, self._store)
        if self._closed:
            raise Unavailable("the metadata service is shutting down")
        try:
            return call(self._reader)
        except ReadDeferred:
            return await self._run(call, self._store)

    async def check_store(self, timeout: float) -> None:
        """Raises unless the database answers a trivial query within
        `timeout` seconds (on the worker thread, behind any call in progress)."""
        # Not `asyncio.wait_for`: on Python 3.11 it returns normally when
        # cancelled in the step its result arrives, and a health follower
        # cancelled that way went on checking forever.
        async with asyncio.timeout(timeout):
            await self._run(self._store.check)

    def _notify(self, callback: Callable[[str], None], model_id: str) -> None:
        """Hands a hub notification from the worker thread to the loop."""
        try:
            self._loop.call_soon_threadsafe(callback, model_id)
        except RuntimeError:  # the loop is closed: nobody is watching any more
            pass

    # -- models -------------------------------------------------------------

    async def upsert_model(self, model: Model) -> None:
        _annotate(model_id=model.model_id)
        await self._run(self._store.upsert_model, model)

    async def delete_model(self, model_id: str) -> tuple[BlobRef, ...]:
        """Deletes the model; ends its watches; returns the blobs to delete."""
        _annotate(model_id=model_id)

        def delete() -> tuple[BlobRef, ...]:
            try:
                blobs = self._store.delete_model(model_id)
            except Unavailable:
                # Perhaps deleted after all (connection lost at COMMIT): the
                # woken watchers re-read and end if the model is gone.
                self._notify(self.hub.version_committed, model_id)
                raise
            self._notify(self.hub.model_deleted, model_id)
            return blobs

        blobs = await self._run(delete)
        _annotate(deleted_blobs=len(blobs))
        return blobs

    async def retrieve_models(self, model_ids: Sequence[str], count: int, handle: str) -> ModelPage:
        small = _is_small(count) and len(model_ids) <= SMALL_READ
        return await self._read(lambda store: store.retrieve_models(model_ids, count, handle), small=small)

    # -- versions -------------------------------------------------------------

    async def retrieve_versions(
        self, model_id: str, numbers: Sequence[int], count: int, handle: str
    ) -> VersionPage:
        _annotate(model_id=model_id)
        small = _is_small(count) if not numbers else len(numbers) <= SMALL_READ
        return await self._read(lambda store: store.retrieve_versions(model_id, numbers, count, handle), small=small)

    async def resolve_version(self, model_id: str, number: int, *, touch: bool) -> ResolvedVersion:
        _annotate(model_id=model_id, version_number=number, touch=touch)
        if touch:  # a write: it moves the version in the LRU order
            return await self._run(lambda: self._store.resolve_version(model_id, number, touch=True))
        return await self._read(lambda store: store.resolve_version(model_id, number, touch=False))

    async def commit_version(self, draft: VersionDraft, blob_key: str) -> Commit:
        """Commits a version and wakes its model's watchers."""
        _annotate(model_id=draft.model_id, archived=draft.archived, data_size=draft.data_size)
        commit = await self._run(self._commit_and_notify, draft, blob_key)
        metrics.metadata().evicted_versions.inc(len(commit.evicted))
        _annotate(version_number=commit.version.number, created=commit.created, evicted=len(commit.evicted))
        return commit

    def _commit_and_notify(self, draft: VersionDraft, blob_key: str) -> Commit:
        """Worker-thread half of `commit_version`."""
        try:
            commit = self._store.commit_version(draft, blob_key)
        except Unavailable:
            # Perhaps committed after all (connection lost at COMMIT); other
            # replicas hear of it from the database, this one must wake its
            # own watchers: a needless wake-up costs one read.
            self._notify(self.hub.version_committed, draft.model_id)
            raise
        if commit.created:
            self._notify(self.hub.version_committed, draft.model_id)
        return commit

    async def import_model(self, model: Model) -> tuple[Model, bool]:
        """Creates the model unless it exists; (the model as stored, created)."""
        _annotate(model_id=model.model_id)
        return await self._run(self._store.import_model, model)

    async def import_version(self, version: Version, blob_key: str) -> Commit:
        """Commits an imported version (its own number and timestamp) and
        wakes its model's watchers."""
        _annotate(model_id=version.model_id, version_number=version.number, data_size=version.data_size)

        def import_and_notify() -> Commit:
            try:
                commit = self._store.import_version(version, blob_key)
            except Unavailable:
                self._notify(self.hub.version_committed, version.model_id)  # perhaps committed after all
                raise
            if commit.created:
                self._notify(self.hub.version_committed, version.model_id)
            return commit

        commit = await self._run(import_and_notify)
        _annotate(created=commit.created)
        return commit

    async def cache_usage(self) -> CacheUsage:
        """What the transient version cache holds now."""
        return await self._read(lambda store: store.cache_usage())

    async def find_unreferenced_blobs(self, keys: Sequence[str]) -> tuple[str, ...]:
        # On the worker thread even with a reader: a sweep asks about
        # thousands of keys at once, too long a read to hold the loop for.
        return await self._run(self._store.find_unreferenced_blobs, keys)

    async def describe_database(self) -> DatabaseIdentity:
        # A count of every version: on the worker thread, as for sweeps.
        return await self._run(self._store.describe_database)

    async def renew_replica_lease(self, replica_id: str, slot: str, lease_seconds: float) -> int:
        return await self._run(self._store.renew_replica_lease, replica_id, slot, lease_seconds, time.time_ns())

    async def expire_replica_leases(self) -> int:
        return await self._run(self._store.expire_replica_leases, time.time_ns())

    async def forget_lost_version(self, blob_key: str) -> bool:
        return await self._run(self._store.forget_lost_version, blob_key)

    # -- watches ---------------------------------------------------------------

    async def watch_versions(
        self, model_id: str, after_version: int | None, model_incarnation: int = 0
    ) -> AsyncIterator[WatchStart | Version]:
        """A `WatchStart`, then committed versions of a model, in number
        order, until cancelled.

        after_version None: the latest existing version (if any), then each
        new one; N (0 included): every version numbered above N, then each
        new one. `model_incarnation` (if not 0) is the incarnation the
        caller follows: any other is NOT_FOUND "was deleted", as is the
        model's deletion while watched.
        """
        require_model_id(model_id)
        _annotate(model_id=model_id, after_version=-1 if after_version is None else after_version)
        # Subscribe BEFORE reading: a commit after this point wakes us, and
        # one before it is in what we read. No wake-up can be missed.
        with self.hub.subscribe(model_id) as subscription:
            try:
                if after_version is None:
                    batch = await self._read(lambda store: store.read_latest_version(model_id))
                    more_to_read = False
                else:
                    batch = await self._read(
                        lambda store: store.read_versions_after(model_id, after_version, self._watch_batch_size)
                    )
                    more_to_read = len(batch.versions) == self._watch_batch_size
            except NotFound:
                if model_incarnation:
                    raise model_deleted(model_id) from None
                raise
            model_seq = batch.model_seq
            if model_incarnation and model_seq != model_incarnation:
                # Deleted and re-created while the caller was away: its
                # numbers mean other versions now.
                raise model_deleted(model_id)
            if after_version is None:
                after_version = batch.versions[-1].number - 1 if batch.versions else 0
            yield WatchStart(model_incarnation=model_seq, after_version=after_version)
            last_sent = after_version
            while True:
                for version in batch.versions:
                    if version.number > last_sent:  # never send a number twice
                        last_sent = version.number
                        yield version
                if not more_to_read:
                    await subscription.wait()
                subscription.raise_if_ended()
                # Clear BEFORE reading: a commit that lands after the read
                # sets the flag again, so the next wait cannot sleep through it.
                subscription.clear()
                batch = await self._read_after(model_id, model_seq, last_sent)
                more_to_read = len(batch.versions) == self._watch_batch_size

    async def _read_after(self, model_id: str, model_seq: int, last_sent: int) -> VersionBatch:
        """The next versions of a watched model; NOT_FOUND "was deleted" if the
        model is gone or was re-created under the same id meanwhile."""
        try:
            batch = await self._read(
                lambda store: store.read_versions_after(model_id, last_sent, self._watch_batch_size)
            )
        except NotFound:
            raise model_deleted(model_id) from None
        if batch.model_seq != model_seq:
            raise model_deleted(model_id)
        return batch
