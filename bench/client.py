"""The benchmark's gRPC clients of `cogmentAPI.ModelRegistrySP`.

- `TransferClient` (sync stubs) moves data: on this machine a sync stream
  costs the client about half the CPU of a grpc.aio one, so the client
  limits the ideal registry as little as possible. Concurrent transfers use
  one `TransferClient` (one connection) per thread.
- `AsyncClient` (grpc.aio) makes small calls and follows VersionUpdate, where
  many concurrent calls and streams are cheaper on one event loop than on
  as many threads.

Payloads are one random 1 MiB block repeated (the registry cannot dedupe,
and the client never holds a whole model); uploads send 1 MiB chunks.
Expected hashes are computed once per size, outside any timing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import time
from collections.abc import Iterator

import grpc
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2_grpc

from bench.ideal import MESSAGE_LIMIT
from services.common.config import MIB

UPLOAD_CHUNK_SIZE = MIB
CONNECT_TIMEOUT_SECONDS = 30.0
_BLOCK = os.urandom(UPLOAD_CHUNK_SIZE)
_FULL_BODY = api.CreateVersionRequestChunk(body=api.CreateVersionRequestChunk.Body(data_chunk=_BLOCK))


class BenchmarkError(RuntimeError):
    """A server answered something a correct registry would not."""


@functools.cache
def payload_hash(size: int) -> str:
    """base64 SHA-256 of the `size`-byte payload, as the registry reports it."""
    digest = hashlib.sha256()
    remaining = size
    while remaining > 0:
        digest.update(_BLOCK[: min(remaining, len(_BLOCK))])
        remaining -= len(_BLOCK)
    return base64.standard_b64encode(digest.digest()).decode()


def version_chunks(model_id: str, size: int, *, archived: bool) -> Iterator[api.CreateVersionRequestChunk]:
    """The CreateVersion request stream of a `size`-byte payload."""
    yield api.CreateVersionRequestChunk(
        header=api.CreateVersionRequestChunk.Header(
            version_info=api.ModelVersionInfo(model_id=model_id, archived=archived, data_size=size)
        )
    )
    remaining = size
    while remaining >= UPLOAD_CHUNK_SIZE:
        yield _FULL_BODY
        remaining -= UPLOAD_CHUNK_SIZE
    if remaining:
        yield api.CreateVersionRequestChunk(body=api.CreateVersionRequestChunk.Body(data_chunk=_BLOCK[:remaining]))


def checked_version(reply: api.CreateVersionReply, size: int) -> api.ModelVersionInfo:
    """The reply's version info, once its size and hash match the payload's."""
    info = reply.version_info
    if info.data_size != size or info.data_hash != payload_hash(size):
        raise BenchmarkError(
            f"CreateVersion of {size} bytes on {info.model_id} replied size {info.data_size}, hash {info.data_hash!r}"
        )
    return info


def client_channel_options() -> list[tuple[str, int]]:
    """The stack's message limits, so that any chunk it accepts can be sent."""
    return [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ]


def _model_info(model_id: str) -> api.ModelInfo:
    return api.ModelInfo(model_id=model_id, user_data={"owner": "bench"})


class TransferClient:
    """One connection (sync stubs) that uploads and downloads versions."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address, options=client_channel_options())
        grpc.channel_ready_future(self._channel).result(timeout=CONNECT_TIMEOUT_SECONDS)
        self._stub = api_grpc.ModelRegistrySPStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def create_model(self, model_id: str) -> None:
        self._stub.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=_model_info(model_id)))

    def delete_model(self, model_id: str) -> None:
        self._stub.DeleteModel(api.DeleteModelRequest(model_id=model_id))

    def retrieve_version_infos(self, request: api.RetrieveVersionInfosRequest) -> api.RetrieveVersionInfosReply:
        return self._stub.RetrieveVersionInfos(request)

    def upload(self, model_id: str, size: int, *, archived: bool) -> tuple[float, api.ModelVersionInfo]:
        """Creates a `size`-byte version; returns (seconds to the checked reply, its info)."""
        started = time.perf_counter()
        reply = self._stub.CreateVersion(version_chunks(model_id, size, archived=archived))
        elapsed = time.perf_counter() - started
        return elapsed, checked_version(reply, size)

    def download(self, model_id: str, version_number: int, expected_size: int, *, verify: bool = False) -> float:
        """Reads a version's data; returns the seconds to the last byte.

        Always checks the size; `verify` also checks the bytes (slower: use
        it outside timed runs)."""
        digest = hashlib.sha256() if verify else None
        received = 0
        started = time.perf_counter()
        for chunk in self._stub.RetrieveVersionData(
            api.RetrieveVersionDataRequest(model_id=model_id, version_number=version_number)
        ):
            received += len(chunk.data_chunk)
            if digest is not None:
                digest.update(chunk.data_chunk)
        elapsed = time.perf_counter() - started
        where = f"RetrieveVersionData of {model_id} v{version_number}"
        if received != expected_size:
            raise BenchmarkError(f"{where}: {received} bytes, expected {expected_size}")
        if digest is not None and base64.standard_b64encode(digest.digest()).decode() != payload_hash(expected_size):
            raise BenchmarkError(f"{where}: wrong bytes")
        return elapsed


class AsyncClient:
    """One grpc.aio connection, for small calls and VersionUpdate."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address, options=client_channel_options())
        self.stub = api_grpc.ModelRegistrySPStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def connect(self) -> AsyncClient:
        """Waits until the connection is up, so that no timing includes it."""
        await self.channel.channel_ready()
        return self

    async def close(self) -> None:
        await self.channel.close()

    async def create_model(self, model_id: str) -> None:
        await self.stub.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=_model_info(model_id)))

    async def delete_model(self, model_id: str) -> None:
        await self.stub.DeleteModel(api.DeleteModelRequest(model_id=model_id))

    async def upload(self, model_id: str, size: int, *, archived: bool) -> api.ModelVersionInfo:
        """Creates a `size`-byte version; returns its checked info."""
        reply = await self.stub.CreateVersion(version_chunks(model_id, size, archived=archived))
        return checked_version(reply, size)
