"""Fixtures of the metadata tests: stores in a temporary directory, and a
real in-process gRPC server on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from registry import metadata_pb2_grpc

from services.metadata.records import CacheBudget
from services.metadata.registry import MetadataRegistry
from services.metadata.server import create_server, open_registry
from services.metadata.store.sqlite import SqliteMetadataStore
from services.metadata.tests.helpers import (
    LARGE_BUDGET,
    SERVICE_CACHE_MAX_BYTES,
    SERVICE_CACHE_MAX_ITEMS,
    test_config,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "metadata.sqlite3"


@pytest.fixture
def open_store(db_path: Path) -> Iterator[Callable[..., SqliteMetadataStore]]:
    """Opens stores on the test's database (closed at the end of the test)."""
    opened: list[SqliteMetadataStore] = []

    def open_(budget: CacheBudget = LARGE_BUDGET, path: Path | None = None) -> SqliteMetadataStore:
        store = SqliteMetadataStore(path or db_path, budget)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store) -> SqliteMetadataStore:
    return open_store()


@dataclass
class Service:
    """A running metadata server and clients of it."""

    stub: metadata_pb2_grpc.MetadataServiceStub
    health: health_pb2_grpc.HealthStub
    registry: MetadataRegistry
    port: int


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    config = test_config(
        tmp_path,
        VERSION_CACHE_MAX_ITEMS=str(SERVICE_CACHE_MAX_ITEMS),
        VERSION_CACHE_MAX_BYTES=str(SERVICE_CACHE_MAX_BYTES),
    )
    registry = await open_registry(config)
    server, _, port, on_stop = await create_server(config, registry=registry)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Service(
            stub=metadata_pb2_grpc.MetadataServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            registry=registry,
            port=port,
        )
    finally:
        await channel.close()
        await server.stop(0)
        await on_stop()
