"""`cogmentAPI.ModelRegistrySP` over gRPC: thin handlers around the use
cases (models.py, uploads.py, downloads.py, following.py).

The same servicer also answers the 1.x name `cogment.ModelRegistrySP`.
Errors are raised as `RegistryError`s and mapped by the request interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from services.common import service_names
from services.common.idle import SendWatchdog
from services.common.limits import RequestLimits
from services.common.passthrough import add_servicer
from services.frontend.downloads import Downloads
from services.frontend.following import Followers
from services.frontend.models import Models
from services.frontend.uploads import Uploads


class ModelRegistryServicer(api_grpc.ModelRegistrySPServicer):
    """The public registry API."""

    def __init__(
        self,
        models: Models,
        uploads: Uploads,
        downloads: Downloads,
        followers: Followers,
        limits: RequestLimits = RequestLimits(),
    ) -> None:
        self._limits = limits
        self._models = models
        self._uploads = uploads
        self._downloads = downloads
        self._followers = followers

    async def CreateOrUpdateModel(
        self, request: api.CreateOrUpdateModelRequest, context: grpc.aio.ServicerContext
    ) -> api.CreateOrUpdateModelReply:
        """Creates a model or replaces its user_data (its versions are kept)."""
        await self._models.create_or_update_model(request.model_info)
        return api.CreateOrUpdateModelReply()

    async def DeleteModel(
        self, request: api.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> api.DeleteModelReply:
        """Deletes a model, its versions and their data."""
        await self._models.delete_model(request.model_id)
        return api.DeleteModelReply()

    async def RetrieveModels(
        self, request: api.RetrieveModelsRequest, context: grpc.aio.ServicerContext
    ) -> api.RetrieveModelsReply:
        """Lists models (paginated) or fetches the given ids in order."""
        return await self._models.retrieve_models(request)

    async def CreateVersion(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> api.CreateVersionReply:
        """Creates a version from a header and data chunks (received encoded:
        see `add_to_server`)."""
        info = await self._uploads.create_version(request_iterator)
        return api.CreateVersionReply(version_info=info)

    async def RetrieveVersionInfos(
        self, request: api.RetrieveVersionInfosRequest, context: grpc.aio.ServicerContext
    ) -> api.RetrieveVersionInfosReply:
        """Lists versions (paginated) or fetches given numbers (-n from the latest)."""
        return await self._models.retrieve_version_infos(request)

    async def RetrieveVersionData(
        self, request: api.RetrieveVersionDataRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Streams a version's data in chunks of at most the configured size
        (sent as encoded by the blobstore: see `add_to_server`). A reader that
        stops reading for the download idle timeout is cut off."""
        watchdog = SendWatchdog(context, self._limits.download_idle_timeout_seconds, self._limits.download_idle)
        async for chunk in watchdog.guard(self._downloads.read_version_data(request.model_id, request.version_number)):
            yield chunk

    async def VersionUpdate(
        self, request: api.VersionUpdateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Sends the latest version at once, then every new version, in order
        (each encoded once for all its subscribers: see `add_to_server`)."""
        async for message in self._followers.follow_versions(request.model_id):
            yield message


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
