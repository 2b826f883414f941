"""Frontend process wiring: gRPC server, upstream channel, health,
reflection, the Cogment Directory registration."""

from __future__ import annotations

import asyncio

import grpc
from cogment import model_registry_pb2_grpc as legacy_grpc
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from services.common import service_names
from services.common.access import access_control
from services.common.grpc_client import internal_channel
from services.common.grpc_server import NOT_SERVING, SERVING, StreamGate, bind, create_aio_server
from services.common.limits import MAX_STREAMS
from services.common.health_status import HealthFollower
from services.common.service import ServiceApp, run_service
from services.frontend.config import FrontendConfig
from services.frontend.directory import (
    DirectoryClient,
    DirectoryRegistration,
    outbound_ipv4,
    public_endpoint_serving,
    registration_request,
)
from services.frontend.reflection import enable_reflection
from services.frontend.background import BackgroundTasks
from services.frontend.blob_replicas import BlobReplicas, BlobRouter
from services.frontend.downloads import Downloads
from services.frontend.following import Followers
from services.frontend.imports import Imports
from services.frontend.models import Models
from services.frontend.servicer import AdminServicer, ModelRegistryServicer, add_admin_to_server, add_to_server
from services.frontend.status import RegistryStatus
from services.frontend.uploads import Uploads
from services.frontend.upstream import METADATA, BlobStoreClient, MetadataClient, UpstreamHealth


async def create_server(config: FrontendConfig) -> ServiceApp:
    """Builds the frontend (not started)."""
    limits = config.limits
    grpc_server = create_aio_server(
        config.max_message_bytes,
        streams=StreamGate(limits.max_streams, MAX_STREAMS),
        access=access_control(config.access),
    )
    server, health_servicer = grpc_server.server, grpc_server.health
    channel = internal_channel(config.internal_address, config.max_message_bytes)
    blobstores = BlobReplicas(
        config.blobstore_addresses,
        max_message_bytes=config.max_message_bytes,
        refresh_interval_seconds=config.upstream_health_interval_seconds,
        describe_timeout_seconds=min(config.upstream_health_interval_seconds, 1.0),
    )
    metadata = MetadataClient(channel, config)
    blobs = BlobRouter(blobstores, BlobStoreClient(config))
    background = BackgroundTasks()
    followers = Followers(metadata, limits=limits)
    draining = False
    status = RegistryStatus(
        grpc_server.in_flight,
        full_load_calls=config.full_load_calls,
        serving=lambda: not draining and stack_health.serving,
    )
    servicer = ModelRegistryServicer(
        Models(metadata, blobs, limits),
        Uploads(metadata, blobs, background, version_cache_max_bytes=config.version_cache_max_bytes, limits=limits),
        Downloads(metadata, blobs, limits),
        followers,
        status,
        limits,
    )
    add_to_server(servicer, server, service_names.MODEL_REGISTRY, api_grpc.add_ModelRegistrySPServicer_to_server)
    add_to_server(servicer, server, service_names.LEGACY_MODEL_REGISTRY, legacy_grpc.add_ModelRegistrySPServicer_to_server)
    add_admin_to_server(AdminServicer(Imports(metadata, blobs, background, limits)), server)
    if config.grpc_reflection:
        enable_reflection(server, service_names.PUBLIC)
    port = bind(server, config.bind_host, config.port)

    for service in ("", *service_names.PUBLIC):
        await health_servicer.set(service, NOT_SERVING)
    # Live (in Envoy's rotation) only once it knows the blobstore replicas:
    # without them it would take every transient version for lost.
    await health_servicer.set(service_names.FRONTEND_LIVENESS, NOT_SERVING)
    upstream = UpstreamHealth(channel, timeout=max(config.upstream_health_interval_seconds, 1.0))

    async def stack_problem() -> str | None:
        # The public answer: metadata has a healthy replica (as seen through
        # Envoy) and a blobstore replica serves (as this frontend sees it).
        if not await upstream.is_serving(METADATA):
            return "no healthy metadata replica behind Envoy"
        return None if blobstores.serving() else "no blobstore replica serving"

    stack_health = HealthFollower(
        health_servicer,
        ("", *service_names.PUBLIC),
        stack_problem,
        config.upstream_health_interval_seconds,
        what="the stack's upstreams",
        serving=False,
    )

    async def become_live() -> None:
        blobstores.start()
        await blobstores.wait_refreshed()
        await health_servicer.set(service_names.FRONTEND_LIVENESS, SERVING)
        stack_health.start()

    live = asyncio.get_running_loop().create_task(become_live(), name="frontend start-up")

    registration = None
    directory_channel = None
    if config.directory is not None:
        settings = config.directory
        directory_channel = grpc.aio.insecure_channel(settings.address)
        registration = DirectoryRegistration(
            DirectoryClient(directory_channel, token=settings.token, call_timeout_seconds=settings.call_timeout_seconds),
            registration_request(settings, settings.registration_host or outbound_ipv4()),
            directory=settings.address,
            check_interval_seconds=settings.check_interval_seconds,
            deregister_timeout_seconds=settings.call_timeout_seconds,
        )
        # Registered once the public endpoint serves (see public_endpoint_serving).
        registration.start(
            public_endpoint_serving(
                stack_health.wait_serving(), upstream.public_endpoint_serving, config.upstream_health_interval_seconds
            )
        )

    def on_draining() -> None:
        nonlocal draining
        draining = True
        if registration is not None:
            registration.begin_stop()  # the directory stops handing out this entry
        followers.stop_following()

    async def on_stop() -> None:
        live.cancel()
        await asyncio.gather(live, return_exceptions=True)
        if registration is not None:
            await registration.stop()
        if directory_channel is not None:
            await directory_channel.close()
        await stack_health.stop()
        await background.drain()
        await blobstores.close()
        await channel.close()

    return ServiceApp(
        grpc_server,
        port,
        on_draining=on_draining,
        on_stop=on_stop,
        summary=f"metadata at {config.internal_address}, blobstores at {','.join(config.blobstore_addresses)}",
    )


def serve() -> None:
    """`python -m services.frontend`: serves until SIGTERM/SIGINT."""
    run_service("frontend", FrontendConfig.from_env, create_server)
