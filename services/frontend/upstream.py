"""Typed clients of the internal services, as the frontend uses them.

Every call has a deadline; idempotent unary calls are retried on UNAVAILABLE;
failures surface as `RegistryError`s carrying the status to give our client.
Metadata calls go through Envoy's internal listener, which picks the
replica; blob calls go straight to the blobstore replica that holds (or
will hold) the blob.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from cogmentAPI import model_registry_pb2 as api
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry import blobstore_pb2, metadata_pb2, metadata_pb2_grpc

from services.common import service_names
from services.common.blob_keys import new_archived_key, new_transient_key
from services.common.errors import Unavailable
from services.common.grpc_client import UPSTREAM_HEADER, call_idempotent, upstream_error
from services.frontend.blob_replicas import BlobReplicas, Replica
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
        # Not retried: a retry after a lost reply would answer NOT_FOUND.
        try:
            return await self._stub.DeleteModel(
                metadata_pb2.DeleteModelRequest(model_id=model_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(METADATA, exc) from None

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

    async def forget_lost_version(self, blob_key: str) -> bool:
        request = metadata_pb2.ForgetLostVersionRequest(blob_key=blob_key)
        reply = await call_idempotent(METADATA, lambda: self._stub.ForgetLostVersion(request, timeout=self._timeout))
        return reply.forgotten

    def watch_versions(self, model_id: str, after_version: int) -> grpc.aio.UnaryStreamCall:
        """A bounded-lifetime watch: the caller renews it when it ends."""
        return self._stub.WatchVersions(
            metadata_pb2.WatchVersionsRequest(model_id=model_id, after_version=after_version),
            timeout=self._watch_timeout,
        )


class BlobMissing(Exception):
    """The blob a version points to is not where its key says (a transient
    blob whose replica restarted or left, or a blob deleted meanwhile)."""


class BlobStoreClient:
    """The calls the frontend makes to `registry.BlobStore`, directly to the
    replica each blob belongs to (see blob_replicas.py).

    The data path carries protobuf messages as raw bytes: a client's upload
    body is forwarded as the PutBlob message it already is, and GetBlob's
    replies are forwarded to the client as the RetrieveVersionData replies
    they already are, so the frontend never re-encodes a chunk.
    """

    _PUT = f"/{service_names.BLOBSTORE}/PutBlob"
    _GET = f"/{service_names.BLOBSTORE}/GetBlob"

    def __init__(self, replicas: BlobReplicas, config: FrontendConfig) -> None:
        self._replicas = replicas
        self._config = config

    async def place(self, archived: bool) -> tuple[str, Replica]:
        """A key for a new blob and the replica to store it: the least busy
        serving one (the only one that can hold a transient blob's bytes)."""
        replica = await self._replicas.choose()
        key = new_archived_key() if archived else new_transient_key(replica.replica_id)
        return key, replica

    async def put(self, replica: Replica, key: str, size: int, requests: AsyncIterator[bytes]) -> blobstore_pb2.PutBlobReply:
        """Streams `requests` (encoded header, chunks, finish) into `replica`.
        Raises grpc.aio.AioRpcError: the caller knows why an upload stopped."""
        put = replica.channel.stream_unary(
            self._PUT, request_serializer=None, response_deserializer=blobstore_pb2.PutBlobReply.FromString
        )
        with self._replicas.call(replica):
            try:
                # A request iterator, not call.write(): the OpenTelemetry aio
                # interceptor breaks write()/done_writing() streams.
                return await put(requests, timeout=self._config.blob_stream_timeout(size))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._replicas.report_unreachable(replica)
                raise

    async def get(
        self, key: str, *, archived: bool, expected_size: int, expected_sha256: bytes
    ) -> AsyncIterator[bytes]:
        """The encoded RetrieveVersionDataReplyChunk messages of a blob.

        Raises BlobMissing when the blob is not there (checked before the
        first chunk), grpc.aio.AioRpcError or Unavailable for other failures.
        An archived read that finds its replica unreachable before the first
        chunk moves on to another replica. A transient blob's replica that
        becomes unreachable is looked at again: down, the blob is missing;
        frozen, the read is UNAVAILABLE (the blob may come back).
        """
        request = blobstore_pb2.GetBlobRequest(
            key=key,
            archived=archived,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            chunk_size=self._config.sent_chunk_size,
        )
        tried: set[str] = set()
        holder_retried = False
        while True:
            if archived:
                replica = await self._replicas.choose(exclude=frozenset(tried))
            else:
                holder = await self._replicas.find_holder(key)
                if holder is None:
                    raise BlobMissing(key)
                replica = holder
            tried.add(replica.address)
            get = replica.channel.unary_stream(
                self._GET, request_serializer=blobstore_pb2.GetBlobRequest.SerializeToString, response_deserializer=None
            )
            started = False
            with self._replicas.call(replica):
                try:
                    async for chunk in get(request, timeout=self._config.blob_stream_timeout(expected_size)):
                        started = True
                        yield chunk
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        raise BlobMissing(key) from None
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or started:
                        raise
                    self._replicas.report_unreachable(replica)
                    if not archived:
                        # Dead (its blobs are gone), frozen (they may come
                        # back) or a blip? Look again before answering.
                        await self._replicas.refresh()
                        if replica.down:
                            raise BlobMissing(key) from None
                        if holder_retried or not replica.answering:
                            raise
                        holder_retried = True  # it answers again: one more try

    async def delete(self, key: str, *, archived: bool) -> None:
        """Deletes a blob where it lives; a transient blob whose replica is
        gone needs nothing (its memory went with it)."""
        if archived:
            replica = await self._replicas.choose()
        else:
            try:
                holder = await self._replicas.find_holder(key)
            except Unavailable:
                # Unreferenced from now on: its replica's sweeper removes it.
                return
            if holder is None:
                return  # gone with its replica's memory
            replica = holder
        request = blobstore_pb2.DeleteBlobRequest(key=key, archived=archived)
        with self._replicas.call(replica):
            await call_idempotent(
                BLOBSTORE,
                lambda: replica.stub.DeleteBlob(request, timeout=self._config.internal_call_timeout_seconds),
            )


class UpstreamHealth:
    """Asks Envoy whether an internal service has a healthy replica (only
    metadata's is asked: the frontend sees the blobstores it calls itself)."""

    _SERVICES = {METADATA: service_names.METADATA}

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)
        self._timeout = timeout

    async def is_serving(self, upstream: str) -> bool:
        try:
            reply = await self._stub.Check(
                health_pb2.HealthCheckRequest(service=self._SERVICES[upstream]),
                timeout=self._timeout,
                metadata=((UPSTREAM_HEADER, upstream),),
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
