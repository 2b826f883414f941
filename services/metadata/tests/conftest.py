"""Fixtures of the metadata tests: stores on either backend, and a real
in-process gRPC server on 127.0.0.1 port 0.

Store, registry and service fixtures run each test twice: on a SQLite file
in a temporary directory, and on PostgreSQL (marked `postgres`) in a schema
of its own, dropped after the test. PostgreSQL is REGISTRY_TEST_POSTGRES_URL
(default: 127.0.0.1:5432, database `test`, user `postgres`); if it cannot
be reached the postgres tests fail rather than skip, since CI always has it
(deselect them with `-m "not postgres"`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2_grpc
from registry import metadata_pb2_grpc

from services.metadata.config import MetadataConfig
from services.metadata.records import CacheBudget
from services.metadata.registry import MetadataRegistry
from services.metadata.server import create_server, open_registry
from services.metadata.store.postgres import PostgresMetadataStore
from services.metadata.store.sql import SqlMetadataStore
from services.metadata.store.sqlite import SqliteMetadataStore
from services.metadata.tests.helpers import (
    LARGE_BUDGET,
    SERVICE_CACHE_MAX_BYTES,
    SERVICE_CACHE_MAX_ITEMS,
    test_config,
)

POSTGRES_URL = os.environ.get("REGISTRY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "metadata.sqlite3"


# -- PostgreSQL ---------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[psycopg.Connection]:
    """A connection to the test server, for creating and dropping schemas."""
    try:
        connection = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required by the postgres tests: {exc}", pytrace=False)
    # Never hang a test run on a lock left by a broken test.
    connection.execute("SET lock_timeout = '10s'")
    yield connection
    connection.close()


def url_with(url: str, **parameters: str) -> str:
    separator = "&" if "?" in url else "?"
    return url + separator + "&".join(f"{key}={value}" for key, value in parameters.items())


@pytest.fixture
def postgres_url(postgres_admin: psycopg.Connection) -> Iterator[str]:
    """The URL of a fresh, empty schema (first in `search_path`). Sessions
    are named after it, so that teardown can end those a test left open."""
    schema = f"registry_test_{uuid.uuid4().hex[:16]}"
    postgres_admin.execute(f'CREATE SCHEMA "{schema}"')
    yield url_with(POSTGRES_URL, options=f"-csearch_path%3D{schema}", application_name=schema)
    postgres_admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (schema,)
    )
    postgres_admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


# -- either backend -------------------------------------------------------------


@dataclass
class Database:
    """Where a test's metadata lives, on the backend it runs on."""

    backend: str  # "sqlite" or "postgres"
    path: Path  # the SQLite file
    url: str | None  # the PostgreSQL URL
    opened: list[SqlMetadataStore] = field(default_factory=list)

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgres"

    def open(
        self,
        budget: CacheBudget = LARGE_BUDGET,
        *,
        sqlite_class=None,
        postgres_class=None,
        close_at_end: bool = True,
        **options: Any,
    ):
        """A new store on this database, closed at the end of the test unless
        the caller closes it (SQLite stores must be closed by their thread)."""
        if self.is_postgres:
            store = (postgres_class or PostgresMetadataStore)(self.url, budget, **options)
        else:
            store = (sqlite_class or SqliteMetadataStore)(self.path, budget, **options)
        if close_at_end:
            self.opened.append(store)
        return store

    def config(self, tmp_path: Path, **overrides: str) -> MetadataConfig:
        """Service settings using this database."""
        if self.is_postgres:
            overrides.setdefault("METADATA_URL", self.url)
        return test_config(tmp_path, **overrides)

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database(request, backend: str, db_path: Path) -> Iterator[Database]:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    database = Database(backend=backend, path=db_path, url=url)
    yield database
    database.close_all()


@pytest.fixture
def open_store(database: Database) -> Callable[..., SqlMetadataStore]:
    """Opens stores on the test's database (closed at the end of the test)."""

    def open_(budget: CacheBudget = LARGE_BUDGET) -> SqlMetadataStore:
        return database.open(budget)

    return open_


@pytest.fixture
def store(open_store) -> SqlMetadataStore:
    return open_store()


# -- the gRPC service -------------------------------------------------------------


@dataclass
class Service:
    """A running metadata server and clients of it."""

    stub: metadata_pb2_grpc.MetadataServiceStub
    health: health_pb2_grpc.HealthStub
    registry: MetadataRegistry
    port: int


@pytest.fixture
async def service(database: Database, tmp_path: Path) -> AsyncIterator[Service]:
    config = database.config(
        tmp_path,
        VERSION_CACHE_MAX_ITEMS=str(SERVICE_CACHE_MAX_ITEMS),
        VERSION_CACHE_MAX_BYTES=str(SERVICE_CACHE_MAX_BYTES),
    )
    registry = await open_registry(config)
    app = await create_server(config, registry=registry)
    await app.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield Service(
            stub=metadata_pb2_grpc.MetadataServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            registry=registry,
            port=app.port,
        )
    finally:
        await channel.close()
        await app.server.stop(0)
        await app.on_stop()
