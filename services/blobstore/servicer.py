"""`registry.BlobStore` over gRPC: thin handlers around `BlobService`.

Errors are raised as `RegistryError`s and mapped by the request interceptor.

The data path skips the protobuf runtime (see `services.common.wire`):
PutBlob receives its messages as raw bytes and takes the data of a body
message as a view into them, GetBlob sends pre-encoded replies. Both are
registered with identity (de)serialisers by `add_to_server`; the other
messages (headers, finish, the small calls) go through protobuf as usual.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from google.protobuf.message import DecodeError
from registry import blobstore_pb2, blobstore_pb2_grpc

from services.blobstore.blobs import BlobService, PutMessage
from services.common import service_names
from services.common.errors import InvalidArgument, RegistryError
from services.common.passthrough import add_servicer
from services.common.stream_refusal import announce_refusal
from services.common.wire import data_chunk_message, upload_body_data

class BlobStoreServicer(blobstore_pb2_grpc.BlobStoreServicer):
    """The internal blob API the frontend calls (directly, replica by replica).

    Register it with `add_to_server`: PutBlob and GetBlob deal in raw bytes.
    """

    def __init__(self, blobs: BlobService) -> None:
        self._blobs = blobs

    async def PutBlob(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> blobstore_pb2.PutBlobReply:
        """Stores a blob from a header, data chunks and `finish`; replies once
        it is durable (archived) or complete (memory). A refusal is also
        announced in the initial metadata (stream_refusal.py says why)."""
        try:
            size = await self._blobs.put(decode_put_messages(request_iterator))
        except RegistryError as refusal:
            await announce_refusal(context, refusal)
            raise
        return blobstore_pb2.PutBlobReply(size=size)

    async def GetBlob(
        self, request: blobstore_pb2.GetBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Streams a blob in chunks of at most chunk_size bytes, one at a time
        (gRPC flow control paces a slow reader), as encoded
        `RetrieveVersionDataReplyChunk`s."""
        async with aclosing(self._blobs.get(request)) as chunks:
            async for chunk in chunks:
                yield data_chunk_message(chunk)

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


async def decode_put_messages(raw_messages: AsyncIterator[bytes]) -> AsyncIterator[PutMessage]:
    """PutBlob's raw messages as `BlobService.put` takes them: the data of a
    canonically encoded body as a zero-copy view, anything else parsed."""
    async for raw in raw_messages:
        data = upload_body_data(raw)
        if data is not None:
            yield data
            continue
        try:
            yield blobstore_pb2.PutBlobRequest.FromString(raw)
        except DecodeError as exc:
            raise InvalidArgument(f"PutBlob received a message that is not a valid PutBlobRequest: {exc}") from None


def add_to_server(servicer: BlobStoreServicer, server: grpc.aio.Server) -> None:
    """Registers `servicer` with PutBlob taking raw request bytes and GetBlob
    returning encoded replies."""
    add_servicer(
        server,
        servicer,
        service_names.BLOBSTORE,
        blobstore_pb2_grpc.add_BlobStoreServicer_to_server,
        raw_requests=["PutBlob"],
        raw_responses=["GetBlob"],
    )
