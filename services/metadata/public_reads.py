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
reply size, handles, codes and messages, whichever process answers.

This servicer lives on a server of its own (`METADATA_READS_PORT`), not on
the internal API's port: the public reads port is the one a stranger's
call may reach (through Envoy), and it answers these two methods (and
health) only, under the public API's access policy; the internal port
stays on the closed network and carries no public traffic.
"""

from __future__ import annotations

import grpc
from cogment import model_registry_pb2_grpc as legacy_grpc
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from services.common.limits import RequestLimits
from services.metadata.servicer import MetadataServicer


class PublicReadsServicer(api_grpc.ModelRegistrySPServicer):
    """RetrieveModels and RetrieveVersionInfos of the public API (the
    methods of `service_names.PUBLIC_READS`, what Envoy routes here); every
    other public method is UNIMPLEMENTED here (Envoy never routes one)."""

    def __init__(self, reads: MetadataServicer, limits: RequestLimits) -> None:
        self._reads = reads
        self._limits = limits

    async def RetrieveModels(
        self, request: api.RetrieveModelsRequest, context: grpc.aio.ServicerContext
    ) -> api.RetrieveModelsReply:
        """Lists models (paginated) or fetches the given ids in order."""
        self._limits.check_retrieve_models(request.model_ids)
        return await self._reads.RetrieveModels(request, context)

    async def RetrieveVersionInfos(
        self, request: api.RetrieveVersionInfosRequest, context: grpc.aio.ServicerContext
    ) -> api.RetrieveVersionInfosReply:
        """Lists versions (paginated) or fetches given numbers (-n from the latest)."""
        self._limits.check_retrieve_version_infos(request.model_id, request.version_numbers)
        return await self._reads.RetrieveVersionInfos(request, context)


def add_public_reads(servicer: PublicReadsServicer, server: grpc.aio.Server) -> None:
    """Registers `servicer` under the public name and its 1.x alias (the
    messages of both are the same on the wire)."""
    api_grpc.add_ModelRegistrySPServicer_to_server(servicer, server)
    legacy_grpc.add_ModelRegistrySPServicer_to_server(servicer, server)  # type: ignore[arg-type]
