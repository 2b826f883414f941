"""Several metadata replicas on one PostgreSQL database: a watcher on one
replica hears of what the others commit and delete (LISTEN/NOTIFY), also
across a lost listening connection; calls fail UNAVAILABLE, not INTERNAL,
when the database is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api

from services.common.errors import NotFound
from services.metadata.change_feed import PostgresChangeFeed
from services.metadata.records import Model, Version
from services.metadata.registry import MetadataRegistry
from services.metadata.server import open_registry
from services.metadata.tests.helpers import draft, new_blob_key, watch_versions

pytestmark = pytest.mark.postgres


@pytest.fixture
async def replicas(database, tmp_path):
    """Two registries over the test's PostgreSQL schema, wired as the
    service wires them (store + change feed)."""
    config = database.config(tmp_path)
    one = await open_registry(config)
    two = await open_registry(config)
    await one.upsert_model(Model("m"))
    yield one, two
    await one.close()
    await two.close()


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request) -> str:
    """Only PostgreSQL here (overrides the conftest's two backends)."""
    return request.param


async def commit(registry: MetadataRegistry, model_id: str = "m") -> int:
    return (await registry.commit_version(draft(model_id), new_blob_key())).version.number


async def next_number(watch, timeout: float = 1.0) -> int:
    return (await asyncio.wait_for(anext(watch), timeout)).number


async def start_waiting_watch(
    registry: MetadataRegistry, model_id: str = "m", timeout: float = 1.0
) -> tuple[AsyncIterator[Version], asyncio.Future[int]]:
    """A watch of `model_id` from the latest version, once it has read the
    (empty) state and waits; and its next number, awaited meanwhile."""
    watch = watch_versions(registry, model_id)
    waiting = asyncio.ensure_future(next_number(watch, timeout))
    await asyncio.sleep(0.1)
    return watch, waiting


def listener_of(registry: MetadataRegistry) -> PostgresChangeFeed:
    return registry._feed  # type: ignore[return-value]


async def test_a_watcher_wakes_within_a_second_for_a_commit_on_another_replica(replicas):
    one, two = replicas
    watch, waiting = await start_waiting_watch(one)
    assert await commit(two) == 1
    assert await waiting == 1
    for expected in (2, 3, 4):
        await commit(two)
        assert await next_number(watch) == expected
    await watch.aclose()


async def test_commits_on_both_replicas_reach_watchers_on_both_in_order(replicas):
    one, two = replicas
    watches = [watch_versions(one, "m"), watch_versions(two, "m")]
    pending = [asyncio.ensure_future(next_number(watch)) for watch in watches]
    await asyncio.sleep(0.1)
    results = await asyncio.gather(*(commit(registry) for registry in (one, two, one, two, one, two)))
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    for watch, first in zip(watches, pending):
        received = [await first]
        while received[-1] < 6:
            received.append(await next_number(watch))
        assert received == list(range(received[0], 7))
        await watch.aclose()


async def test_a_deletion_on_another_replica_ends_the_watch(replicas):
    one, two = replicas
    await commit(one)
    watch = watch_versions(one, "m")
    assert await next_number(watch) == 1
    await two.delete_model("m")
    with pytest.raises(NotFound, match="model 'm' was deleted"):
        await next_number(watch)


async def test_a_model_id_too_long_for_a_notification_still_wakes_its_watchers(replicas):
    one, two = replicas
    long_id = "x" * 9000
    await one.upsert_model(Model(long_id))
    watch, waiting = await start_waiting_watch(one, long_id)
    await commit(two, long_id)
    assert await waiting == 1
    await watch.aclose()


async def terminate(postgres_admin, pid: int) -> None:
    await asyncio.to_thread(postgres_admin.execute, "SELECT pg_terminate_backend(%s)", (pid,))


async def wait_for_reconnection(listener, count: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while listener.reconnections < count:
        assert asyncio.get_running_loop().time() < deadline, "the listener did not reconnect"
        await asyncio.sleep(0.02)


async def test_watchers_get_later_versions_after_the_listener_lost_its_connection(replicas, postgres_admin):
    one, two = replicas
    listener = listener_of(one)
    watch, waiting = await start_waiting_watch(one, timeout=5)
    old_pid = listener.backend_pid
    await terminate(postgres_admin, old_pid)
    # Committed while the listener is deaf: its notification is lost, the
    # wake-up after reconnecting makes the watcher read it anyway.
    assert await commit(two) == 1
    assert await waiting == 1
    await wait_for_reconnection(listener, 1)
    assert listener.backend_pid not in (None, old_pid)
    assert await commit(two) == 2
    assert await next_number(watch) == 2
    await watch.aclose()


async def test_the_listener_keeps_retrying_while_the_database_refuses_it(replicas, postgres_admin, monkeypatch):
    one, two = replicas
    listener = listener_of(one)
    watch, waiting = await start_waiting_watch(one, timeout=10)
    real_url = listener._url
    listener._url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1"  # the server is "down"
    await terminate(postgres_admin, listener.backend_pid)
    await asyncio.sleep(0.5)  # several failed attempts
    assert listener.reconnections == 0 and listener.backend_pid is None
    assert await commit(two) == 1
    assert not waiting.done()
    listener._url = real_url  # the server is back
    assert await waiting == 1
    await watch.aclose()


async def test_calls_fail_unavailable_when_the_database_is_gone(service, postgres_admin):
    """Through gRPC: the status is UNAVAILABLE (retryable), not INTERNAL."""
    await service.stub.UpsertModel(api.ModelInfo(model_id="m"))
    store = service.registry._store
    store._url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1"  # the server went away...
    await terminate(postgres_admin, store.backend_pid)  # ...with the connection
    for call in (
        service.stub.UpsertModel(api.ModelInfo(model_id="n")),
        service.stub.RetrieveModels(api.RetrieveModelsRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error.value.details().startswith("cannot reach the metadata database")
