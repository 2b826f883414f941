"""The public API's two small reads, answered by metadata itself.

`RetrieveModels` and `RetrieveVersionInfos` need nothing but the metadata
database, and actors ask them all the time. Envoy's public listener routes
them (under both service names, `cogmentAPI.` and the 1.x `cogment.`)
straight to this server instead of to a frontend, which would only have
forwarded them to metadata through Envoy's internal listener: two process
hops less per call (docs/design.md, "Which process answers which call").

The request is bounded by the same checks a frontend makes
(`RequestLimits.check_retrieve_*`, one function each), then answered by the
same code as the internal API's reads (`MetadataServicer`): same paging by
reply size, handles, codes and messages, whichever process answers. A
request asked again before anything was committed is answered with the same
encoded reply (reply_cache.py says why that is never stale).

This servicer lives on a server of its own (`METADATA_READS_PORT`), not on
the internal API's port: the public reads port is the one a stranger's
call may reach (through Envoy), and it answers these two methods (and
health) only, under the public API's access policy; the internal port
stays on the closed network and carries no public traffic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from cogment import model_registry_pb2_grpc as legacy_grpc
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc
from google.protobuf.message import Message
from opentelemetry import trace

from services.common import metrics, service_names
from services.common.grpc_server import request_decoder
from services.common.limits import RequestLimits
from services.common.passthrough import add_servicer
from services.metadata.reply_cache import ReplyCache
from services.metadata.servicer import MetadataServicer

Read = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]


class PublicReadsServicer(api_grpc.ModelRegistrySPServicer):
    """RetrieveModels and RetrieveVersionInfos of the public API (the
    methods of `service_names.PUBLIC_READS`, what Envoy routes here); every
    other public method is UNIMPLEMENTED here (Envoy never routes one).

    Requests are received and replies sent encoded: a request found in
    `cache` (reply_cache.py) is answered with the reply kept for it, without
    being decoded or checked again (the same bytes pass the same checks);
    any other is decoded, checked, read, encoded, and kept there."""

    def __init__(
        self,
        reads: MetadataServicer,
        limits: RequestLimits,
        cache: ReplyCache | None = None,
        package: str = api.DESCRIPTOR.package,
    ) -> None:
        self._reads = reads
        self._limits = limits
        self._cache = cache
        # The messages of both names are the same on the wire: decoded as
        # cogmentAPI's, named as the caller's service names them.
        self._decode_models = request_decoder(
            api.RetrieveModelsRequest.FromString, f"{package}.{api.RetrieveModelsRequest.DESCRIPTOR.name}"
        )
        self._decode_versions = request_decoder(
            api.RetrieveVersionInfosRequest.FromString, f"{package}.{api.RetrieveVersionInfosRequest.DESCRIPTOR.name}"
        )
        lookups = metrics.metadata().read_cache_lookups
        self._hits, self._misses = lookups.labels(outcome="hit"), lookups.labels(outcome="miss")

    def under(self, package: str) -> PublicReadsServicer:
        """The same reads (same cache) for the service of `package`."""
        return PublicReadsServicer(self._reads, self._limits, self._cache, package)

    async def RetrieveModels(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Lists models (paginated) or fetches the given ids in order."""
        return await self._answer("RetrieveModels", request, self._read_models, context)

    async def RetrieveVersionInfos(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Lists versions (paginated) or fetches given numbers (-n from the latest)."""
        return await self._answer("RetrieveVersionInfos", request, self._read_versions, context)

    async def _read_models(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = self._decode_models(raw)
        self._limits.check_retrieve_models(request.model_ids)
        return await self._reads.RetrieveModels(request, context)

    async def _read_versions(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = self._decode_versions(raw)
        self._limits.check_retrieve_version_infos(request.model_id, request.version_numbers)
        return await self._reads.RetrieveVersionInfos(request, context)

    async def _answer(self, method: str, raw: bytes, read: Read, context: grpc.aio.ServicerContext) -> bytes:
        cache = self._cache
        if cache is None:
            return (await read(raw, context)).SerializeToString()
        key = (method, raw)
        reply, version = await cache.lookup(key)
        span = trace.get_current_span()
        if reply is not None:
            self._hits.inc()
            if span.is_recording():
                # What a read would have annotated (registry.py), decoded
                # only for a trace: these bytes were a valid request before.
                model_id = self._decode_versions(raw).model_id if method == "RetrieveVersionInfos" else None
                span.set_attributes({"reply_cache": "hit", **({"model_id": model_id} if model_id else {})})
            return reply
        self._misses.inc()
        if span.is_recording():
            span.set_attribute("reply_cache", "miss")
        reply = (await read(raw, context)).SerializeToString()
        cache.put(key, version, reply)
        return reply


def add_public_reads(servicer: PublicReadsServicer, server: grpc.aio.Server) -> None:
    """Registers `servicer` under the public name and its 1.x alias (the
    messages of both are the same on the wire), receiving requests and
    sending replies encoded."""
    reads = service_names.PUBLIC_READS
    for service, add_generated in (
        (service_names.MODEL_REGISTRY, api_grpc.add_ModelRegistrySPServicer_to_server),
        (service_names.LEGACY_MODEL_REGISTRY, legacy_grpc.add_ModelRegistrySPServicer_to_server),
    ):
        package = service.rpartition(".")[0]
        add_servicer(server, servicer.under(package), service, add_generated, raw_requests=reads, raw_responses=reads)
