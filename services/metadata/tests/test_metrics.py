"""What metadata measures: the transient cache (fill, budget, evictions),
open watches, and its database transactions (duration, failures)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from prometheus_client import REGISTRY
from registry import metadata_pb2 as pb

from services.common.errors import NotFound
from services.metadata.records import CacheUsage, Model
from services.metadata.tests.helpers import SERVICE_CACHE_MAX_BYTES, SERVICE_CACHE_MAX_ITEMS, commit
from services.metadata.tests.test_servicer import create_model, version_request


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def eventually(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.05)


def test_cache_usage_counts_transient_versions_only(store):
    assert store.cache_usage() == CacheUsage(versions=0, bytes=0)
    store.upsert_model(Model("m"))
    commit(store, "m", size=10)
    commit(store, "m", size=25)
    commit(store, "m", size=1000, archived=True)
    assert store.cache_usage() == CacheUsage(versions=2, bytes=35)


async def test_the_service_publishes_the_cache_its_budget_and_its_evictions(service):
    assert sample("registry_transient_max_versions") == SERVICE_CACHE_MAX_ITEMS
    assert sample("registry_transient_max_bytes") == SERVICE_CACHE_MAX_BYTES
    await create_model(service)
    evicted = sample("registry_evicted_versions_total")
    for _ in range(SERVICE_CACHE_MAX_ITEMS + 2):
        await service.stub.CommitVersion(version_request(data_size=100))
    await service.stub.CommitVersion(version_request(data_size=7, archived=True))
    assert sample("registry_evicted_versions_total") - evicted == 2
    # Refreshed with each database check (every DATABASE_CHECK_INTERVAL_SECONDS).
    await eventually(lambda: sample("registry_transient_versions") == SERVICE_CACHE_MAX_ITEMS)
    assert sample("registry_transient_bytes") == 100 * SERVICE_CACHE_MAX_ITEMS


async def test_open_watches_are_counted_until_they_end(service):
    await create_model(service, "watched")
    before = sample("registry_metadata_watches")
    calls = [service.stub.WatchVersions(pb.WatchVersionsRequest(model_id="watched")) for _ in range(3)]
    await eventually(lambda: sample("registry_metadata_watches") - before == 3)
    for call in calls:
        call.cancel()
    await eventually(lambda: sample("registry_metadata_watches") == before)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_transactions_are_timed_and_database_failures_counted(store):
    reads = sample("registry_database_transaction_duration_seconds_count", access="read")
    writes = sample("registry_database_transaction_duration_seconds_count", access="write")
    errors = sample("registry_database_errors_total", access="read")
    store.retrieve_models([], 0, "")
    with pytest.raises(NotFound):  # a refused request: not a database failure
        store.read_latest_version("nobody")
    store.upsert_model(Model("timed"))
    assert sample("registry_database_transaction_duration_seconds_count", access="read") - reads == 2
    assert sample("registry_database_transaction_duration_seconds_count", access="write") - writes == 1
    assert sample("registry_database_errors_total", access="read") == errors
    store._connection.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.retrieve_models([], 0, "")
    assert sample("registry_database_errors_total", access="read") - errors == 1
