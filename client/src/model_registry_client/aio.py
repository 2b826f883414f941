"""The asyncio client: the same methods as `RegistryClient`, awaitable.

File reads, writes and hashing run in worker threads so that the event loop
stays responsive while large models move.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any, Union, overload

import grpc
import grpc.aio

from ._common import (
    DEFAULT_CHUNK_SIZE,
    PAGE_SIZE,
    RETRY_CODES,
    Backoff,
    Download,
    PathLike,
    ProgressCallback,
    Spool,
    SyncData,
    Upload,
    VersionFilter,
    body,
    check_chunk_size,
    header,
    prepare_upload,
)
from ._channel import ChannelClient
from ._proto import pb, pb_grpc
from .errors import NotFoundError, from_rpc_error
from .records import ModelInfo, VersionInfo

AsyncData = Union[SyncData, AsyncIterable[bytes]]
"""What the async `push` accepts: everything the sync one does, or an async iterable of byte chunks."""

_DONE = object()


async def _in_thread(iterator: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator, advanced in a worker thread."""
    while (item := await asyncio.to_thread(next, iterator, _DONE)) is not _DONE:
        yield item  # type: ignore[misc]


class AsyncRegistryClient(ChannelClient):
    """An asyncio client of the model registry (`cogmentAPI.ModelRegistrySP`).

    Same arguments and methods as `RegistryClient`; the listing methods and
    `follow` are async iterators (wrap `follow` in `contextlib.aclosing` to
    unsubscribe as soon as you stop iterating). The channel is opened on first
    use, in the running event loop. Use ``async with`` or `await close()`.
    """

    channel_module = grpc.aio
    opens_at_construction = False

    @property
    def _stub(self) -> Any:
        return self._stub_of(pb_grpc.ModelRegistrySPStub)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        closing = self._close_channel()
        if closing is not None:
            await closing

    async def __aenter__(self) -> AsyncRegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    # -- models -----------------------------------------------------------

    async def create_model(self, model_id: str, user_data: dict[str, str] | None = None) -> ModelInfo:
        """Creates the model, or replaces the user data of an existing one."""
        info = ModelInfo(model_id, dict(user_data or {}))
        await self._unary("CreateOrUpdateModel", pb.CreateOrUpdateModelRequest(model_info=info.to_proto()))
        return info

    async def update_model(self, model_id: str, user_data: dict[str, str]) -> ModelInfo:
        """Replaces the user data of an existing model; `NotFoundError` if there is none."""
        await self.get_model(model_id)
        return await self.create_model(model_id, user_data)

    async def get_model(self, model_id: str) -> ModelInfo:
        """The model's info; `NotFoundError` if it does not exist."""
        reply = await self._unary("RetrieveModels", pb.RetrieveModelsRequest(model_ids=[model_id]))
        if not reply.model_infos:
            raise NotFoundError(f"model {model_id!r} not found")
        return ModelInfo.from_proto(reply.model_infos[0])

    async def list_models(self, *, page_size: int = PAGE_SIZE) -> AsyncIterator[ModelInfo]:
        """Every model, in creation order, fetched page by page as iterated."""
        handle = ""
        while True:
            request = pb.RetrieveModelsRequest(models_count=page_size, model_handle=handle)
            reply = await self._unary("RetrieveModels", request)
            for message in reply.model_infos:
                yield ModelInfo.from_proto(message)
            if not reply.model_infos or not reply.next_model_handle or reply.next_model_handle == handle:
                return
            handle = reply.next_model_handle

    async def delete_model(self, model_id: str) -> None:
        """Deletes the model and all its versions."""
        await self._unary("DeleteModel", pb.DeleteModelRequest(model_id=model_id))

    # -- versions ---------------------------------------------------------

    async def list_versions(self, model_id: str, *, page_size: int = PAGE_SIZE) -> AsyncIterator[VersionInfo]:
        """Every existing version of the model, in number order, page by page."""
        handle = ""
        while True:
            request = pb.RetrieveVersionInfosRequest(model_id=model_id, versions_count=page_size, version_handle=handle)
            reply = await self._unary("RetrieveVersionInfos", request)
            for message in reply.version_infos:
                yield VersionInfo.from_proto(message)
            if not reply.version_infos or not reply.next_version_handle or reply.next_version_handle == handle:
                return
            handle = reply.next_version_handle

    async def get_version(self, model_id: str, version: int = -1) -> VersionInfo:
        """One version's info: `version` ≥ 1 is a number, -1 the latest, -2 the one before…"""
        request = pb.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[version])
        reply = await self._unary("RetrieveVersionInfos", request)
        if not reply.version_infos:
            raise NotFoundError(f"version {version} of model {model_id!r} not found")
        return VersionInfo.from_proto(reply.version_infos[0])

    async def _prepare(self, data: AsyncData, chunk_size: int) -> Upload:
        if isinstance(data, AsyncIterable):
            check_chunk_size(chunk_size)
            spool = Spool()
            try:
                async for chunk in data:
                    await asyncio.to_thread(spool.write, bytes(chunk))
                return spool.upload(chunk_size)
            except BaseException:
                spool.file.close()
                raise
        return await asyncio.to_thread(prepare_upload, data, chunk_size)

    async def push(
        self,
        model_id: str,
        data: AsyncData,
        *,
        archived: bool = False,
        user_data: dict[str, str] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: ProgressCallback | None = None,
    ) -> VersionInfo:
        """Creates a new version from `data`; see `RegistryClient.push`. `data`
        may also be an async iterable of byte chunks (spooled to a temporary
        file first, since the header needs its size)."""
        failure: list[BaseException] = []
        with await self._prepare(data, chunk_size) as upload:

            async def requests() -> AsyncIterator[Any]:
                try:
                    yield header(model_id, upload, archived, user_data)
                    sent = 0
                    if progress:
                        progress(0, upload.size)
                    async for chunk in _in_thread(upload.chunks()):
                        yield body(chunk)
                        sent += len(chunk)
                        if progress:
                            progress(sent, upload.size)
                except Exception as exc:  # grpc.aio would only cancel the call
                    failure.append(exc)
                    raise

            try:
                reply = await self._stub.CreateVersion(requests(), metadata=self._metadata)
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
                if failure:
                    raise failure[0] from None
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise from_rpc_error(exc) from None
        return VersionInfo.from_proto(reply.version_info)

    @overload
    async def pull(self, model_id: str, version: int = -1, dest: None = None, *, progress: ProgressCallback | None = None) -> bytes: ...
    @overload
    async def pull(self, model_id: str, version: int = -1, *, dest: PathLike, progress: ProgressCallback | None = None) -> VersionInfo: ...
    @overload
    async def pull(self, model_id: str, version: int, dest: PathLike, *, progress: ProgressCallback | None = None) -> VersionInfo: ...

    async def pull(
        self,
        model_id: str,
        version: int = -1,
        dest: PathLike | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> bytes | VersionInfo:
        """A version's data, verified; see `RegistryClient.pull`."""
        info = await self.get_version(model_id, version)
        download = await asyncio.to_thread(Download, info, dest)
        request = pb.RetrieveVersionDataRequest(model_id=model_id, version_number=info.version_number)
        call = self._stub.RetrieveVersionData(request, metadata=self._metadata)
        to_file = dest is not None
        try:
            if progress:
                progress(0, info.data_size)
            try:
                async for message in call:
                    if to_file:
                        await asyncio.to_thread(download.write, message.data_chunk)
                    else:
                        download.write(message.data_chunk)
                    if progress:
                        progress(download.received, info.data_size)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None
            data = await asyncio.to_thread(download.finish)
        finally:
            call.cancel()
            download.abort()
        return info if data is None else data

    async def follow(
        self, model_id: str, *, initial_backoff: float = 0.1, max_backoff: float = 5.0
    ) -> AsyncIterator[VersionInfo]:
        """The latest version, then each new one; see `RegistryClient.follow`."""
        seen = VersionFilter()
        backoff = Backoff(initial_backoff, max_backoff)
        request = pb.VersionUpdateRequest(model_id=model_id)
        while True:
            call = self._stub.VersionUpdate(request, metadata=self._metadata)
            try:
                async for reply in call:
                    info = seen.accept(reply.version_info)
                    if info is not None:
                        backoff.reset()
                        yield info
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY_CODES:
                    raise from_rpc_error(exc) from None
            finally:
                call.cancel()
            await asyncio.sleep(backoff.next())
