"""`registry.MetadataService` over gRPC: message in, domain call, message out.

Errors are raised as `RegistryError`s by the domain and turned into
statuses by the request interceptor (services.common.grpc_server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from cogmentAPI import model_registry_pb2 as api
from registry import admin_pb2, metadata_pb2, metadata_pb2_grpc

from services.common.errors import InvalidArgument
from services.metadata import convert
from services.metadata.registry import MetadataRegistry


class MetadataServicer(metadata_pb2_grpc.MetadataServiceServicer):
    """The internal metadata API the frontend calls (through Envoy)."""

    def __init__(self, registry: MetadataRegistry) -> None:
        self._registry = registry

    async def UpsertModel(
        self, request: api.ModelInfo, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.UpsertModelReply:
        """Creates a model or replaces its user_data; its versions are kept."""
        await self._registry.upsert_model(convert.model_from_proto(request))
        return metadata_pb2.UpsertModelReply()

    async def DeleteModel(
        self, request: metadata_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.DeleteModelReply:
        """Deletes a model and its versions; replies with the blobs to delete."""
        blobs = await self._registry.delete_model(request.model_id)
        return metadata_pb2.DeleteModelReply(deleted_blobs=convert.blob_refs_to_proto(blobs))

    async def RetrieveModels(
        self, request: api.RetrieveModelsRequest, context: grpc.aio.ServicerContext
    ) -> api.RetrieveModelsReply:
        """Lists models in creation order (paginated), or fetches the given ids."""
        page = await self._registry.retrieve_models(
            list(request.model_ids), request.models_count, request.model_handle
        )
        return convert.model_page_to_proto(page)

    async def RetrieveVersionInfos(
        self, request: api.RetrieveVersionInfosRequest, context: grpc.aio.ServicerContext
    ) -> api.RetrieveVersionInfosReply:
        """Lists a model's versions (paginated), or fetches given numbers (-n from the latest)."""
        page = await self._registry.retrieve_versions(
            request.model_id, list(request.version_numbers), request.versions_count, request.version_handle
        )
        return convert.version_page_to_proto(page)

    async def ResolveVersion(
        self, request: metadata_pb2.ResolveVersionRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.ResolveVersionReply:
        """One version and its blob key; `touch` marks a transient version as used."""
        resolved = await self._registry.resolve_version(
            request.model_id, request.version_number, touch=request.touch
        )
        return convert.resolved_to_proto(resolved)

    async def CommitVersion(
        self, request: metadata_pb2.CommitVersionRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.CommitVersionReply:
        """Commits a stored blob as the model's next version (idempotent per blob_key)."""
        commit = await self._registry.commit_version(convert.draft_from_proto(request.version_info), request.blob_key)
        return metadata_pb2.CommitVersionReply(
            version_info=convert.version_to_proto(commit.version),
            evicted_blobs=convert.blob_refs_to_proto(commit.evicted),
        )

    async def WatchVersions(
        self, request: metadata_pb2.WatchVersionsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[metadata_pb2.WatchVersionsReply]:
        """Says the watch started, then streams versions after `after_version`
        (or the latest one, when unset), then each new one."""
        after = request.after_version if request.HasField("after_version") else None
        events = self._registry.watch_versions(request.model_id, after, request.model_incarnation)
        # aclosing: the watch (and its hub subscription) ends with this handler.
        async with aclosing(events) as versions:
            async for event in versions:
                yield convert.watch_event_to_proto(event)

    async def FindUnreferencedBlobs(
        self, request: metadata_pb2.FindUnreferencedBlobsRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.FindUnreferencedBlobsReply:
        """Those of the given blob keys that no version references."""
        keys = await self._registry.find_unreferenced_blobs(list(request.keys))
        return metadata_pb2.FindUnreferencedBlobsReply(keys=keys)

    async def DescribeDatabase(
        self, request: metadata_pb2.DescribeDatabaseRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.DescribeDatabaseReply:
        """The database's identity and version counts (for the blobstore's sweeper)."""
        identity = await self._registry.describe_database()
        return metadata_pb2.DescribeDatabaseReply(
            database_id=identity.database_id,
            archived_versions=identity.archived_versions,
            transient_versions=identity.transient_versions,
        )

    async def RenewReplicaLease(
        self, request: metadata_pb2.RenewReplicaLeaseRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.RenewReplicaLeaseReply:
        """A blobstore replica is alive for lease_seconds more (0: it stops);
        the transient versions of replicas it replaced are forgotten."""
        forgotten = await self._registry.renew_replica_lease(request.replica_id, request.slot, request.lease_seconds)
        return metadata_pb2.RenewReplicaLeaseReply(forgotten_versions=forgotten)

    async def ForgetLostVersion(
        self, request: metadata_pb2.ForgetLostVersionRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.ForgetLostVersionReply:
        """Removes the transient version whose data the blobstore lost."""
        if not request.blob_key:
            raise InvalidArgument("blob_key must not be empty")
        forgotten = await self._registry.forget_lost_version(request.blob_key)
        return metadata_pb2.ForgetLostVersionReply(forgotten=forgotten)

    async def ImportModel(
        self, request: admin_pb2.ImportModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ImportModelReply:
        """Creates the model unless it exists; an existing one keeps its user_data."""
        model, created = await self._registry.import_model(convert.model_from_proto(request.model_info))
        return admin_pb2.ImportModelReply(created=created, model_info=convert.model_to_proto(model))

    async def ImportVersion(
        self, request: metadata_pb2.CommitVersionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ImportVersionReply:
        """Commits a stored archived blob as an imported version, with its own number and timestamp."""
        commit = await self._registry.import_version(convert.version_from_proto(request.version_info), request.blob_key)
        return admin_pb2.ImportVersionReply(
            version_info=convert.version_to_proto(commit.version), already_imported=not commit.created
        )
