"""Blobstore process wiring: tiers, gRPC server, health, sweeper."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from services.blobstore.blobs import BlobService
from services.blobstore.config import BlobstoreConfig
from services.blobstore.servicer import BlobStoreServicer, add_to_server
from services.blobstore.store import BlobTier, FileTier, MemoryTier
from services.blobstore.sweeper import Sweeper, metadata_lookup
from services.common import service_names
from services.common.config import ConfigError
from services.common.grpc_client import internal_channel
from services.common.grpc_server import NOT_SERVING, SERVING, bind, create_aio_server, run_until_signalled
from services.common.logging_setup import configure_logging
from services.common.telemetry import configure_tracing, shutdown_tracing

log = logging.getLogger("registry.blobstore")

HEALTH_SERVICES = ("", service_names.BLOBSTORE)


@dataclass
class BlobstoreApp:
    """A built blobstore: the server (not started yet) and what it runs on."""

    server: grpc.aio.Server
    health_servicer: health.aio.HealthServicer
    port: int
    blobs: BlobService
    sweeper: Sweeper
    # Prepares the tiers, then turns health to SERVING and starts the sweeper.
    ready: asyncio.Task[None]
    on_stop: Callable[[], Awaitable[None]]

    def on_draining(self) -> None:
        # Frontends learn it from DescribeReplica and stop picking this replica.
        self.blobs.draining = True


def archive_tier(config: BlobstoreConfig) -> BlobTier:
    """The tier of archived blobs: an S3 bucket if configured, else files."""
    if config.archive_s3 is None:
        return FileTier(config.archive_dir)
    # Imported only when used: boto3 takes a while to import.
    from services.blobstore.store.s3 import S3Tier

    return S3Tier(
        config.archive_s3.bucket,
        config.archive_s3.prefix,
        abandoned_upload_grace_seconds=config.orphan_grace_seconds,
    )


async def build_app(config: BlobstoreConfig) -> BlobstoreApp:
    """Builds the blobstore. The tiers are prepared in the background (temp
    cleanup may take a while, a bucket may not be reachable yet): health is
    NOT_SERVING until they are ready."""
    server, health_servicer = create_aio_server(config.max_message_bytes)
    blobs = BlobService(
        MemoryTier(config.memory_max_bytes),
        archive_tier(config),
        default_chunk_size=config.sent_chunk_size,
        max_message_bytes=config.max_message_bytes,
    )
    add_to_server(BlobStoreServicer(blobs), server)
    port = bind(server, config.bind_host, config.port)
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, NOT_SERVING)

    channel = None
    find_unreferenced = None
    if config.internal_address:
        channel = internal_channel(config.internal_address, config.max_message_bytes)
        find_unreferenced = metadata_lookup(channel, config.internal_call_timeout_seconds)
    else:
        log.warning("no COGMENT_MODEL_REGISTRY_INTERNAL_ADDRESS: orphaned blobs will not be swept")
    sweeper = Sweeper(
        blobs.tiers,
        find_unreferenced,
        interval_seconds=config.sweep_interval_seconds,
        grace_seconds=config.orphan_grace_seconds,
    )

    async def prepare() -> None:
        await blobs.open()
        for service in HEALTH_SERVICES:
            await health_servicer.set(service, SERVING)
        sweeper.start()
        log.info(
            "blobstore ready: archive in %s, memory budget %d bytes", config.archive_location, config.memory_max_bytes
        )

    ready = asyncio.get_running_loop().create_task(prepare(), name="blobstore preparation")

    async def on_stop() -> None:
        ready.cancel()
        await asyncio.gather(ready, return_exceptions=True)
        await sweeper.stop()
        if channel is not None:
            await channel.close()
        await blobs.close()

    return BlobstoreApp(server, health_servicer, port, blobs, sweeper, ready, on_stop)


async def create_server(config: BlobstoreConfig):  # type: ignore[no-untyped-def]
    """Builds the blobstore: returns (server, health_servicer, port, on_stop)."""
    app = await build_app(config)
    return app.server, app.health_servicer, app.port, app.on_stop


async def serve() -> None:
    configure_logging("blobstore")
    configure_tracing("blobstore")
    try:
        config = BlobstoreConfig.from_env()
    except ConfigError as exc:
        raise SystemExit(f"blobstore: {exc}") from None
    app = await build_app(config)
    await app.server.start()
    log.info("blobstore listening on %s:%d", config.bind_host, app.port)
    try:
        # Signals are handled while the storage is still being prepared (a
        # bucket may stay unreachable for long): a stop then is a clean one.
        serving = asyncio.ensure_future(
            run_until_signalled(
                app.server,
                app.health_servicer,
                grace_seconds=config.shutdown_grace_seconds,
                on_draining=app.on_draining,
                on_stop=app.on_stop,
            )
        )
        await asyncio.wait([app.ready, serving], return_when=asyncio.FIRST_COMPLETED)
        if app.ready.done() and not app.ready.cancelled() and app.ready.exception() is not None:
            exc = app.ready.exception()
            log.critical("cannot prepare the blob storage in %s: %s", config.archive_location, exc)
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await app.server.stop(0)
            await app.on_stop()
            raise SystemExit(1) from exc
        await serving
    finally:
        shutdown_tracing()
