"""Versions through Envoy: creation and its validation, numbering, negative
indexes, data round trips, eviction, concurrency."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api

from conftest import CACHE_MAX_ITEMS, SENT_CHUNK_SIZE, create_version, read_data, version_chunks

TEST_VECTOR = b"chunk_1chunk_2"
TEST_VECTOR_HASH = "jY0g3VkUK62ILPr2JuaW5g7uQi0EcJVZJu8IYp3yfhI="


def infos(registry, model_id, numbers=(), **kwargs):
    return registry.RetrieveVersionInfos(
        api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=list(numbers), **kwargs)
    )


def archive_files(stack) -> set[str]:
    """Blob files and the blobstore's own (temp files, publication records)."""
    blobs = stack.archive_dir / "blobs"
    return {str(p) for p in blobs.rglob("*") if p.is_file()} if blobs.exists() else set()


def expect_code(code, call, *args):
    with pytest.raises(grpc.RpcError) as error:
        call(*args)
    assert error.value.code() == code, error.value.details()
    return error.value.details()


def test_reply_carries_complete_info(registry, model_id):
    before = time.time_ns()
    info = create_version(registry, model_id, TEST_VECTOR, archived=True, chunk_size=7, user_data={"step": "10"})
    assert info.model_id == model_id
    assert info.version_number == 1
    assert info.data_size == 14
    assert info.data_hash == TEST_VECTOR_HASH
    assert info.archived is True
    assert dict(info.user_data) == {"step": "10"}
    assert before <= info.creation_timestamp <= time.time_ns()
    assert infos(registry, model_id).version_infos[0] == info


def test_creation_timestamp_from_header_is_kept(registry, model_id):
    info = create_version(registry, model_id, b"x", creation_timestamp=1633119005107454620)
    assert info.creation_timestamp == 1633119005107454620


def test_matching_hash_is_accepted(registry, model_id):
    assert create_version(registry, model_id, TEST_VECTOR, data_hash=TEST_VECTOR_HASH).data_hash == TEST_VECTOR_HASH


def test_invalid_creates_leave_nothing_behind(stack, registry, model_id):
    files_before = archive_files(stack)
    cases = [
        ("empty stream", iter([])),
        ("body first", iter([api.CreateVersionRequestChunk(body=api.CreateVersionRequestChunk.Body(data_chunk=b"x"))])),
        ("second header", iter(list(version_chunks(model_id, b"abc", archived=True)) + list(version_chunks(model_id, b"abc"))[:1])),
        ("too few bytes", version_chunks(model_id, b"abc", archived=True, data_size=4)),
        ("too many bytes", version_chunks(model_id, b"abcde", archived=True, data_size=4)),
        ("wrong hash", version_chunks(model_id, TEST_VECTOR, archived=True, data_hash=base64.b64encode(b"\0" * 32).decode())),
        ("malformed hash", version_chunks(model_id, TEST_VECTOR, archived=True, data_hash="not base64!")),
        ("no model id", version_chunks("", b"abc")),
    ]
    for name, requests in cases:
        details = expect_code(grpc.StatusCode.INVALID_ARGUMENT, registry.CreateVersion, requests)
        assert details, name
    expect_code(grpc.StatusCode.NOT_FOUND, registry.CreateVersion, version_chunks("no-such-model", b"abc"))
    assert list(infos(registry, model_id).version_infos) == []
    assert archive_files(stack) == files_before
    # Failed creates consumed no number.
    assert create_version(registry, model_id, b"ok").version_number == 1


def test_cancelled_upload_leaves_nothing_behind(stack, registry, model_id):
    files_before = archive_files(stack)

    def slow_requests():
        yield from version_chunks(model_id, b"a" * 1024, archived=True, data_size=4096)
        time.sleep(30)

    future = registry.CreateVersion.future(slow_requests())
    time.sleep(1.0)
    future.cancel()
    time.sleep(1.0)
    assert list(infos(registry, model_id).version_infos) == []
    assert archive_files(stack) == files_before


def test_numbers_and_negative_indexes(registry, model_id):
    for i in range(1, 5):
        assert create_version(registry, model_id, f"v{i}".encode(), archived=True).version_number == i
    assert [v.version_number for v in infos(registry, model_id).version_infos] == [1, 2, 3, 4]
    assert [v.version_number for v in infos(registry, model_id, [3, 1]).version_infos] == [3, 1]
    assert [v.version_number for v in infos(registry, model_id, [-1, -4]).version_infos] == [4, 1]
    assert read_data(registry, model_id, -2) == b"v3"
    for missing in ([5], [-5], [0]):
        expect_code(grpc.StatusCode.NOT_FOUND, infos, registry, model_id, missing)
    expect_code(grpc.StatusCode.NOT_FOUND, read_data, registry, model_id, 9)
    expect_code(grpc.StatusCode.NOT_FOUND, read_data, registry, model_id, -9)


def test_model_without_versions(registry, model_id):
    assert list(infos(registry, model_id).version_infos) == []
    expect_code(grpc.StatusCode.NOT_FOUND, infos, registry, model_id, [-1])
    expect_code(grpc.StatusCode.NOT_FOUND, infos, registry, "no-such-model")


def test_version_info_pagination_walk(registry, model_id):
    for i in range(7):
        create_version(registry, model_id, bytes([i]), archived=True)
    seen, handle = [], ""
    while True:
        reply = infos(registry, model_id, versions_count=3, version_handle=handle)
        seen += [v.version_number for v in reply.version_infos]
        handle = reply.next_version_handle
        if len(reply.version_infos) < 3:
            break
        if len(seen) == 3:
            create_version(registry, model_id, b"new", archived=True)  # appears at the end
    assert seen == list(range(1, 9))
    assert list(infos(registry, model_id, versions_count=3, version_handle=handle).version_infos) == []
    with pytest.raises(grpc.RpcError) as error:
        infos(registry, model_id, versions_count=3, version_handle="garbage")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("archived", [False, True])
def test_round_trip_respects_chunk_size(registry, model_id, archived):
    data = os.urandom(3 * SENT_CHUNK_SIZE + 12345)
    info = create_version(registry, model_id, data, archived=archived, chunk_size=700_000)
    chunks = [
        c.data_chunk
        for c in registry.RetrieveVersionData(api.RetrieveVersionDataRequest(model_id=model_id, version_number=info.version_number))
    ]
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= SENT_CHUNK_SIZE for c in chunks)
    assert info.data_hash == base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("archived", [False, True])
def test_zero_byte_version(registry, model_id, archived):
    info = create_version(registry, model_id, b"", archived=archived)
    assert info.data_size == 0
    assert read_data(registry, model_id, info.version_number) == b""


def test_transient_versions_are_evicted_least_recently_used_first(registry, model_id):
    count = CACHE_MAX_ITEMS + 2
    for i in range(1, count + 1):
        create_version(registry, model_id, f"t{i}".encode())
    # The cache holds CACHE_MAX_ITEMS transient versions in all: the two oldest are gone.
    remaining = [v.version_number for v in infos(registry, model_id).version_infos]
    assert remaining == list(range(3, count + 1))
    expect_code(grpc.StatusCode.NOT_FOUND, read_data, registry, model_id, 1)
    expect_code(grpc.StatusCode.NOT_FOUND, infos, registry, model_id, [2])
    # Reading version 3 makes it recently used: the next eviction takes 4.
    assert read_data(registry, model_id, 3) == b"t3"
    create_version(registry, model_id, b"next")
    remaining = [v.version_number for v in infos(registry, model_id).version_infos]
    assert 3 in remaining and 4 not in remaining
    # -1 counts among the versions that exist now; numbers are never reused.
    assert infos(registry, model_id, [-1]).version_infos[0].version_number == count + 1
    assert create_version(registry, model_id, b"more").version_number == count + 2


def test_archived_versions_are_never_evicted(registry, model_id):
    archived = create_version(registry, model_id, b"keep", archived=True)
    for i in range(CACHE_MAX_ITEMS + 1):
        create_version(registry, model_id, b"t")
    assert read_data(registry, model_id, archived.version_number) == b"keep"


def test_concurrent_creates_get_numbers_one_to_eight(stack, model_id):
    from cogmentAPI import model_registry_pb2_grpc as api_grpc

    def create(i: int) -> int:
        stub = api_grpc.ModelRegistrySPStub(stack.channel())
        return create_version(stub, model_id, os.urandom(256 * 1024), archived=bool(i % 2)).version_number

    with ThreadPoolExecutor(8) as pool:
        numbers = sorted(pool.map(create, range(8)))
    assert numbers == list(range(1, 9))


def test_64_mib_archived_round_trip(registry, model_id, capsys):
    data = os.urandom(64 * 1024 * 1024)
    started = time.perf_counter()
    info = create_version(registry, model_id, data, archived=True)
    uploaded = time.perf_counter()
    back = read_data(registry, model_id, info.version_number)
    downloaded = time.perf_counter()
    assert back == data
    assert info.data_hash == base64.b64encode(hashlib.sha256(data).digest()).decode()
    with capsys.disabled():
        print(
            f"\n64 MiB archived round trip: upload {64 / (uploaded - started):.0f} MiB/s, "
            f"download {64 / (downloaded - uploaded):.0f} MiB/s"
        )


def test_unusual_but_valid_encodings_of_chunks_are_accepted(stack, registry, model_id):
    """The frontend forwards the usual body encoding untouched and decodes
    anything else: field order, unknown fields, empty bodies still work."""
    body = lambda data: api.CreateVersionRequestChunk(  # noqa: E731
        body=api.CreateVersionRequestChunk.Body(data_chunk=data)
    ).SerializeToString()
    unknown_field = b"\x78\x01"  # field 15, varint 1: a newer client's field
    bodies = [
        body(b"chunk_") + unknown_field,  # unknown field after the body
        unknown_field + body(b"1"),  # ... and before it
        b"\x12\x00",  # an empty body
        body(b"chunk_") + body(b"2"),  # two bodies: protobuf merges them into one
    ]
    create = stack.channel().stream_unary(
        "/cogmentAPI.ModelRegistrySP/CreateVersion",
        request_serializer=None,
        response_deserializer=api.CreateVersionReply.FromString,
    )
    # Merged bodies keep the last data_chunk (bytes fields are replaced): "2".
    expected = b"chunk_1" + b"2"
    header = api.CreateVersionRequestChunk(
        header=api.CreateVersionRequestChunk.Header(
            version_info=api.ModelVersionInfo(model_id=model_id, archived=False, data_size=len(expected))
        )
    ).SerializeToString()
    info = create(iter([header, *bodies])).version_info
    assert info.data_size == len(expected)
    assert read_data(registry, model_id, info.version_number) == expected


def test_a_chunk_that_is_not_protobuf_is_invalid_argument(stack, registry, model_id):
    header = api.CreateVersionRequestChunk(
        header=api.CreateVersionRequestChunk.Header(
            version_info=api.ModelVersionInfo(model_id=model_id, data_size=4)
        )
    ).SerializeToString()
    create = stack.channel().stream_unary(
        "/cogmentAPI.ModelRegistrySP/CreateVersion",
        request_serializer=None,
        response_deserializer=api.CreateVersionReply.FromString,
    )
    details = expect_code(grpc.StatusCode.INVALID_ARGUMENT, create, iter([header, b"\x12\x05ab"]))
    assert "message 2" in details
    assert infos(registry, model_id).version_infos == []
