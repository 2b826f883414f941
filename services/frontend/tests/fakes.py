"""In-process stand-ins for metadata and the blobstore, as the frontend's use
cases see them (the Protocols of uploads.py, downloads.py, following.py and
models.py).

They behave like the real services where the use cases depend on it: an
upload is stored only when it ends with `finish`, a read of a blob that is
not there raises BlobMissing, a cancelled watch raises CancelledError in its
reader, errors arrive as the RegistryErrors upstream.MetadataClient raises.
What they were asked is recorded, so that tests can tell what reached them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import grpc
from cogmentAPI import model_registry_pb2 as api
from registry import blobstore_pb2, metadata_pb2

from services.common.errors import RegistryError, UpstreamError
from services.common.wire import data_chunk_message, upload_body_data
from services.frontend.blob_replicas import BlobMissing

FAKE_BLOBSTORE = "fake-blobstore:9030"


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details or code.name)


def upstream(code: grpc.StatusCode, message: str = "") -> RegistryError:
    """What upstream.MetadataClient raises when metadata answers `code`."""
    return UpstreamError(code, message or f"metadata answered {code.name}")


def sha256_hash(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# -- blobstore ---------------------------------------------------------------


@dataclass
class Upload:
    """One PutBlob as the fake blobstore received it."""

    key: str
    header: blobstore_pb2.PutBlobRequest.Header | None = None
    data: bytearray = field(default_factory=bytearray)
    finished: bool = False


class FakeNewBlob:
    def __init__(self, blobs: FakeBlobs, key: str, archived: bool) -> None:
        self.key = key
        self.address = FAKE_BLOBSTORE
        self._blobs = blobs
        self._archived = archived

    async def put(self, size: int, requests: AsyncIterator[bytes]) -> None:
        upload = Upload(self.key)
        self._blobs.uploads.append(upload)
        async for raw in requests:
            data = upload_body_data(raw)
            if data is not None:
                upload.data += data
                continue
            message = blobstore_pb2.PutBlobRequest.FromString(raw)
            kind = message.WhichOneof("msg")
            if kind == "header":
                upload.header = message.header
            elif kind == "body":
                upload.data += message.body.data_chunk
            else:
                upload.finished = True
        if self._blobs.put_error is not None:
            raise rpc_error(self._blobs.put_error)
        if not upload.finished:
            # What the blobstore does with an upload that did not finish: discard it.
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "the upload ended without finish")
        self._blobs.stored[self.key] = bytes(upload.data)


class FakeBlobs:
    """The blob calls of the use cases (blob_replicas.BlobRouter)."""

    def __init__(self) -> None:
        self.placed: list[tuple[str, bool]] = []
        self.uploads: list[Upload] = []
        self.stored: dict[str, bytes] = {}
        self.deleted: list[str] = []
        self.reads: list[dict] = []
        self.closed_reads = 0
        # Scripted failures.
        self.put_error: grpc.StatusCode | None = None
        self.get_error: grpc.StatusCode | None = None  # raised after the first chunk
        self.delete_error: RegistryError | None = None
        # Set to hold deletions until the test releases them.
        self.deletions_held: asyncio.Event | None = None
        self.chunk_size = 4

    async def place(self, archived: bool) -> FakeNewBlob:
        key = f"blob-{len(self.placed) + 1}"
        self.placed.append((key, archived))
        return FakeNewBlob(self, key, archived)

    def get(
        self, key: str, *, archived: bool, expected_size: int, expected_sha256: bytes
    ) -> AsyncGenerator[bytes, None]:
        self.reads.append(
            {"key": key, "archived": archived, "expected_size": expected_size, "expected_sha256": expected_sha256}
        )
        return self._chunks(key)

    async def _chunks(self, key: str) -> AsyncGenerator[bytes, None]:
        try:
            if key not in self.stored:
                raise BlobMissing(key)
            data = self.stored[key]
            for start in range(0, len(data), self.chunk_size):
                yield data_chunk_message(data[start : start + self.chunk_size])
                if self.get_error is not None:
                    raise rpc_error(self.get_error)
        finally:
            self.closed_reads += 1

    async def delete(self, key: str, *, archived: bool) -> None:
        if self.deletions_held is not None:
            await self.deletions_held.wait()
        if self.delete_error is not None:
            raise self.delete_error
        self.deleted.append(key)
        self.stored.pop(key, None)


# -- metadata ----------------------------------------------------------------


_END = object()  # the watch ends without an error
_CANCELLED = object()


class FakeWatch:
    """An internal watch (grpc.aio.UnaryStreamCall): gives what is fed, in
    order (a version is given as the WatchVersionsReply carrying it);
    cancelling it makes its reader raise CancelledError, as grpc does."""

    def __init__(self, *items: api.ModelVersionInfo | grpc.StatusCode | object) -> None:
        self._items: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        for item in items:
            self.feed(item)

    def feed(self, item: api.ModelVersionInfo | grpc.StatusCode | object) -> None:
        """A version to give, a status (or an AioRpcError) to end with, or END."""
        self._items.put_nowait(item)

    def __aiter__(self) -> FakeWatch:
        return self

    async def __anext__(self) -> metadata_pb2.WatchVersionsReply:
        if self.cancelled:
            raise asyncio.CancelledError()
        item = await self._items.get()
        if item is _CANCELLED:
            raise asyncio.CancelledError()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, grpc.StatusCode):
            raise rpc_error(item)
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        if isinstance(item, api.ModelVersionInfo):
            return metadata_pb2.WatchVersionsReply(version_info=item)
        return item

    def cancel(self) -> bool:
        if self.cancelled:
            return False
        self.cancelled = True
        self._items.put_nowait(_CANCELLED)
        return True


END = _END


def version(number: int, model_id: str = "model") -> api.ModelVersionInfo:
    return api.ModelVersionInfo(model_id=model_id, version_number=number)


def started(after_version: int = 0, incarnation: int = 7) -> metadata_pb2.WatchVersionsReply:
    """The first reply of a watch: registered, every version above `after_version` follows."""
    return metadata_pb2.WatchVersionsReply(
        started=metadata_pb2.WatchVersionsReply.Started(model_incarnation=incarnation, after_version=after_version)
    )


class FakeMetadata:
    """Metadata's calls, over a dictionary of models and their versions."""

    def __init__(self, *model_ids: str) -> None:
        self.models: dict[str, api.ModelInfo] = {m: api.ModelInfo(model_id=m) for m in model_ids}
        # blob key -> committed version
        self.versions: dict[str, api.ModelVersionInfo] = {}
        self.commits: list[tuple[api.ModelVersionInfo, str]] = []
        self.resolves: list[tuple[str, int, bool]] = []
        self.forgotten: list[str] = []
        self.upserts: list[api.ModelInfo] = []
        # (model_id, after_version, model_incarnation) of each watch asked for.
        self.watches: list[tuple[str, int | None, int]] = []
        self.version_info_requests: list[api.RetrieveVersionInfosRequest] = []
        self.scripted_watches: list[FakeWatch] = []
        # Scripted answers.
        self.commit_error: RegistryError | None = None
        self.evicted: list[metadata_pb2.BlobRef] = []
        self.deleted_blobs: list[metadata_pb2.BlobRef] = []
        self.forget_error: RegistryError | None = None

    def _model(self, model_id: str) -> api.ModelInfo:
        if model_id not in self.models:
            raise upstream(grpc.StatusCode.NOT_FOUND, f"model {model_id!r} not found")
        return self.models[model_id]

    async def upsert_model(self, info: api.ModelInfo) -> None:
        self.upserts.append(info)
        self.models[info.model_id] = info

    async def delete_model(self, model_id: str) -> metadata_pb2.DeleteModelReply:
        self._model(model_id)
        del self.models[model_id]
        return metadata_pb2.DeleteModelReply(deleted_blobs=self.deleted_blobs)

    async def retrieve_models(self, request: api.RetrieveModelsRequest) -> api.RetrieveModelsReply:
        ids = list(request.model_ids) or list(self.models)
        return api.RetrieveModelsReply(model_infos=[self._model(m) for m in ids])

    async def retrieve_version_infos(self, request: api.RetrieveVersionInfosRequest) -> api.RetrieveVersionInfosReply:
        self.version_info_requests.append(request)
        self._model(request.model_id)
        start = int(request.version_handle or 1)
        infos = sorted(
            (v for v in self.versions.values() if v.model_id == request.model_id and v.version_number >= start),
            key=lambda v: v.version_number,
        )
        if request.versions_count:
            infos = infos[: request.versions_count]
        return api.RetrieveVersionInfosReply(version_infos=infos)

    async def commit_version(self, info: api.ModelVersionInfo, blob_key: str) -> metadata_pb2.CommitVersionReply:
        committed = api.ModelVersionInfo()
        committed.CopyFrom(info)
        self.commits.append((committed, blob_key))
        if self.commit_error is not None:
            raise self.commit_error
        self._model(info.model_id)
        committed.version_number = 1 + sum(v.model_id == info.model_id for v in self.versions.values())
        self.versions[blob_key] = committed
        return metadata_pb2.CommitVersionReply(version_info=committed, evicted_blobs=self.evicted)

    def add_version(self, blob_key: str, data: bytes, *, archived: bool, model_id: str = "model") -> api.ModelVersionInfo:
        """A version committed earlier (its blob is the test's business)."""
        info = api.ModelVersionInfo(
            model_id=model_id,
            version_number=1 + sum(v.model_id == model_id for v in self.versions.values()),
            archived=archived,
            data_size=len(data),
            data_hash=sha256_hash(data),
        )
        self.versions[blob_key] = info
        return info

    async def resolve_version(
        self, model_id: str, version_number: int, *, touch: bool
    ) -> metadata_pb2.ResolveVersionReply:
        self.resolves.append((model_id, version_number, touch))
        self._model(model_id)
        for key, info in self.versions.items():
            if info.model_id == model_id and info.version_number == version_number:
                return metadata_pb2.ResolveVersionReply(version_info=info, blob_key=key)
        raise upstream(grpc.StatusCode.NOT_FOUND, f"version {version_number} of model {model_id!r} not found")

    async def forget_lost_version(self, blob_key: str) -> bool:
        if self.forget_error is not None:
            raise self.forget_error
        self.forgotten.append(blob_key)
        return self.versions.pop(blob_key, None) is not None

    def script_watches(self, *watches: FakeWatch) -> None:
        self.scripted_watches.extend(watches)

    def watch_versions(self, model_id: str, after_version: int | None, model_incarnation: int) -> FakeWatch:
        self.watches.append((model_id, after_version, model_incarnation))
        # Unscripted: a watch that starts, then on which nothing happens.
        return self.scripted_watches.pop(0) if self.scripted_watches else FakeWatch(started())
