"""RetrieveVersionData (`Downloads`) against in-process metadata and blobstore fakes."""

from __future__ import annotations

import base64
import logging

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api

from services.common.errors import DataLoss, InvalidArgument, NotFound, RegistryError
from services.frontend.background import BackgroundTasks
from services.frontend.downloads import Downloads
from services.frontend.tests.fakes import FakeBlobs, FakeMetadata, upstream

DATA = b"chunk_1chunk_2"


class Registry:
    def __init__(self) -> None:
        self.metadata = FakeMetadata("model")
        self.blobs = FakeBlobs()
        self.background = BackgroundTasks()
        self.downloads = Downloads(self.metadata, self.blobs)

    def add(self, key: str, data: bytes, *, archived: bool, stored: bool = True) -> api.ModelVersionInfo:
        if stored:
            self.blobs.stored[key] = data
        return self.metadata.add_version(key, data, archived=archived)

    async def read(self, version_number: int, model_id: str = "model") -> list[bytes]:
        return [chunk async for chunk in self.downloads.read_version_data(model_id, version_number)]


@pytest.fixture
def registry() -> Registry:
    return Registry()


def data_of(chunks: list[bytes]) -> bytes:
    return b"".join(api.RetrieveVersionDataReplyChunk.FromString(chunk).data_chunk for chunk in chunks)


@pytest.mark.parametrize("archived", [False, True])
async def test_the_data_streams_from_the_blob_the_version_names(registry, archived):
    info = registry.add("blob-1", DATA, archived=archived)
    chunks = await registry.read(1)
    assert data_of(chunks) == DATA and len(chunks) == 4  # the fake blobstore's 4-byte chunks
    assert registry.metadata.resolves == [("model", 1, True)]  # reading data marks the version used
    (read,) = registry.blobs.reads
    assert read == {
        "key": "blob-1",
        "archived": archived,
        "expected_size": len(DATA),
        "expected_sha256": base64.b64decode(info.data_hash),
    }


async def test_a_zero_byte_version_is_one_empty_chunk(registry):
    registry.add("blob-1", b"", archived=True)
    assert await registry.read(1) == [b""]


async def test_an_empty_model_id_is_refused(registry):
    with pytest.raises(InvalidArgument, match="model_id must not be empty"):
        await registry.read(1, model_id="")
    assert registry.metadata.resolves == []


async def test_an_unknown_version_is_metadata_s_answer(registry):
    with pytest.raises(RegistryError, match="version 7 of model 'model' not found") as error:
        await registry.read(7)
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert registry.blobs.reads == []


async def test_a_lost_transient_blob_is_not_found_and_its_version_forgotten_before_the_reply(registry):
    registry.add("blob-1", DATA, archived=False, stored=False)
    with pytest.raises(NotFound, match="version 1 of model 'model' is no longer held in memory"):
        await registry.read(1)
    # Forgotten already when NOT_FOUND is raised: nothing left in the background.
    assert registry.metadata.forgotten == ["blob-1"]
    assert "blob-1" not in registry.metadata.versions


async def test_minus_one_never_names_a_version_whose_data_is_gone(registry):
    registry.add("blob-1", b"the one that exists", archived=False)
    registry.add("blob-2", DATA, archived=False, stored=False)
    registry.add("blob-3", DATA, archived=False, stored=False)
    assert data_of(await registry.read(-1)) == b"the one that exists"
    assert registry.metadata.forgotten == ["blob-3", "blob-2"]
    assert [resolve[1] for resolve in registry.metadata.resolves] == [-1, -1, -1]


async def test_minus_one_gives_up_after_a_few_lost_versions(registry):
    for n in range(1, 7):
        registry.add(f"blob-{n}", DATA, archived=False, stored=False)
    with pytest.raises(NotFound):
        await registry.read(-1)
    assert registry.metadata.forgotten == ["blob-6", "blob-5", "blob-4", "blob-3"]


async def test_a_lost_number_is_not_resolved_again(registry):
    registry.add("blob-1", b"exists", archived=False)
    registry.add("blob-2", DATA, archived=False, stored=False)
    with pytest.raises(NotFound):
        await registry.read(2)
    assert [resolve[1] for resolve in registry.metadata.resolves] == [2]


async def test_a_lost_archived_blob_is_data_loss_and_nothing_is_forgotten(registry):
    registry.add("blob-1", DATA, archived=True, stored=False)
    with pytest.raises(DataLoss, match="archived data of version 1 of model 'model' is missing"):
        await registry.read(1)
    await registry.background.drain()
    assert registry.metadata.forgotten == []


async def test_a_version_that_cannot_be_forgotten_now_is_logged(registry, caplog):
    registry.add("blob-1", DATA, archived=False, stored=False)
    registry.metadata.forget_error = upstream(grpc.StatusCode.UNAVAILABLE)
    with caplog.at_level(logging.WARNING, logger="registry.frontend"):
        with pytest.raises(NotFound):
            await registry.read(1)
        await registry.background.drain()
    assert "could not forget the version of lost blob blob-1" in caplog.text


@pytest.mark.parametrize("archived", [False, True])
async def test_a_blobstore_failure_midway_is_passed_on_and_forgets_nothing(registry, archived):
    registry.add("blob-1", DATA, archived=archived)
    registry.blobs.get_error = grpc.StatusCode.DATA_LOSS
    received = []
    with pytest.raises(RegistryError) as error:
        async for chunk in registry.downloads.read_version_data("model", 1):
            received.append(chunk)
    assert error.value.code == grpc.StatusCode.DATA_LOSS
    assert len(received) == 1
    await registry.background.drain()
    assert registry.metadata.forgotten == []


async def test_a_client_that_stops_reading_closes_the_blob_read(registry):
    registry.add("blob-1", DATA, archived=True)
    stream = registry.downloads.read_version_data("model", 1)
    await anext(stream)
    assert registry.blobs.closed_reads == 0
    await stream.aclose()
    assert registry.blobs.closed_reads == 1
