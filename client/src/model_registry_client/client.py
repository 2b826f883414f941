"""The synchronous client."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, overload

import grpc

from ._common import (
    DEFAULT_CHUNK_SIZE,
    PAGE_SIZE,
    RETRY_CODES,
    Backoff,
    Download,
    PathLike,
    ProgressCallback,
    SyncData,
    VersionFilter,
    body,
    check_chunk_size,
    encode_hash,
    header,
    prepare_upload,
)
from ._channel import ChannelClient
from ._proto import admin_pb, admin_pb_grpc, pb, pb_grpc
from .errors import DataIntegrityError, NotFoundError, from_rpc_error
from .records import ModelInfo, VersionInfo


@contextmanager
def _translated() -> Iterator[None]:
    """Turns gRPC errors into `RegistryError`s."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


class RegistryClient(ChannelClient):
    """A blocking client of the model registry (`cogmentAPI.ModelRegistrySP`).

    `address` defaults to $MODEL_REGISTRY_ADDRESS, else ``localhost:9000``;
    `token` to $MODEL_REGISTRY_TOKEN (sent as ``authorization: Bearer …``);
    `user` with `password` (else $MODEL_REGISTRY_PASSWORD) is sent as
    ``authorization: Basic …`` instead.
    TLS: `ca_cert` (the CA the registry's certificate chains to), and for
    mTLS `cert` and `key` (PEM paths; defaults $MODEL_REGISTRY_CA_CERT,
    $MODEL_REGISTRY_CERT, $MODEL_REGISTRY_KEY), or your own `credentials`.
    `timeout` bounds each unary call (seconds);
    data transfers and `follow` are not bounded. Use as a context manager or
    call `close()`. Every failure is a `RegistryError` subclass.
    """

    @property
    def _stub(self) -> Any:
        return self._stub_of(pb_grpc.ModelRegistrySPStub)

    @property
    def _admin(self) -> Any:
        return self._stub_of(admin_pb_grpc.AdminStub)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._close_channel()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Any, request: Any) -> Any:
        with _translated():
            return method(request, timeout=self._timeout, metadata=self._metadata)

    # -- models -----------------------------------------------------------

    def create_model(self, model_id: str, user_data: dict[str, str] | None = None) -> ModelInfo:
        """Creates the model, or replaces the user data of an existing one."""
        info = ModelInfo(model_id, dict(user_data or {}))
        self._unary(self._stub.CreateOrUpdateModel, pb.CreateOrUpdateModelRequest(model_info=info.to_proto()))
        return info

    def update_model(self, model_id: str, user_data: dict[str, str]) -> ModelInfo:
        """Replaces the user data of an existing model; `NotFoundError` if there is
        none (checked first: a model deleted meanwhile is created again)."""
        self.get_model(model_id)
        return self.create_model(model_id, user_data)

    def get_model(self, model_id: str) -> ModelInfo:
        """The model's info; `NotFoundError` if it does not exist."""
        reply = self._unary(self._stub.RetrieveModels, pb.RetrieveModelsRequest(model_ids=[model_id]))
        if not reply.model_infos:
            raise NotFoundError(f"model {model_id!r} not found")
        return ModelInfo.from_proto(reply.model_infos[0])

    def list_models(self, *, page_size: int = PAGE_SIZE) -> Iterator[ModelInfo]:
        """Every model, in creation order, fetched page by page as iterated."""
        handle = ""
        while True:
            request = pb.RetrieveModelsRequest(models_count=page_size, model_handle=handle)
            reply = self._unary(self._stub.RetrieveModels, request)
            for message in reply.model_infos:
                yield ModelInfo.from_proto(message)
            if not reply.model_infos or not reply.next_model_handle or reply.next_model_handle == handle:
                return
            handle = reply.next_model_handle

    def delete_model(self, model_id: str) -> None:
        """Deletes the model and all its versions (numbering restarts at 1 if it is created again)."""
        self._unary(self._stub.DeleteModel, pb.DeleteModelRequest(model_id=model_id))

    # -- versions ---------------------------------------------------------

    def list_versions(self, model_id: str, *, page_size: int = PAGE_SIZE) -> Iterator[VersionInfo]:
        """Every existing version of the model, in number order, page by page."""
        handle = ""
        while True:
            request = pb.RetrieveVersionInfosRequest(model_id=model_id, versions_count=page_size, version_handle=handle)
            reply = self._unary(self._stub.RetrieveVersionInfos, request)
            for message in reply.version_infos:
                yield VersionInfo.from_proto(message)
            if not reply.version_infos or not reply.next_version_handle or reply.next_version_handle == handle:
                return
            handle = reply.next_version_handle

    def get_version(self, model_id: str, version: int = -1) -> VersionInfo:
        """One version's info: `version` ≥ 1 is a number, -1 the latest, -2 the one before…"""
        request = pb.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[version])
        reply = self._unary(self._stub.RetrieveVersionInfos, request)
        if not reply.version_infos:
            raise NotFoundError(f"version {version} of model {model_id!r} not found")
        return VersionInfo.from_proto(reply.version_infos[0])

    def push(
        self,
        model_id: str,
        data: SyncData,
        *,
        archived: bool = False,
        user_data: dict[str, str] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: ProgressCallback | None = None,
    ) -> VersionInfo:
        """Creates a new version from `data` and returns its info (with its number).

        `data` is bytes, a file path, a binary stream (read from its current
        position) or an iterable of byte chunks. It is streamed in chunks of
        `chunk_size`; its size and SHA-256 go in the header, so the registry
        stores the version only if every byte arrived as read. Files and
        seekable streams are read twice (hash, then send); other streams are
        spooled to a temporary file first. `archived` versions are durable;
        others are transient (kept in memory, evicted least-recently-used).
        """
        failure: list[BaseException] = []
        with prepare_upload(data, chunk_size) as upload:

            def requests() -> Iterator[Any]:
                try:
                    yield header(model_id, upload, archived, user_data)
                    sent = 0
                    if progress:
                        progress(0, upload.size)
                    for chunk in upload.chunks():
                        yield body(chunk)
                        sent += len(chunk)
                        if progress:
                            progress(sent, upload.size)
                except Exception as exc:  # gRPC would only report CANCELLED
                    failure.append(exc)
                    raise

            try:
                reply = self._stub.CreateVersion(requests(), metadata=self._metadata)
            except grpc.RpcError as exc:
                if failure:
                    raise failure[0] from None
                raise from_rpc_error(exc) from None
        return VersionInfo.from_proto(reply.version_info)

    @overload
    def pull(self, model_id: str, version: int = -1, dest: None = None, *, progress: ProgressCallback | None = None) -> bytes: ...
    @overload
    def pull(self, model_id: str, version: int = -1, *, dest: PathLike, progress: ProgressCallback | None = None) -> VersionInfo: ...
    @overload
    def pull(self, model_id: str, version: int, dest: PathLike, *, progress: ProgressCallback | None = None) -> VersionInfo: ...

    def pull(
        self,
        model_id: str,
        version: int = -1,
        dest: PathLike | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> bytes | VersionInfo:
        """A version's data (-1: the latest), checked against its size and SHA-256.

        Without `dest`, returns the bytes. With `dest`, streams them to a
        temporary file beside it, renamed onto `dest` once verified, and
        returns the version's info. `DataIntegrityError` on any mismatch.
        """
        info = self.get_version(model_id, version)
        download = Download(info, dest)
        request = pb.RetrieveVersionDataRequest(model_id=model_id, version_number=info.version_number)
        call = self._stub.RetrieveVersionData(request, metadata=self._metadata)
        try:
            if progress:
                progress(0, info.data_size)
            with _translated():
                for message in call:
                    download.write(message.data_chunk)
                    if progress:
                        progress(download.received, info.data_size)
            data = download.finish()
        finally:
            call.cancel()
            download.abort()
        return info if data is None else data

    # -- administration (registry.Admin; the admin role when auth is on) ----

    def import_model(self, model_id: str, user_data: dict[str, str] | None = None) -> tuple[ModelInfo, bool]:
        """Creates the model with `user_data` unless it exists (an existing
        model keeps its own). Returns the model as stored and whether it was created."""
        request = admin_pb.ImportModelRequest(model_info=ModelInfo(model_id, dict(user_data or {})).to_proto())
        reply = self._unary(self._admin.ImportModel, request)
        return ModelInfo.from_proto(reply.model_info), reply.created

    def import_version(
        self,
        info: VersionInfo,
        path: PathLike,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: ProgressCallback | None = None,
    ) -> tuple[VersionInfo, bool]:
        """Imports one archived version, the file at `path`, with the number,
        creation_timestamp, data_hash and user_data of `info` (another
        registry's). The file is read once, hashed as it is sent; the
        registry stores the version only if the bytes match `info.data_size`
        and `info.data_hash` (else `DataIntegrityError`, and nothing is
        stored). Returns the version as stored and whether it was already
        there with the same data (then nothing changed)."""
        check_chunk_size(chunk_size)
        failure: list[BaseException] = []
        digest = hashlib.sha256()
        sent = 0

        def requests() -> Iterator[Any]:
            nonlocal sent
            try:
                version = pb.ModelVersionInfo(
                    model_id=info.model_id,
                    version_number=info.version_number,
                    creation_timestamp=info.creation_timestamp,
                    archived=True,
                    data_hash=info.data_hash,
                    data_size=info.data_size,
                    user_data=info.user_data,
                )
                yield pb.CreateVersionRequestChunk(header=pb.CreateVersionRequestChunk.Header(version_info=version))
                with open(path, "rb") as source:
                    while chunk := source.read(chunk_size):
                        digest.update(chunk)
                        sent += len(chunk)
                        yield body(chunk)
                        if progress:
                            progress(sent, info.data_size)
            except Exception as exc:  # gRPC would only report CANCELLED
                failure.append(exc)
                raise

        try:
            reply = self._admin.ImportVersion(requests(), metadata=self._metadata)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            error = from_rpc_error(exc)
            actual = encode_hash(digest.digest())
            if error.code == grpc.StatusCode.INVALID_ARGUMENT and (sent, actual) != (info.data_size, info.data_hash):
                raise DataIntegrityError(
                    f"the data ({sent} bytes, sha256 {actual}) does not match its data_size {info.data_size} "
                    f"and data_hash {info.data_hash}"
                ) from None
            raise error from None
        return VersionInfo.from_proto(reply.version_info), reply.already_imported

    def follow(self, model_id: str, *, initial_backoff: float = 0.1, max_backoff: float = 5.0) -> Iterator[VersionInfo]:
        """The latest version, then each new one as it is created, forever.

        Reconnects (with exponential backoff) when the stream ends or fails
        with UNAVAILABLE or INTERNAL; never yields a number twice or goes
        backwards. A reconnect starts again at the latest version
        (VersionUpdate has no cursor): of the versions created while it was
        disconnected, only the latest is yielded (`list_versions` has the
        others, where every one matters). Other failures are raised
        (`NotFoundError` when the model does not exist or is deleted).
        Close the iterator to unsubscribe.
        """
        seen = VersionFilter()
        backoff = Backoff(initial_backoff, max_backoff)
        request = pb.VersionUpdateRequest(model_id=model_id)
        while True:
            call = self._stub.VersionUpdate(request, metadata=self._metadata)
            try:
                for reply in call:
                    info = seen.accept(reply.version_info)
                    if info is not None:
                        backoff.reset()
                        yield info
            except grpc.RpcError as exc:
                if exc.code() not in RETRY_CODES:
                    raise from_rpc_error(exc) from None
            finally:
                call.cancel()
            time.sleep(backoff.next())


__all__ = ["RegistryClient"]
