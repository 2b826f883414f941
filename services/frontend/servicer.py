"""`cogmentAPI.ModelRegistrySP` and `registry.Admin` over gRPC: thin
handlers around the use cases (models.py, uploads.py, downloads.py,
following.py, status.py, imports.py).

The same servicer also answers the 1.x name `cogment.ModelRegistrySP`.
Errors are raised as `RegistryError`s and mapped by the request interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from cogmentAPI import common_pb2
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc
from registry import admin_pb2, admin_pb2_grpc

from services.common import access, metrics, service_names
from services.common.idle import SendWatchdog
from services.common.limits import RequestLimits
from services.common.passthrough import add_servicer
from services.frontend.downloads import Downloads
from services.frontend.following import Followers
from services.frontend.imports import Imports
from services.frontend.models import Models
from services.frontend.status import RegistryStatus
from services.frontend.uploads import Uploads


@dataclass(eq=False)
class ModelRegistryServicer(api_grpc.ModelRegistrySPServicer):
    """The public registry API (Version and Status only under the 2.x name)."""

    models: Models
    uploads: Uploads
    downloads: Downloads
    followers: Followers
    status: RegistryStatus
    limits: RequestLimits = RequestLimits()

    async def CreateOrUpdateModel(
        self, request: api.CreateOrUpdateModelRequest, context: grpc.aio.ServicerContext
    ) -> api.CreateOrUpdateModelReply:
        """Creates a model or replaces its user_data (its versions are kept)."""
        access.note(model_id=request.model_info.model_id)
        await self.models.create_or_update_model(request.model_info)
        return api.CreateOrUpdateModelReply()

    async def DeleteModel(
        self, request: api.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> api.DeleteModelReply:
        """Deletes a model, its versions and their data."""
        access.note(model_id=request.model_id)
        await self.models.delete_model(request.model_id)
        return api.DeleteModelReply()

    async def RetrieveModels(
        self, request: api.RetrieveModelsRequest, context: grpc.aio.ServicerContext
    ) -> api.RetrieveModelsReply:
        """Lists models (paginated) or fetches the given ids in order."""
        return await self.models.retrieve_models(request)

    async def CreateVersion(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> api.CreateVersionReply:
        """Creates a version from a header and data chunks (received encoded:
        see `add_to_server`)."""
        info = await self.uploads.create_version(request_iterator)
        access.note(version_number=info.version_number)
        return api.CreateVersionReply(version_info=info)

    async def RetrieveVersionInfos(
        self, request: api.RetrieveVersionInfosRequest, context: grpc.aio.ServicerContext
    ) -> api.RetrieveVersionInfosReply:
        """Lists versions (paginated) or fetches given numbers (-n from the latest)."""
        return await self.models.retrieve_version_infos(request)

    async def RetrieveVersionData(
        self, request: api.RetrieveVersionDataRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Streams a version's data in chunks of at most the configured size
        (sent as encoded by the blobstore: see `add_to_server`). A reader that
        stops reading for the download idle timeout is cut off."""
        watchdog = SendWatchdog(context, self.limits.download_idle_timeout_seconds, self.limits.download_idle)
        async for chunk in watchdog.guard(self.downloads.read_version_data(request.model_id, request.version_number)):
            yield chunk

    async def VersionUpdate(
        self, request: api.VersionUpdateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Sends the latest version at once, then every new version, in order
        (each encoded once for all its subscribers: see `add_to_server`)."""
        measured = metrics.frontend()
        measured.subscribers.inc()
        try:
            async for message in self.followers.follow_versions(request.model_id):
                yield message
                measured.notifications.inc()
        finally:
            measured.subscribers.dec()

    async def Version(self, request: common_pb2.VersionRequest, context: grpc.aio.ServicerContext) -> common_pb2.VersionInfo:
        """This product and its version, the Cogment API version it speaks, gRPC's."""
        reply = common_pb2.VersionInfo()
        for name, version in self.status.versions():
            reply.versions.add(name=name, version=version)
        return reply

    async def Status(self, request: common_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> common_pb2.StatusReply:
        """The statuses asked for ("overall_load", or "*"); unknown names are absent."""
        return common_pb2.StatusReply(statuses=self.status.statuses(request.names))


def add_to_server(servicer: ModelRegistryServicer, server: grpc.aio.Server, service: str, add_generated) -> None:  # type: ignore[no-untyped-def]
    """Registers `servicer` under `service` (the public name or its 1.x
    alias) with the generated handlers, except on the data path:
    CreateVersion receives its messages encoded and RetrieveVersionData
    sends them encoded, so chunks pass through without being decoded and
    re-encoded; VersionUpdate sends each version encoded once for every
    subscriber (the 1.x alias has no VersionUpdate)."""
    raw_responses = ["RetrieveVersionData"]
    if service == service_names.MODEL_REGISTRY:
        raw_responses.append("VersionUpdate")
    add_servicer(server, servicer, service, add_generated, raw_requests=["CreateVersion"], raw_responses=raw_responses)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Administration: importing another registry's archive."""

    def __init__(self, imports: Imports) -> None:
        self._imports = imports

    async def ImportModel(
        self, request: admin_pb2.ImportModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ImportModelReply:
        """Creates the model unless it exists (an existing one keeps its user_data)."""
        access.note(model_id=request.model_info.model_id)
        return await self._imports.import_model(request.model_info)

    async def ImportVersion(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> admin_pb2.ImportVersionReply:
        """Imports one archived version with its own number and timestamp
        (received encoded, as CreateVersion is)."""
        return await self._imports.import_version(request_iterator)


def add_admin_to_server(servicer: AdminServicer, server: grpc.aio.Server) -> None:
    """Registers `servicer`, ImportVersion receiving its chunks encoded."""
    add_servicer(
        server, servicer, service_names.ADMIN, admin_pb2_grpc.add_AdminServicer_to_server, raw_requests=["ImportVersion"]
    )
