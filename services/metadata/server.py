"""Metadata process wiring: store, registry, gRPC server, health."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health
from registry import metadata_pb2, metadata_pb2_grpc

from services.common.config import ConfigError
from services.common.errors import Unavailable
from services.common.grpc_server import NOT_SERVING, SERVING, bind, create_aio_server, run_until_signalled
from services.common.health_status import HealthFollower
from services.common.logging_setup import configure_logging
from services.common.telemetry import configure_tracing, shutdown_tracing
from services.metadata.config import METADATA_URL_VARIABLE, MetadataConfig
from services.metadata.errors import StoreOpenError
from services.metadata.registry import MetadataRegistry
from services.metadata.servicer import MetadataServicer
from services.metadata.store.sqlite import SqliteMetadataStore, SqliteReader

log = logging.getLogger("registry.metadata")

# "registry.MetadataService": the name Envoy health-checks.
SERVICE_NAME = metadata_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name


@dataclass(frozen=True)
class MetadataApp:
    """A built metadata server (not started) and the hooks its shutdown runs."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    on_draining: Callable[[], None]
    on_stop: Callable[[], Awaitable[None]]


async def open_registry(config: MetadataConfig) -> MetadataRegistry:
    """The registry over the configured database: a SQLite file (created if
    needed; reads served on the event loop thread), or PostgreSQL (schema created or migrated) shared with other
    replicas, whose changes a `PostgresChangeFeed` feeds to the watchers."""
    if config.postgres_url is None:
        path = config.database_path
        assert path is not None
        return await MetadataRegistry.open(
            lambda: SqliteMetadataStore(path, config.cache_budget),
            # Reads on the event loop thread, without a thread hand-off each.
            open_reader=lambda: SqliteReader(path, config.cache_budget),
        )
    # Imported here: a SQLite deployment never loads the PostgreSQL driver.
    from services.metadata.change_feed import PostgresChangeFeed
    from services.metadata.postgres_session import new_origin
    from services.metadata.store.postgres import PostgresMetadataStore

    url, origin = config.postgres_url, new_origin()
    try:
        return await MetadataRegistry.open(
            lambda: PostgresMetadataStore(url, config.cache_budget, origin=origin),
            feed=PostgresChangeFeed(url, origin),
        )
    except StoreOpenError as exc:
        raise StoreOpenError(f"{METADATA_URL_VARIABLE}: {exc}") from None


async def create_server(config: MetadataConfig, *, registry: MetadataRegistry | None = None) -> MetadataApp:
    """Builds the metadata server. Opens the store unless `registry` is
    given; health turns SERVING once it is open, and then follows the
    database (a `HealthFollower`). `on_stop` closes the registry."""
    server, health_servicer = create_aio_server(config.max_message_bytes)
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, NOT_SERVING)
    port = bind(server, config.bind_host, config.port)
    if registry is None:
        registry = await open_registry(config)
    metadata_pb2_grpc.add_MetadataServiceServicer_to_server(MetadataServicer(registry), server)
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, SERVING)
    interval = config.database_check_interval_seconds

    async def database_problem() -> str | None:
        await registry.check_store(timeout=interval)  # raises: the problem
        return None

    # NOT_SERVING while the database does not answer: Envoy routes to the
    # other replicas, and the stack's health says what is wrong.
    database_health = HealthFollower(
        health_servicer, ("", SERVICE_NAME), database_problem, interval, what="the metadata database", serving=True
    )
    database_health.start()

    def on_draining() -> None:
        # Before anything else: the checks must not turn health back to SERVING.
        database_health.cancel()
        # Watches never end by themselves: end them as soon as draining
        # starts (the frontend renews them elsewhere or after the restart).
        registry.hub.close(Unavailable("the metadata service is shutting down, watch again"))

    async def on_stop() -> None:
        await database_health.stop()
        await registry.close()

    return MetadataApp(server, health_servicer, port, on_draining, on_stop)


async def serve() -> None:
    """`python -m services.metadata`: serves until SIGTERM/SIGINT."""
    configure_logging("metadata")
    configure_tracing("metadata")
    try:
        config = MetadataConfig.from_env()
        registry = await open_registry(config)
        app = await create_server(config, registry=registry)
    except (ConfigError, StoreOpenError) as exc:
        raise SystemExit(f"metadata: {exc}") from None
    await app.server.start()
    log.info(
        "metadata listening on %s:%d, database %s, version cache of %d items / %d bytes",
        config.bind_host,
        app.port,
        config.database_description,
        config.version_cache_max_items,
        config.version_cache_max_bytes,
    )
    try:
        await run_until_signalled(
            app.server,
            app.health,
            grace_seconds=config.shutdown_grace_seconds,
            on_draining=app.on_draining,
            on_stop=app.on_stop,
        )
    finally:
        shutdown_tracing()
