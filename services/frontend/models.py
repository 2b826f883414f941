"""The calls about models and their version infos: metadata answers them,
and deleting a model also deletes its versions' blobs."""

from __future__ import annotations

from typing import Protocol

from cogmentAPI import model_registry_pb2 as api
from registry import metadata_pb2

from services.common.limits import RequestLimits
from services.frontend.blob_deletion import BlobDeleter, delete_blobs


class ModelMetadata(Protocol):
    """The metadata calls about models (upstream.MetadataClient)."""

    async def upsert_model(self, info: api.ModelInfo) -> None: ...

    async def delete_model(self, model_id: str) -> metadata_pb2.DeleteModelReply: ...

    async def retrieve_models(self, request: api.RetrieveModelsRequest) -> api.RetrieveModelsReply: ...

    async def retrieve_version_infos(
        self, request: api.RetrieveVersionInfosRequest
    ) -> api.RetrieveVersionInfosReply: ...


class Models:
    """CreateOrUpdateModel, DeleteModel, RetrieveModels, RetrieveVersionInfos."""

    def __init__(self, metadata: ModelMetadata, blobs: BlobDeleter, limits: RequestLimits = RequestLimits()) -> None:
        self._metadata = metadata
        self._blobs = blobs
        self._limits = limits

    async def create_or_update_model(self, info: api.ModelInfo) -> None:
        self._limits.check_model_id(info.model_id, "model_info.model_id")
        self._limits.check_user_data(info.user_data, "model_info.user_data")
        await self._metadata.upsert_model(info)

    async def delete_model(self, model_id: str) -> None:
        """Deletes the model and its versions (metadata), then their blobs,
        before replying; a blob that cannot be deleted now is left to the
        blobstore's sweeper."""
        self._limits.check_model_id(model_id)
        reply = await self._metadata.delete_model(model_id)
        await delete_blobs(self._blobs, reply.deleted_blobs)

    async def retrieve_models(self, request: api.RetrieveModelsRequest) -> api.RetrieveModelsReply:
        self._limits.check_retrieve_models(request.model_ids)
        return await self._metadata.retrieve_models(request)

    async def retrieve_version_infos(self, request: api.RetrieveVersionInfosRequest) -> api.RetrieveVersionInfosReply:
        self._limits.check_retrieve_version_infos(request.model_id, request.version_numbers)
        return await self._metadata.retrieve_version_infos(request)
