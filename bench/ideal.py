"""The "ideal registry": the least work any correct registry does on one hop.

One grpc.aio server process implementing only two calls of
`cogmentAPI.ModelRegistrySP`:

- `CreateVersion` receives every chunk and SHA-256s it, stores nothing, and
  replies with a version_info carrying the size and the hash;
- `RetrieveVersionData` streams prepared 1 MiB chunks; the size to send is
  read from the model id, `ideal-<bytes>` (see `ideal_model_id`).

The benchmark divides the stack's figures by this server's to get ratios
that do not depend on the machine. Run it with
`python -m bench.ideal --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import signal
from collections.abc import AsyncIterator, AsyncIterable

import grpc
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from services.common.config import MIB

# Same limit as the stack's hops, so the same client chunks are accepted.
MESSAGE_LIMIT = 32 * MIB
SENT_CHUNK_SIZE = MIB
MODEL_ID_PREFIX = "ideal-"


def ideal_model_id(size: int) -> str:
    """The model id that makes `RetrieveVersionData` send `size` bytes."""
    return f"{MODEL_ID_PREFIX}{size}"


class IdealRegistryServicer(api_grpc.ModelRegistrySPServicer):
    """Upload: hash and drop. Download: send prepared chunks."""

    def __init__(self) -> None:
        self._full_chunk = api.RetrieveVersionDataReplyChunk(data_chunk=os.urandom(SENT_CHUNK_SIZE))

    async def CreateVersion(
        self, request_iterator: AsyncIterable[api.CreateVersionRequestChunk], context: grpc.aio.ServicerContext
    ) -> api.CreateVersionReply:
        header: api.ModelVersionInfo | None = None
        digest = hashlib.sha256()
        size = 0
        async for chunk in request_iterator:
            if chunk.HasField("header"):
                header = chunk.header.version_info
            else:
                digest.update(chunk.body.data_chunk)
                size += len(chunk.body.data_chunk)
        if header is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first chunk must be a header")
        return api.CreateVersionReply(
            version_info=api.ModelVersionInfo(
                model_id=header.model_id,
                version_number=1,
                archived=header.archived,
                data_size=size,
                data_hash=base64.standard_b64encode(digest.digest()).decode(),
                user_data=header.user_data,
            )
        )

    async def RetrieveVersionData(
        self, request: api.RetrieveVersionDataRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.RetrieveVersionDataReplyChunk]:
        size_text = request.model_id.removeprefix(MODEL_ID_PREFIX)
        if not request.model_id.startswith(MODEL_ID_PREFIX) or not size_text.isdigit():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model ids here are {MODEL_ID_PREFIX}<bytes>")
        remaining = int(size_text)
        while remaining >= SENT_CHUNK_SIZE:
            yield self._full_chunk
            remaining -= SENT_CHUNK_SIZE
        if remaining:
            yield api.RetrieveVersionDataReplyChunk(data_chunk=self._full_chunk.data_chunk[:remaining])


async def serve(port: int) -> None:
    """Serves on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ("grpc.so_reuseport", 0),
        ]
    )
    api_grpc.add_ModelRegistrySPServicer_to_server(IdealRegistryServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ideal", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
