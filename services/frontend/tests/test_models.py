"""The model calls (`Models`) against in-process metadata and blobstore fakes."""

from __future__ import annotations

import logging

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from registry import metadata_pb2

from services.common.errors import InvalidArgument, RegistryError
from services.frontend.models import Models
from services.frontend.tests.fakes import FakeBlobs, FakeMetadata, upstream


@pytest.fixture
def fakes() -> tuple[FakeMetadata, FakeBlobs, Models]:
    metadata, blobs = FakeMetadata("model"), FakeBlobs()
    return metadata, blobs, Models(metadata, blobs)


async def test_a_model_needs_an_id(fakes):
    metadata, _, models = fakes
    with pytest.raises(InvalidArgument, match="model_info.model_id must not be empty"):
        await models.create_or_update_model(api.ModelInfo(model_id=""))
    await models.create_or_update_model(api.ModelInfo(model_id="other", user_data={"type": "t"}))
    assert [info.model_id for info in metadata.upserts] == ["other"]


async def test_deleting_a_model_deletes_its_blobs_before_replying(fakes):
    metadata, blobs, models = fakes
    blobs.stored.update({"a": b"1", "b": b"2"})
    metadata.deleted_blobs = [metadata_pb2.BlobRef(key="a", archived=True), metadata_pb2.BlobRef(key="b")]
    await models.delete_model("model")
    assert sorted(blobs.deleted) == ["a", "b"] and blobs.stored == {}
    assert "model" not in metadata.models


async def test_a_blob_that_cannot_be_deleted_with_its_model_is_left_to_the_sweeper(fakes, caplog):
    metadata, blobs, models = fakes
    metadata.deleted_blobs = [metadata_pb2.BlobRef(key="a")]
    blobs.delete_error = upstream(grpc.StatusCode.UNAVAILABLE)
    with caplog.at_level(logging.WARNING, logger="registry.frontend"):
        await models.delete_model("model")
    assert "could not delete blob a (left to the sweeper)" in caplog.text
    assert "model" not in metadata.models


async def test_deleting_needs_an_id_and_an_existing_model(fakes):
    _, blobs, models = fakes
    with pytest.raises(InvalidArgument, match="model_id must not be empty"):
        await models.delete_model("")
    with pytest.raises(RegistryError) as error:
        await models.delete_model("ghost")
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert blobs.deleted == []


async def test_listing_goes_to_metadata(fakes):
    _, _, models = fakes
    reply = await models.retrieve_models(api.RetrieveModelsRequest())
    assert [info.model_id for info in reply.model_infos] == ["model"]


async def test_version_infos_need_a_model_id(fakes):
    metadata, _, models = fakes
    with pytest.raises(InvalidArgument, match="model_id must not be empty"):
        await models.retrieve_version_infos(api.RetrieveVersionInfosRequest())
    metadata.add_version("blob-1", b"x", archived=True)
    reply = await models.retrieve_version_infos(api.RetrieveVersionInfosRequest(model_id="model"))
    assert [info.version_number for info in reply.version_infos] == [1]
