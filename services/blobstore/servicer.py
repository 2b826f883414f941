"""`registry.BlobStore` over gRPC: thin handlers around `BlobService`.

Errors are raised as `RegistryError`s and mapped by the request interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from cogmentAPI import model_registry_pb2 as api
from registry import blobstore_pb2, blobstore_pb2_grpc

from services.blobstore.blobs import BlobService


class BlobStoreServicer(blobstore_pb2_grpc.BlobStoreServicer):
    """The internal blob API the frontend calls (directly, replica by replica)."""

    def __init__(self, blobs: BlobService) -> None:
        self._blobs = blobs

    async def PutBlob(
        self, request_iterator: AsyncIterator[blobstore_pb2.PutBlobRequest], context: grpc.aio.ServicerContext
    ) -> blobstore_pb2.PutBlobReply:
        """Stores a blob from a header, data chunks and `finish`; replies once
        it is durable (archived) or complete (memory)."""
        size = await self._blobs.put(request_iterator)
        return blobstore_pb2.PutBlobReply(size=size)

    async def GetBlob(
        self, request: blobstore_pb2.GetBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.RetrieveVersionDataReplyChunk]:
        """Streams a blob in chunks of at most chunk_size bytes, one at a time
        (gRPC flow control paces a slow reader)."""
        async with aclosing(self._blobs.get(request)) as chunks:
            async for chunk in chunks:
                yield api.RetrieveVersionDataReplyChunk(data_chunk=chunk)

    async def DescribeReplica(
        self, request: blobstore_pb2.DescribeReplicaRequest, context: grpc.aio.ServicerContext
    ) -> blobstore_pb2.DescribeReplicaReply:
        """This replica's id (named by the keys of the transient blobs it
        holds) and whether it takes new calls."""
        return blobstore_pb2.DescribeReplicaReply(replica_id=self._blobs.replica_id, serving=self._blobs.serving)

    async def DeleteBlob(
        self, request: blobstore_pb2.DeleteBlobRequest, context: grpc.aio.ServicerContext
    ) -> blobstore_pb2.DeleteBlobReply:
        """Deletes a blob; a missing blob is not an error."""
        await self._blobs.delete(request.key, archived=request.archived)
        return blobstore_pb2.DeleteBlobReply()
