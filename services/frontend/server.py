"""Frontend process wiring: gRPC server, upstream channel, health, reflection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from cogment import model_registry_pb2_grpc as legacy_grpc
from cogmentAPI import model_registry_pb2_grpc as api_grpc
from grpc_health.v1 import health

from services.common.grpc_client import internal_channel
from services.common.grpc_server import NOT_SERVING, SERVING, bind, create_aio_server, run_until_signalled
from services.common.logging_setup import configure_logging
from services.common.telemetry import configure_tracing, shutdown_tracing
from services.frontend.config import FrontendConfig
from services.frontend.reflection import enable_reflection
from services.frontend.registry import ModelRegistry
from services.frontend.servicer import ModelRegistryServicer
from services.frontend.upstream import BLOBSTORE, METADATA, BlobStoreClient, MetadataClient, UpstreamHealth

log = logging.getLogger("registry.frontend")

PUBLIC_SERVICES = ("cogmentAPI.ModelRegistrySP", "cogment.ModelRegistrySP")
# What Envoy checks: this process alone is up (not its upstreams), so a
# metadata outage does not eject every frontend.
LIVENESS_SERVICE = "registry.Frontend"


class StackHealth:
    """Publishes the health of the whole stack under "" and the public
    service names: SERVING only while metadata and blobstore both have a
    healthy replica (as seen through Envoy)."""

    def __init__(self, servicer: health.aio.HealthServicer, upstream: UpstreamHealth, interval: float) -> None:
        self._servicer = servicer
        self._upstream = upstream
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            serving = all(
                await asyncio.gather(self._upstream.is_serving(METADATA), self._upstream.is_serving(BLOBSTORE))
            )
            status = SERVING if serving else NOT_SERVING
            for service in ("", *PUBLIC_SERVICES):
                await self._servicer.set(service, status)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass(frozen=True)
class Frontend:
    """A built frontend server and the hooks its shutdown runs."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    on_draining: Callable[[], None]
    on_stop: Callable[[], Awaitable[None]]


async def create_server(config: FrontendConfig) -> Frontend:
    """Builds the frontend (not started)."""
    server, health_servicer = create_aio_server(config.max_message_bytes)
    channel = internal_channel(config.internal_address, config.max_message_bytes)
    registry = ModelRegistry(config, MetadataClient(channel, config), BlobStoreClient(channel, config))
    servicer = ModelRegistryServicer(registry)
    api_grpc.add_ModelRegistrySPServicer_to_server(servicer, server)
    legacy_grpc.add_ModelRegistrySPServicer_to_server(servicer, server)
    if config.grpc_reflection:
        enable_reflection(server, PUBLIC_SERVICES)
    port = bind(server, config.bind_host, config.port)

    for service in ("", *PUBLIC_SERVICES):
        await health_servicer.set(service, NOT_SERVING)
    await health_servicer.set(LIVENESS_SERVICE, SERVING)
    stack_health = StackHealth(
        health_servicer,
        UpstreamHealth(channel, timeout=max(config.upstream_health_interval_seconds, 1.0)),
        config.upstream_health_interval_seconds,
    )

    stack_health.start()

    async def on_stop() -> None:
        await stack_health.stop()
        await registry.drain_background()
        await channel.close()

    return Frontend(server, health_servicer, port, registry.stop_following, on_stop)


async def serve() -> None:
    configure_logging("frontend")
    configure_tracing("frontend")
    config = FrontendConfig.from_env()
    frontend = await create_server(config)
    await frontend.server.start()
    log.info(
        "frontend listening on %s:%d, internal services at %s", config.bind_host, frontend.port, config.internal_address
    )
    try:
        await run_until_signalled(
            frontend.server,
            frontend.health,
            grace_seconds=config.shutdown_grace_seconds,
            on_draining=frontend.on_draining,
            on_stop=frontend.on_stop,
        )
    finally:
        shutdown_tracing()

