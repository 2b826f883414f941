"""CreateVersion (`Uploads`) against in-process metadata and blobstore fakes."""

from __future__ import annotations

import asyncio
import base64
import logging
import re

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from registry import metadata_pb2

from services.common.errors import InvalidArgument, RegistryError
from services.frontend.background import BackgroundTasks
from services.frontend.tests.fakes import FakeBlobs, FakeMetadata, sha256_hash, upstream
from services.frontend.uploads import Uploads

CACHE_MAX_BYTES = 100
DATA = b"chunk_1chunk_2"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Registry:
    def __init__(self) -> None:
        self.metadata = FakeMetadata("model")
        self.blobs = FakeBlobs()
        self.background = BackgroundTasks()
        self.uploads = Uploads(
            self.metadata, self.blobs, self.background, version_cache_max_bytes=CACHE_MAX_BYTES
        )

    async def create(self, *messages: bytes) -> api.ModelVersionInfo:
        async def stream():
            for message in messages:
                yield message

        return await self.uploads.create_version(stream())


@pytest.fixture
def registry() -> Registry:
    return Registry()


def header(**fields) -> bytes:
    fields.setdefault("model_id", "model")
    info = api.ModelVersionInfo(**fields)
    return api.CreateVersionRequestChunk(header=api.CreateVersionRequestChunk.Header(version_info=info)).SerializeToString()


def body(data: bytes) -> bytes:
    return api.CreateVersionRequestChunk(body=api.CreateVersionRequestChunk.Body(data_chunk=data)).SerializeToString()


def upload_of(data: bytes, chunk: int = 5, **fields) -> list[bytes]:
    fields.setdefault("data_size", len(data))
    return [header(**fields), *(body(data[i : i + chunk]) for i in range(0, len(data), chunk))]


# -- what succeeds ----------------------------------------------------------


@pytest.mark.parametrize("archived", [False, True])
async def test_the_data_is_stored_then_committed_under_its_key(registry, archived):
    info = await registry.create(*upload_of(DATA, archived=archived, user_data={"step": "1"}))
    ((key, stored_archived),) = registry.blobs.placed
    assert stored_archived == archived
    assert registry.blobs.stored == {key: DATA}
    ((committed, committed_key),) = registry.metadata.commits
    assert committed_key == key
    assert committed.data_hash == sha256_hash(DATA) and committed.data_size == len(DATA)
    assert (info.version_number, info.archived, dict(info.user_data)) == (1, archived, {"step": "1"})
    (upload,) = registry.blobs.uploads
    assert (upload.header.key, upload.header.size, upload.header.archived) == (key, len(DATA), archived)


async def test_a_data_hash_that_matches_is_accepted(registry):
    info = await registry.create(*upload_of(DATA, data_hash=sha256_hash(DATA)))
    assert info.data_hash == sha256_hash(DATA)


async def test_a_zero_byte_version_in_an_empty_body_takes_the_slow_path(registry):
    # An empty body is encoded 0x12 0x00, not the canonical layout: parsed, then re-encoded.
    info = await registry.create(header(data_size=0), body(b""))
    assert info.data_size == 0
    assert list(registry.blobs.stored.values()) == [b""]


async def test_a_transient_version_of_exactly_the_cache_budget_is_accepted(registry):
    data = b"x" * CACHE_MAX_BYTES
    await registry.create(*upload_of(data, chunk=30))
    assert list(registry.blobs.stored.values()) == [data]


async def test_an_archived_version_larger_than_the_cache_budget_is_accepted(registry):
    data = b"x" * (CACHE_MAX_BYTES + 1)
    await registry.create(*upload_of(data, chunk=50, archived=True))
    assert list(registry.blobs.stored.values()) == [data]


# -- bad headers: nothing moves ----------------------------------------------


async def bad_header(registry: Registry, code: grpc.StatusCode, match: str, *messages: bytes) -> None:
    with pytest.raises(RegistryError, match=match) as error:
        await registry.create(*messages)
    assert error.value.code == code
    assert registry.blobs.placed == [] and registry.metadata.commits == []


async def test_an_empty_stream_is_refused(registry):
    await bad_header(registry, INVALID, "empty stream")


async def test_a_first_message_that_is_a_body_is_refused(registry):
    await bad_header(registry, INVALID, "must be a header, not a body", body(DATA))


async def test_a_first_message_that_is_not_a_chunk_is_refused(registry):
    await bad_header(registry, INVALID, "message 1 of CreateVersion is not a CreateVersionRequestChunk", b"\xff\xff")


async def test_an_empty_model_id_is_refused(registry):
    await bad_header(registry, INVALID, "model_id must not be empty", header(model_id="", data_size=1), body(b"x"))


@pytest.mark.parametrize("data_hash", ["not base64!", base64.b64encode(b"short").decode()])
async def test_a_malformed_data_hash_is_refused(registry, data_hash):
    await bad_header(registry, INVALID, "SHA-256", *upload_of(DATA, data_hash=data_hash))


async def test_a_transient_version_too_big_for_the_cache_is_refused(registry):
    data = b"x" * (CACHE_MAX_BYTES + 1)
    await bad_header(registry, grpc.StatusCode.RESOURCE_EXHAUSTED, "VERSION_CACHE_MAX_BYTES.*archive it instead", *upload_of(data, chunk=50))


async def test_an_unknown_model_uploads_nothing(registry):
    await bad_header(registry, grpc.StatusCode.NOT_FOUND, "model 'ghost' not found", *upload_of(DATA, model_id="ghost"))


# -- bad data: the blobstore never gets `finish` ------------------------------


async def refused_upload(registry: Registry, match: str, *messages: bytes) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await registry.create(*messages)
    (upload,) = registry.blobs.uploads
    assert not upload.finished
    assert registry.blobs.stored == {} and registry.metadata.commits == []


async def test_fewer_bytes_than_announced(registry):
    await refused_upload(registry, "received 14 bytes but header.version_info.data_size announced 15", *upload_of(DATA, data_size=15))


async def test_more_bytes_than_announced(registry):
    await refused_upload(registry, "more than the 13 bytes announced", *upload_of(DATA, data_size=13))
    # It stopped at the chunk that went over: the rest was not forwarded.
    assert len(registry.blobs.uploads[0].data) == 10


async def test_a_hash_mismatch(registry):
    wrong = sha256_hash(b"something else")
    await refused_upload(registry, re.escape(f"is {sha256_hash(DATA)}, not the data_hash {wrong}"), *upload_of(DATA, data_hash=wrong))


async def test_a_second_header(registry):
    await refused_upload(registry, "message 3 of CreateVersion is not a body", header(data_size=14), body(b"chunk_1"), header())


async def test_a_message_that_is_not_a_chunk(registry):
    await refused_upload(
        registry, "message 2 of CreateVersion is not a CreateVersionRequestChunk", header(data_size=14), b"\xff\xff"
    )


async def test_a_blobstore_failure_is_passed_on(registry):
    registry.blobs.put_error = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(RegistryError) as error:
        await registry.create(*upload_of(DATA))
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert "blobstore" in error.value.message
    assert registry.metadata.commits == []


# -- the commit, and the blob's fate ------------------------------------------


async def upload_whose_commit_fails(registry, code: grpc.StatusCode) -> str:
    """Uploads DATA with metadata answering the commit with `code`; the
    client must get that code. Returns the key of the blob it placed, once
    the background work after the reply is done."""
    registry.metadata.commit_error = upstream(code)
    with pytest.raises(RegistryError) as error:
        await registry.create(*upload_of(DATA))
    assert error.value.code == code
    await registry.background.drain()
    ((key, _),) = registry.blobs.placed
    return key


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
async def test_a_commit_metadata_refused_deletes_the_blob(registry, code):
    key = await upload_whose_commit_fails(registry, code)
    assert registry.blobs.deleted == [key] and registry.blobs.stored == {}


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED]
)
async def test_a_commit_of_unknown_outcome_keeps_the_blob_for_the_sweeper(registry, code):
    key = await upload_whose_commit_fails(registry, code)
    assert registry.blobs.deleted == [] and key in registry.blobs.stored


async def test_evicted_blobs_are_deleted_after_the_reply(registry):
    registry.blobs.stored.update({"old-1": b"a", "old-2": b"b"})
    registry.metadata.evicted = [
        metadata_pb2.BlobRef(key="old-1", archived=False),
        metadata_pb2.BlobRef(key="old-2", archived=False),
    ]
    registry.blobs.deletions_held = asyncio.Event()
    # Replies while the deletions wait.
    info = await asyncio.wait_for(registry.create(*upload_of(DATA)), timeout=5)
    assert info.version_number == 1 and registry.blobs.deleted == []
    registry.blobs.deletions_held.set()
    await registry.background.drain()
    assert sorted(registry.blobs.deleted) == ["old-1", "old-2"]


async def test_an_evicted_blob_that_cannot_be_deleted_is_left_to_the_sweeper(registry, caplog):
    registry.metadata.evicted = [metadata_pb2.BlobRef(key="old-1", archived=False)]
    registry.blobs.delete_error = upstream(grpc.StatusCode.UNAVAILABLE)
    with caplog.at_level(logging.WARNING, logger="registry.frontend"):
        await registry.create(*upload_of(DATA))
        await registry.background.drain()
    assert "could not delete blob old-1 (left to the sweeper)" in caplog.text
