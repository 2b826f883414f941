"""Blobstore process wiring: tiers, gRPC server, health, sweeper."""

from __future__ import annotations

import asyncio
import logging

from services.blobstore.blobs import BlobService
from services.blobstore.config import BlobstoreConfig
from services.blobstore.servicer import BlobStoreServicer, add_to_server
from services.blobstore.store import BlobTier, FileTier, MemoryTier
from services.blobstore.lease import LeaseKeeper, replica_slot
from services.blobstore.sweeper import GrpcMetadataView, Sweeper
from services.common import metrics, service_names
from services.common.grpc_client import internal_channel
from services.common.grpc_server import NOT_SERVING, SERVING, bind, create_aio_server
from services.common.service import ServiceApp, run_service

log = logging.getLogger("registry.blobstore")

HEALTH_SERVICES = ("", service_names.BLOBSTORE)


def archive_tier(config: BlobstoreConfig) -> BlobTier:
    """The tier of archived blobs: an S3 bucket if configured, else files."""
    if config.archive_s3 is None:
        return FileTier(config.archive_dir, reserved_bytes=config.archive_reserved_bytes)
    # Imported only when used: boto3 takes a while to import.
    from services.blobstore.store.s3 import S3Tier

    return S3Tier(
        config.archive_s3.bucket,
        config.archive_s3.prefix,
        abandoned_upload_grace_seconds=config.orphan_grace_seconds,
    )


async def create_server(config: BlobstoreConfig) -> ServiceApp:
    """Builds the blobstore (not started). The tiers are prepared in the
    background, by the app's `ready` task (temp cleanup may take a while, a
    bucket may not be reachable yet): health is NOT_SERVING until they are
    ready, then the sweeper starts."""
    grpc_server = create_aio_server(config.max_message_bytes)
    server, health_servicer = grpc_server.server, grpc_server.health
    memory = MemoryTier(config.memory_max_bytes)
    metrics.blobstore().follow_memory_tier(lambda: memory.held_bytes, config.memory_max_bytes)
    blobs = BlobService(
        memory,
        archive_tier(config),
        default_chunk_size=config.sent_chunk_size,
        max_message_bytes=config.max_message_bytes,
        limits=config.limits,
    )
    add_to_server(BlobStoreServicer(blobs), server)
    port = bind(server, config.bind_host, config.port)
    lease: LeaseKeeper | None = None
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, NOT_SERVING)

    channel = None
    metadata = None
    if config.internal_address:
        channel = internal_channel(config.internal_address, config.max_message_bytes)
        metadata = GrpcMetadataView(channel, config.internal_call_timeout_seconds)
        lease = LeaseKeeper(
            channel,
            blobs.replica_id,
            replica_slot(port),
            lease_seconds=config.lease_seconds,
            call_timeout_seconds=config.internal_call_timeout_seconds,
        )
    else:
        log.warning("no COGMENT_MODEL_REGISTRY_INTERNAL_ADDRESS: orphaned blobs will not be swept")
    sweeper = Sweeper(
        blobs.tiers,
        metadata,
        interval_seconds=config.sweep_interval_seconds,
        grace_seconds=config.orphan_grace_seconds,
        accept_database_id=config.accept_database_id,
    )

    async def prepare() -> None:
        try:
            await blobs.open()
        except Exception as exc:
            raise RuntimeError(f"cannot prepare the blob storage in {config.archive_location}: {exc}") from exc
        if lease is not None:
            # Before serving: metadata forgets the transient versions of the
            # process this one replaces (same slot, another id) at once.
            await lease.renew_logged()
            lease.start()
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
        if lease is not None:
            await lease.stop(release=True)  # our transient blobs go with this process
        if channel is not None:
            await channel.close()
        await blobs.close()

    def on_draining() -> None:
        # Frontends learn it from DescribeReplica and stop picking this replica.
        blobs.draining = True

    return ServiceApp(grpc_server, port, on_draining=on_draining, on_stop=on_stop, ready=ready)


def serve() -> None:
    """`python -m services.blobstore`: serves until SIGTERM/SIGINT."""
    run_service("blobstore", BlobstoreConfig.from_env, create_server)
