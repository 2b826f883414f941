"""Chunking, hashing and checking of data, without a server."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat

import grpc
import pytest

from model_registry_client import DataIntegrityError, VersionInfo
from model_registry_client._common import (
    Backoff,
    Download,
    VersionFilter,
    call_metadata,
    prepare_upload,
    resolve_address,
)
from model_registry_client._proto import pb
from model_registry_client.errors import (
    InvalidArgumentError,
    NotFoundError,
    RegistryError,
    UnavailableError,
    from_rpc_error,
)

DATA = bytes(range(256)) * 41  # 10496 bytes: not a multiple of the chunk size
DATA_HASH = base64.b64encode(hashlib.sha256(DATA).digest()).decode()


def sent(upload) -> list[bytes]:
    with upload:
        return list(upload.chunks())


def test_bytes_are_chunked_and_hashed():
    upload = prepare_upload(DATA, 1000)
    assert (upload.size, upload.data_hash) == (len(DATA), DATA_HASH)
    chunks = sent(upload)
    assert [len(c) for c in chunks] == [1000] * 10 + [496]
    assert b"".join(chunks) == DATA


def test_bytearray_and_memoryview_are_accepted():
    assert b"".join(sent(prepare_upload(bytearray(DATA), 4096))) == DATA
    assert b"".join(sent(prepare_upload(memoryview(DATA), 4096))) == DATA


def test_empty_data_has_no_chunk():
    upload = prepare_upload(b"", 1000)
    assert upload.size == 0
    assert upload.data_hash == base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert sent(upload) == []


@pytest.mark.parametrize("as_str", [True, False])
def test_file_is_sized_by_stat_and_sent_in_chunks(tmp_path, as_str):
    path = tmp_path / "m.bin"
    path.write_bytes(DATA)
    upload = prepare_upload(str(path) if as_str else path, 4096)
    assert (upload.size, upload.data_hash) == (len(DATA), DATA_HASH)
    assert [len(c) for c in sent(upload)] == [4096, 4096, 2304]


def test_file_is_never_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "m.bin"
    path.write_bytes(DATA)
    sizes: list[int] = []
    real_open = open
    opened = []  # keeps the wrapped handles (and so their files) alive

    class Spy(io.BufferedReader):
        def read(self, size=-1):
            sizes.append(size)
            return super().read(size)

    def spy_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        opened.append(handle)
        return Spy(handle.raw) if file == path and mode == "rb" else handle

    monkeypatch.setattr("builtins.open", spy_open)
    assert b"".join(sent(prepare_upload(path, 1000))) == DATA
    assert sizes and all(0 < s <= 1000 for s in sizes)


def test_a_file_that_changes_while_sent_is_refused(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(DATA)
    upload = prepare_upload(path, 1000)
    path.write_bytes(DATA[:-1] + b"\0")
    with pytest.raises(DataIntegrityError, match="changed"):
        sent(upload)


def test_a_file_that_shrinks_while_sent_is_refused(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(DATA)
    upload = prepare_upload(path, 1000)
    path.write_bytes(DATA[:5000])
    with pytest.raises(DataIntegrityError, match="5000 of 10496"):
        sent(upload)


def test_seekable_stream_is_read_from_its_position():
    stream = io.BytesIO(b"skip" + DATA)
    stream.seek(4)
    upload = prepare_upload(stream, 3000)
    assert (upload.size, upload.data_hash) == (len(DATA), DATA_HASH)
    assert b"".join(sent(upload)) == DATA
    assert not stream.closed  # the caller's stream is the caller's to close


class Pipe(io.RawIOBase):
    """A non-seekable stream, like stdin from a pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(min(len(buffer), 700))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_unseekable_stream_is_spooled_for_its_size():
    upload = prepare_upload(io.BufferedReader(Pipe(DATA)), 4096)
    assert (upload.size, upload.data_hash) == (len(DATA), DATA_HASH)
    assert b"".join(sent(upload)) == DATA


def test_iterable_of_chunks_is_spooled():
    pieces = (DATA[i : i + 333] for i in range(0, len(DATA), 333))
    upload = prepare_upload(pieces, 4096)
    assert (upload.size, upload.data_hash) == (len(DATA), DATA_HASH)
    assert [len(c) for c in sent(upload)] == [4096, 4096, 2304]


def test_bad_inputs():
    with pytest.raises(TypeError, match="cannot push int"):
        prepare_upload(42, 1000)  # type: ignore[arg-type]
    for size in (0, -1, 64 * 1024 * 1024):
        with pytest.raises(ValueError, match="chunk_size"):
            prepare_upload(b"x", size)


# -- pull ----------------------------------------------------------------------


def version(data: bytes = DATA, **overrides) -> VersionInfo:
    fields = dict(
        model_id="m",
        version_number=3,
        creation_timestamp=0,
        archived=True,
        data_hash=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        data_size=len(data),
        user_data={},
    )
    fields.update(overrides)
    return VersionInfo(**fields)


def test_download_to_memory():
    download = Download(version(), None)
    for start in range(0, len(DATA), 1000):
        download.write(DATA[start : start + 1000])
    assert download.finish() == DATA


def test_download_to_file_appears_only_when_verified(tmp_path):
    dest = tmp_path / "out.bin"
    download = Download(version(), dest)
    download.write(DATA[:5000])
    assert not dest.exists()
    download.write(DATA[5000:])
    assert download.finish() is None
    assert dest.read_bytes() == DATA
    assert os.listdir(tmp_path) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask


def test_download_replaces_an_existing_file(tmp_path):
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    download = Download(version(), dest)
    download.write(DATA)
    download.finish()
    assert dest.read_bytes() == DATA


def test_download_onto_a_directory_is_refused_before_any_byte(tmp_path):
    with pytest.raises(IsADirectoryError):
        Download(version(), tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("received", "message"),
    [(DATA[:-1], "received 10495 bytes"), (DATA[:-1] + b"\0", "SHA-256"), (DATA + b"\0", "more than")],
)
def test_download_mismatch_is_a_data_integrity_error_and_leaves_nothing(tmp_path, received, message):
    dest = tmp_path / "out.bin"
    download = Download(version(), dest)
    with pytest.raises(DataIntegrityError, match=message) as error:
        download.write(received)
        download.finish()
    download.abort()
    assert error.value.code == grpc.StatusCode.DATA_LOSS
    assert os.listdir(tmp_path) == []


# -- errors, settings, follow helpers ------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.DATA_LOSS, DataIntegrityError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RegistryError),
        (grpc.StatusCode.INTERNAL, RegistryError),
    ],
)
def test_status_codes_map_to_error_classes(code, cls):
    error = from_rpc_error(FakeRpcError(code, "what happened"))
    assert type(error) is cls
    assert isinstance(error, RegistryError)
    assert (error.code, error.details) == (code, "what happened")
    assert str(error) == f"{code.name}: what happened"


def test_address_and_token_from_arguments_or_environment(monkeypatch):
    monkeypatch.delenv("MODEL_REGISTRY_ADDRESS", raising=False)
    monkeypatch.delenv("MODEL_REGISTRY_TOKEN", raising=False)
    assert resolve_address(None) == "localhost:9000"
    assert call_metadata(None) == ()
    monkeypatch.setenv("MODEL_REGISTRY_ADDRESS", "registry:1234")
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", "s3cret")
    assert resolve_address(None) == "registry:1234"
    assert resolve_address("other:1") == "other:1"
    assert call_metadata(None) == (("authorization", "Bearer s3cret"),)
    assert call_metadata("mine") == (("authorization", "Bearer mine"),)
    assert call_metadata("") == ()  # an explicit empty token disables the environment's


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(0.1, 0.5)
    delays = [backoff.next() for _ in range(5)]
    for delay, nominal in zip(delays, [0.1, 0.2, 0.4, 0.5, 0.5]):
        assert 0.8 * nominal <= delay <= nominal
    backoff.reset()
    assert backoff.next() <= 0.1


def test_version_filter_never_repeats_or_goes_back():
    seen = VersionFilter()
    numbers = [2, 2, 3, 1, 3, 5, 4, 6]
    accepted = [seen.accept(pb.ModelVersionInfo(version_number=n)) for n in numbers]
    assert [a.version_number for a in accepted if a] == [2, 3, 5, 6]
