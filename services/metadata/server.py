"""Metadata process wiring: store, registry, gRPC server, health."""

from __future__ import annotations

import logging

from registry import metadata_pb2_grpc

from services.common import metrics, service_names
from services.common.access import access_control
from services.common.errors import RegistryError, Unavailable
from services.common.grpc_server import NOT_SERVING, SERVING, bind, create_aio_server
from services.common.health_status import HealthFollower
from services.common.service import BoundServer, ServiceApp, run_service
from services.metadata.config import METADATA_URL_VARIABLE, MetadataConfig
from services.metadata.errors import StoreOpenError
from services.metadata.public_reads import PublicReadsServicer, add_public_reads
from services.metadata.registry import MetadataRegistry
from services.metadata.servicer import MetadataServicer
from services.metadata.store.sqlite import SqliteMetadataStore, SqliteReader

log = logging.getLogger("registry.metadata")


async def open_registry(config: MetadataConfig) -> MetadataRegistry:
    """The registry over the configured database: a SQLite file (created if
    needed; reads served on the event loop thread), or PostgreSQL (schema created or migrated) shared with other
    replicas, whose changes a `PostgresChangeFeed` feeds to the watchers;
    either way, repeated small reads are answered from a reply cache that
    the database's version keeps fresh (reply_cache.py)."""
    if config.postgres_url is None:
        path = config.database_path
        assert path is not None
        return await MetadataRegistry.open(
            lambda: SqliteMetadataStore(path, config.cache_budget, config.limits),
            # Reads on the event loop thread, without a thread hand-off each.
            open_reader=lambda: SqliteReader(path, config.cache_budget, config.limits),
            reply_cache_bytes=config.read_cache_bytes,
        )
    # Imported here: a SQLite deployment never loads the PostgreSQL driver.
    from services.metadata.change_feed import PostgresChangeFeed
    from services.metadata.postgres_session import new_origin
    from services.metadata.snapshot_version import PostgresSnapshotVersion
    from services.metadata.store.postgres import PostgresMetadataStore

    url, origin = config.postgres_url, new_origin()
    try:
        return await MetadataRegistry.open(
            lambda: PostgresMetadataStore(url, config.cache_budget, origin=origin, limits=config.limits),
            feed=PostgresChangeFeed(url, origin),
            # Bounded as the health check is: a server that does not answer
            # within a beat is not asked again by every small read meanwhile.
            data_version=PostgresSnapshotVersion(url, timeout=config.database_check_interval_seconds),
            reply_cache_bytes=config.read_cache_bytes,
        )
    except StoreOpenError as exc:
        raise StoreOpenError(f"{METADATA_URL_VARIABLE}: {exc}") from None


async def create_server(config: MetadataConfig, *, registry: MetadataRegistry | None = None) -> ServiceApp:
    """Builds the metadata server. Opens the store unless `registry` is
    given; health turns SERVING once it is open, and then follows the
    database (a `HealthFollower`). `on_stop` closes the registry."""
    grpc_server = create_aio_server(config.max_message_bytes)
    server, health_servicer = grpc_server.server, grpc_server.health
    for service in ("", service_names.METADATA):
        await health_servicer.set(service, NOT_SERVING)
    port = bind(server, config.bind_host, config.port)
    # The public reads on a server of their own (public_reads.py says why),
    # answering the same health as the internal one, under the public API's
    # access control, as the frontends' server (the internal one has none).
    reads_server = create_aio_server(
        config.max_message_bytes, access=access_control(config.access), health=health_servicer
    )
    reads_port = bind(reads_server.server, config.bind_host, config.reads_port)
    if registry is None:
        registry = await open_registry(config)
    internal = MetadataServicer(registry)
    metadata_pb2_grpc.add_MetadataServiceServicer_to_server(internal, server)
    add_public_reads(PublicReadsServicer(internal, config.limits, registry.reply_cache), reads_server.server)
    for service in ("", service_names.METADATA):
        await health_servicer.set(service, SERVING)
    interval = config.database_check_interval_seconds
    measured = metrics.metadata()
    measured.transient_max_versions.set(config.version_cache_max_items)
    measured.transient_max_bytes.set(config.version_cache_max_bytes)

    async def database_problem() -> str | None:
        await registry.check_store(timeout=interval)  # raises: the problem
        # The database answers: the same beat refreshes the cache's gauges.
        usage = await registry.cache_usage()
        measured.transient_versions.set(usage.versions)
        measured.transient_bytes.set(usage.bytes)
        # ... and forgets the transient versions of blobstore replicas whose
        # lease expired: within one beat of the expiry, without a read.
        try:
            await registry.expire_replica_leases()
        except RegistryError as exc:  # a write refused (disk full...): not a health problem
            log.warning("could not expire blobstore replica leases (retried in %.0fs): %s", interval, exc)
        return None

    # NOT_SERVING while the database does not answer: Envoy routes to the
    # other replicas, and the stack's health says what is wrong.
    database_health = HealthFollower(
        health_servicer,
        ("", service_names.METADATA),
        database_problem,
        interval,
        what="the metadata database",
        serving=True,
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

    summary = (
        f"public reads on port {reads_port}, "
        f"database {config.database_description}, "
        f"version cache of {config.version_cache_max_items} items / {config.version_cache_max_bytes} bytes"
    )
    return ServiceApp(
        grpc_server,
        port,
        on_draining=on_draining,
        on_stop=on_stop,
        summary=summary,
        more_servers=(BoundServer(reads_server, reads_port),),
    )


async def _open_and_create_server(config: MetadataConfig) -> ServiceApp:
    # The database first: an unusable one stops the start before the port is taken.
    return await create_server(config, registry=await open_registry(config))


def serve() -> None:
    """`python -m services.metadata`: serves until SIGTERM/SIGINT."""
    run_service("metadata", MetadataConfig.from_env, _open_and_create_server, start_errors=(StoreOpenError,))
