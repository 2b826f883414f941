"""Typed clients of the internal services, as the frontend uses them.

Every call has a deadline; idempotent unary calls are retried on UNAVAILABLE;
failures surface as `RegistryError`s carrying the status to give our client.
Metadata calls go through Envoy's internal listener, which picks the
replica; blob calls go straight to the blobstore replica they are given
(blob_replicas.py chooses it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from cogmentAPI import model_registry_pb2 as api
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry import admin_pb2, blobstore_pb2, metadata_pb2, metadata_pb2_grpc

from services.common import service_names
from services.common.grpc_client import UPSTREAM_HEADER, call_at_most_once, call_idempotent
from services.common.stream_refusal import refusal_behind
from services.frontend.blob_replicas import Replica
from services.frontend.config import FrontendConfig

METADATA = "metadata"
BLOBSTORE = "blobstore"


class MetadataClient:
    """The calls the frontend makes to `registry.MetadataService`."""

    def __init__(self, channel: grpc.aio.Channel, config: FrontendConfig) -> None:
        self._stub = metadata_pb2_grpc.MetadataServiceStub(channel)
        self._timeout = config.internal_call_timeout_seconds
        self._watch_timeout = config.watch_renewal_seconds

    async def upsert_model(self, info: api.ModelInfo) -> None:
        await call_idempotent(METADATA, lambda: self._stub.UpsertModel(info, timeout=self._timeout))

    async def delete_model(self, model_id: str) -> metadata_pb2.DeleteModelReply:
        request = metadata_pb2.DeleteModelRequest(model_id=model_id)
        return await call_at_most_once(METADATA, lambda: self._stub.DeleteModel(request, timeout=self._timeout))

    async def retrieve_models(self, request: api.RetrieveModelsRequest) -> api.RetrieveModelsReply:
        return await call_idempotent(METADATA, lambda: self._stub.RetrieveModels(request, timeout=self._timeout))

    async def retrieve_version_infos(
        self, request: api.RetrieveVersionInfosRequest
    ) -> api.RetrieveVersionInfosReply:
        return await call_idempotent(
            METADATA, lambda: self._stub.RetrieveVersionInfos(request, timeout=self._timeout)
        )

    async def resolve_version(self, model_id: str, version_number: int, *, touch: bool) -> metadata_pb2.ResolveVersionReply:
        request = metadata_pb2.ResolveVersionRequest(model_id=model_id, version_number=version_number, touch=touch)
        return await call_idempotent(METADATA, lambda: self._stub.ResolveVersion(request, timeout=self._timeout))

    async def commit_version(self, info: api.ModelVersionInfo, blob_key: str) -> metadata_pb2.CommitVersionReply:
        # Idempotent per blob_key, so a retry after a lost reply is safe.
        request = metadata_pb2.CommitVersionRequest(version_info=info, blob_key=blob_key)
        return await call_idempotent(METADATA, lambda: self._stub.CommitVersion(request, timeout=self._timeout))

    async def import_model(self, info: api.ModelInfo) -> admin_pb2.ImportModelReply:
        # Creates only when missing: a retry after a lost reply answers the same.
        request = admin_pb2.ImportModelRequest(model_info=info)
        return await call_idempotent(METADATA, lambda: self._stub.ImportModel(request, timeout=self._timeout))

    async def import_version(self, info: api.ModelVersionInfo, blob_key: str) -> admin_pb2.ImportVersionReply:
        # Idempotent per blob_key, as a commit is.
        request = metadata_pb2.CommitVersionRequest(version_info=info, blob_key=blob_key)
        return await call_idempotent(METADATA, lambda: self._stub.ImportVersion(request, timeout=self._timeout))

    async def forget_lost_version(self, blob_key: str) -> bool:
        request = metadata_pb2.ForgetLostVersionRequest(blob_key=blob_key)
        reply = await call_idempotent(METADATA, lambda: self._stub.ForgetLostVersion(request, timeout=self._timeout))
        return reply.forgotten

    def watch_versions(self, model_id: str, after_version: int | None, model_incarnation: int) -> grpc.aio.UnaryStreamCall:
        """A bounded-lifetime watch: the caller renews it when it ends, from
        the last version it received (None: from the latest), of the model
        incarnation it followed (0: whichever exists)."""
        return self._stub.WatchVersions(
            metadata_pb2.WatchVersionsRequest(
                model_id=model_id, after_version=after_version, model_incarnation=model_incarnation
            ),
            timeout=self._watch_timeout,
        )


class BlobStoreClient:
    """The calls the frontend makes to `registry.BlobStore`, each to the
    replica it is given: which replica, and what a failure means for the
    next call, is decided in blob_replicas.py (`BlobRouter`).

    The data path carries protobuf messages as raw bytes: a client's upload
    body is forwarded as the PutBlob message it already is, and GetBlob's
    replies are forwarded to the client as the RetrieveVersionData replies
    they already are, so the frontend never re-encodes a chunk.
    """

    _PUT = f"/{service_names.BLOBSTORE}/PutBlob"
    _GET = f"/{service_names.BLOBSTORE}/GetBlob"

    def __init__(self, config: FrontendConfig) -> None:
        self._config = config

    async def put(self, replica: Replica, size: int, requests: AsyncIterator[bytes]) -> None:
        """Streams `requests` (encoded header, chunks, finish) into `replica`.
        Raises grpc.aio.AioRpcError."""
        put = replica.channel.stream_unary(
            self._PUT, request_serializer=None, response_deserializer=blobstore_pb2.PutBlobReply.FromString
        )
        # A request iterator, not call.write(): the OpenTelemetry aio
        # interceptor breaks write()/done_writing() streams.
        call = put(requests, timeout=self._config.blob_stream_timeout(size))
        try:
            await call
        except grpc.aio.AioRpcError as error:
            raise await refusal_behind(call, error) from None

    def get(
        self, replica: Replica, key: str, *, archived: bool, expected_size: int, expected_sha256: bytes
    ) -> grpc.aio.UnaryStreamCall:
        """GetBlob on `replica`: its replies, still encoded. Raises
        grpc.aio.AioRpcError while iterated."""
        request = blobstore_pb2.GetBlobRequest(
            key=key,
            archived=archived,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            chunk_size=self._config.sent_chunk_size,
        )
        get = replica.channel.unary_stream(
            self._GET, request_serializer=blobstore_pb2.GetBlobRequest.SerializeToString, response_deserializer=None
        )
        return get(request, timeout=self._config.blob_stream_timeout(expected_size))

    async def delete(self, replica: Replica, key: str, *, archived: bool) -> None:
        """DeleteBlob on `replica`, retried there on UNAVAILABLE (deleting is
        idempotent); a failure left is raised as a RegistryError."""
        request = blobstore_pb2.DeleteBlobRequest(key=key, archived=archived)
        await call_idempotent(
            BLOBSTORE,
            lambda: replica.stub.DeleteBlob(request, timeout=self._config.internal_call_timeout_seconds),
        )


class UpstreamHealth:
    """Asks Envoy whether an internal service has a healthy replica (only
    metadata's is asked: the frontend sees the blobstores it calls itself),
    and whether Envoy routes public calls to a frontend that serves."""

    _SERVICES = {METADATA: service_names.METADATA}

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)
        self._timeout = timeout

    async def is_serving(self, upstream: str) -> bool:
        return await self._check(self._SERVICES[upstream], ((UPSTREAM_HEADER, upstream),))

    async def public_endpoint_serving(self) -> bool:
        """Whether a public call made now would reach a frontend whose stack
        serves: Envoy's internal listener routes health checks without the
        upstream header to the frontend cluster, as the public listener
        routes the public API, so this fails ("no healthy upstream") until
        Envoy's own health check has put a frontend in rotation, which may
        be up to its interval after this frontend started serving."""
        return await self._check(service_names.MODEL_REGISTRY, ())

    async def _check(self, service: str, metadata: tuple[tuple[str, str], ...]) -> bool:
        try:
            reply = await self._stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self._timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
