"""Reads served on the event loop thread (`SqliteReader`), and the request
log line every call leaves (services.common.grpc_server)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from registry import metadata_pb2 as pb

from services.common.errors import NotFound, Unavailable
from services.common.grpc_server import RequestInterceptor
from services.common.service_names import METADATA
from services.metadata.errors import StoreOpenError
from services.metadata.records import Model
from services.metadata.registry import MetadataRegistry
from services.metadata.store.base import ReadDeferred
from services.metadata.store.sqlite import READER_LISTING_ROWS, SqliteMetadataStore, SqliteReader
from services.metadata.tests.helpers import LARGE_BUDGET, draft, new_blob_key, watch_versions


class ThreadRecording:
    """Mixed into a store: records the thread of each read and write."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[tuple[str, str]] = []

    def _record(self, call: str) -> None:
        self.threads.append((call, threading.current_thread().name))

    def retrieve_models(self, model_ids, count, handle):
        self._record("retrieve_models")
        return super().retrieve_models(model_ids, count, handle)

    def retrieve_versions(self, model_id, numbers, count, handle):
        self._record("retrieve_versions")
        return super().retrieve_versions(model_id, numbers, count, handle)

    def resolve_version(self, model_id, number, *, touch):
        self._record(f"resolve_version touch={touch}")
        return super().resolve_version(model_id, number, touch=touch)

    def read_latest_version(self, model_id):
        self._record("read_latest_version")
        return super().read_latest_version(model_id)

    def commit_version(self, draft, blob_key):
        self._record("commit_version")
        return super().commit_version(draft, blob_key)


class RecordingStore(ThreadRecording, SqliteMetadataStore):
    pass


class RecordingReader(ThreadRecording, SqliteReader):
    """A reader that can be told to defer its next reads, as it does when
    another process holds the database exclusively."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.busy_reads = 0

    def _execute(self, cursor, statement, parameters=()):
        # Where SQLite says it: at a read's first statement (BEGIN is not
        # sent for a read of one statement).
        if self.busy_reads:
            self.busy_reads -= 1
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise busy
        return super()._execute(cursor, statement, parameters)


@pytest.fixture
async def registry(db_path: Path):
    registry = await MetadataRegistry.open(
        lambda: RecordingStore(db_path, LARGE_BUDGET),
        open_reader=lambda: RecordingReader(db_path, LARGE_BUDGET),
    )
    await registry.upsert_model(Model("m"))
    yield registry
    await registry.close()


async def test_big_reads_run_on_the_store_thread_not_the_loop(registry):
    """Many ids or numbers, or a listing without a count that goes on past
    the reader's batch, could hold the event loop for long: they run on the
    store thread (a long listing after the reader read its first batch)."""
    await registry.commit_version(draft("m"), new_blob_key())
    for index in range(READER_LISTING_ROWS):
        await registry.upsert_model(Model(f"more-{index}"))
    page = await registry.retrieve_models([], 0, "")
    assert len(page.models) == READER_LISTING_ROWS + 1
    await registry.retrieve_models(["m"] * 101, 0, "")
    await registry.retrieve_versions("m", [1] * 101, 0, "")
    assert [call for call, _ in registry._reader.threads] == ["retrieve_models"]  # deferred after one batch
    assert [call for call, _ in registry._store.threads][-3:] == [
        "retrieve_models",
        "retrieve_models",
        "retrieve_versions",
    ]


async def test_a_short_listing_without_a_count_runs_on_the_loop(registry):
    """The common listing (a dozen models, a model's versions) costs no
    thread hand-off: it ends within the reader's first batch."""
    await registry.commit_version(draft("m"), new_blob_key())
    before = len(registry._store.threads)
    assert len((await registry.retrieve_models([], 0, "")).models) == 1
    assert len((await registry.retrieve_versions("m", [], 0, "")).versions) == 1
    assert [call for call, _ in registry._reader.threads] == ["retrieve_models", "retrieve_versions"]
    assert len(registry._store.threads) == before


def threads_of(store) -> set[str]:
    return {thread for _, thread in store.threads}


async def test_reads_run_on_the_loop_thread_and_writes_on_the_store_thread(registry):
    loop_thread = threading.current_thread().name
    await registry.commit_version(draft("m"), new_blob_key())
    await registry.retrieve_models([], 10, "")
    await registry.retrieve_versions("m", [-1], 0, "")
    await registry.resolve_version("m", 1, touch=False)
    await registry.resolve_version("m", 1, touch=True)
    assert registry._reader.threads == [
        ("retrieve_models", loop_thread),
        ("retrieve_versions", loop_thread),
        ("resolve_version touch=False", loop_thread),
    ]
    writes = registry._store.threads
    assert [call for call, _ in writes] == ["commit_version", "resolve_version touch=True"]
    assert all(thread.startswith("metadata-store") for thread in threads_of(registry._store))


async def test_a_read_sees_every_write_that_returned_before_it(registry):
    for expected in range(1, 21):
        number = (await registry.commit_version(draft("m"), new_blob_key())).version.number
        assert number == expected
        page = await registry.retrieve_versions("m", [-1], 0, "")
        assert [version.number for version in page.versions] == [expected]
    await registry.upsert_model(Model("m", {"k": "v"}))
    assert (await registry.retrieve_models(["m"], 0, "")).models == (Model("m", {"k": "v"}),)
    await registry.delete_model("m")
    with pytest.raises(NotFound):
        await registry.retrieve_versions("m", [], 0, "")


async def test_reads_and_commits_interleave_without_losing_any(registry):
    """Commits on the store thread while the loop reads: every read sees a
    prefix of the commits, never a torn or missing version."""

    async def committer() -> None:
        for _ in range(30):
            await registry.commit_version(draft("m"), new_blob_key())

    async def reader() -> None:
        seen = 0
        while seen < 30:
            page = await registry.retrieve_versions("m", [], 0, "")
            numbers = [version.number for version in page.versions]
            assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= seen
            seen = len(numbers)
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(committer(), reader()), 20)


async def test_a_deferred_read_runs_on_the_store_thread(registry):
    await registry.commit_version(draft("m"), new_blob_key())
    registry._reader.busy_reads = 1
    page = await registry.retrieve_versions("m", [-1], 0, "")
    assert [version.number for version in page.versions] == [1]
    assert registry._reader.threads == [("retrieve_versions", threading.current_thread().name)]
    (call, thread), *_ = [entry for entry in registry._store.threads if entry[0] == "retrieve_versions"]
    assert thread.startswith("metadata-store")


async def test_watches_read_through_the_reader(registry):
    await registry.commit_version(draft("m"), new_blob_key())
    watch = watch_versions(registry, "m")
    assert (await asyncio.wait_for(anext(watch), 2)).number == 1
    await registry.commit_version(draft("m"), new_blob_key())
    assert (await asyncio.wait_for(anext(watch), 2)).number == 2
    await watch.aclose()
    assert ("read_latest_version", threading.current_thread().name) in registry._reader.threads


async def test_a_closed_registry_refuses_reads(db_path: Path):
    registry = await MetadataRegistry.open(
        lambda: SqliteMetadataStore(db_path, LARGE_BUDGET),
        open_reader=lambda: SqliteReader(db_path, LARGE_BUDGET),
    )
    await registry.close()
    with pytest.raises(Unavailable, match="shutting down"):
        await registry.retrieve_models([], 0, "")


def test_the_reader_refuses_writes(db_path: Path):
    store = SqliteMetadataStore(db_path, LARGE_BUDGET)
    reader = SqliteReader(db_path, LARGE_BUDGET)
    try:
        store.upsert_model(Model("m"))
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.upsert_model(Model("x"))
        assert reader.retrieve_models([], 0, "").models == (Model("m"),)
    finally:
        reader.close()
        store.close()


def test_a_busy_database_makes_the_reader_defer_rather_than_wait(db_path: Path):
    SqliteMetadataStore(db_path, LARGE_BUDGET).close()
    reader = RecordingReader(db_path, LARGE_BUDGET)
    try:
        reader.busy_reads = 1
        with pytest.raises(ReadDeferred, match="locked"):
            reader.retrieve_models([], 0, "")
        assert reader.retrieve_models([], 0, "").models == ()
    finally:
        reader.close()


def test_the_reader_needs_a_database_in_wal_mode(tmp_path: Path):
    path = tmp_path / "rollback.sqlite3"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreOpenError, match="not in WAL mode"):
        SqliteReader(path, LARGE_BUDGET)


# -- the request log line -------------------------------------------------------------


async def test_every_call_leaves_one_log_line_with_its_status(service, caplog):
    with caplog.at_level(logging.INFO, logger="registry.requests"):
        await service.stub.UpsertModel(api.ModelInfo(model_id="m"))
        for _ in range(3):
            await service.stub.RetrieveModels(api.RetrieveModelsRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await service.stub.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id="nope"))
        with pytest.raises(grpc.aio.AioRpcError):
            await service.stub.ForgetLostVersion(pb.ForgetLostVersionRequest(blob_key=""))
        # An aborted call's status reaches the client before the server logs it.
        for _ in range(100):
            lines = [record.getMessage() for record in caplog.records if record.name == "registry.requests"]
            if len(lines) >= 6:
                break
            await asyncio.sleep(0.01)
    statuses = [line.split(" duration_ms=")[0] for line in lines]
    assert statuses == [
        f"rpc=/{METADATA}/UpsertModel status=OK",
        *[f"rpc=/{METADATA}/RetrieveModels status=OK"] * 3,
        f"rpc=/{METADATA}/RetrieveVersionInfos status=NOT_FOUND",
        f"rpc=/{METADATA}/ForgetLostVersion status=INVALID_ARGUMENT",
    ]
    assert all(float(line.split("duration_ms=")[1]) >= 0 for line in lines)


async def test_the_interceptor_wraps_each_method_once():
    """gRPC asks for the handler on every call: the wrapped one is reused."""

    async def behavior(request, context):
        return request

    handler = grpc.unary_unary_rpc_method_handler(behavior)
    other = grpc.unary_unary_rpc_method_handler(behavior)

    async def continuation(details):
        return handlers[details.method]

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    handlers = {"/s/A": handler, "/s/B": other, "/s/Unknown": None}
    interceptor = RequestInterceptor()
    first = await interceptor.intercept_service(continuation, Details("/s/A"))
    assert first is not handler and first.unary_unary is not behavior
    assert await interceptor.intercept_service(continuation, Details("/s/A")) is first
    assert await interceptor.intercept_service(continuation, Details("/s/B")) is not first
    assert await interceptor.intercept_service(continuation, Details("/s/Unknown")) is None
    # A generic handler answering a name with a new handler gets it wrapped anew.
    handlers["/s/A"] = grpc.unary_unary_rpc_method_handler(behavior)
    assert await interceptor.intercept_service(continuation, Details("/s/A")) is not first


async def test_the_service_reads_on_the_loop_thread_only_from_sqlite(service, database):
    # PostgreSQL reads wait on the network: they stay on the store thread.
    assert (service.registry._reader is None) == database.is_postgres
