"""The hand-rolled wire helpers against the protobuf runtime itself."""

from __future__ import annotations

import os

import pytest
from cogmentAPI import model_registry_pb2 as api
from google.protobuf.message import DecodeError
from registry import blobstore_pb2

from services.common.config import MIB
from services.common.wire import data_chunk_message, data_chunk_size, upload_body_data

# Around every boundary of the varint lengths (1, 2 and 3 bytes), and a real chunk.
SIZES = [0, 1, 127, 128, 16383, 16384, MIB]


def body_request(data: bytes) -> bytes:
    return blobstore_pb2.PutBlobRequest(body=api.CreateVersionRequestChunk.Body(data_chunk=data)).SerializeToString()


def slow_path_data(raw: bytes) -> bytes:
    """What the caller gets from protobuf when the fast path declines."""
    request = blobstore_pb2.PutBlobRequest.FromString(raw)
    assert request.WhichOneof("msg") == "body"
    return request.body.data_chunk


@pytest.mark.parametrize("size", SIZES)
def test_upload_body_data_is_a_view_of_what_protobuf_encodes(size):
    data = os.urandom(size)
    raw = body_request(data)
    view = upload_body_data(raw)
    if size == 0:
        # proto3 leaves the empty data_chunk out: the body is `0x12 0x00`,
        # which the slow path reads as empty data.
        assert raw == b"\x12\x00"
        assert view is None
        assert slow_path_data(raw) == b""
        return
    assert view is not None
    assert view == data
    # Zero-copy, and read-only over immutable bytes: safe to keep.
    assert view.obj is raw
    assert view.readonly


@pytest.mark.parametrize("size", SIZES)
def test_the_public_upload_body_is_the_same_message(size):
    data = os.urandom(size)
    public = api.CreateVersionRequestChunk(body=api.CreateVersionRequestChunk.Body(data_chunk=data)).SerializeToString()
    assert public == body_request(data)
    if size:
        assert upload_body_data(public) == data


def test_an_explicitly_encoded_empty_data_chunk_is_empty_data():
    raw = b"\x12\x02\x0a\x00"
    view = upload_body_data(raw)
    assert view is not None and len(view) == 0
    assert slow_path_data(raw) == b""


def _key(number: int, wire_type: int) -> bytes:
    return bytes(((number << 3) | wire_type,))


ODD_BODIES = {
    # Valid protobuf of a body, but not the one canonical layout: slow path.
    "unknown field after the data": b"\x12\x07\x0a\x03abc\x18\x01",
    "unknown field before the data": b"\x12\x07\x18\x01\x0a\x03abc",
    "data_chunk repeated (last wins)": b"\x12\x0a\x0a\x03xyz\x0a\x03abc",
    "body repeated (merged)": b"\x12\x05\x0a\x03xyz\x12\x05\x0a\x03abc",
    "non-minimal body length": b"\x12\x85\x00\x0a\x03abc",
    "non-minimal data length": b"\x12\x06\x0a\x83\x00abc",
    "unknown field after the body": b"\x12\x05\x0a\x03abc\x20\x01",
}


@pytest.mark.parametrize("raw", ODD_BODIES.values(), ids=ODD_BODIES.keys())
def test_valid_but_unusual_bodies_take_the_slow_path(raw):
    assert upload_body_data(raw) is None
    assert slow_path_data(raw) == b"abc"


OTHER_MESSAGES = {
    "header": blobstore_pb2.PutBlobRequest(
        header=blobstore_pb2.PutBlobRequest.Header(key="k", size=3, archived=True)
    ).SerializeToString(),
    "finish": blobstore_pb2.PutBlobRequest(finish=blobstore_pb2.PutBlobRequest.Finish()).SerializeToString(),
    "no field set": b"",
    "empty body": b"\x12\x00",
    "body then finish (finish wins)": b"\x12\x05\x0a\x03abc" + _key(3, 2) + b"\x00",
}


@pytest.mark.parametrize("raw", OTHER_MESSAGES.values(), ids=OTHER_MESSAGES.keys())
def test_messages_without_canonical_data_are_left_to_protobuf(raw):
    assert upload_body_data(raw) is None
    blobstore_pb2.PutBlobRequest.FromString(raw)  # valid all the same


BROKEN = {
    "truncated data": b"\x12\x05\x0a\x03ab",
    "body longer than the message": b"\x12\x06\x0a\x03abc",
    "data longer than the body": b"\x12\x05\x0a\x04abc",
    "truncated body length": b"\x12\x80",
    "truncated data length": b"\x12\x02\x0a\x80",
    "no data key": b"\x12",
    "varint too long": b"\x12" + b"\xff" * 11,
}


@pytest.mark.parametrize("raw", BROKEN.values(), ids=BROKEN.keys())
def test_broken_messages_are_left_to_protobuf_which_refuses_them(raw):
    assert upload_body_data(raw) is None
    with pytest.raises(DecodeError):
        blobstore_pb2.PutBlobRequest.FromString(raw)


@pytest.mark.parametrize("size", SIZES)
def test_data_chunk_message_is_what_protobuf_encodes(size):
    data = os.urandom(size)
    expected = api.RetrieveVersionDataReplyChunk(data_chunk=data).SerializeToString()
    for given in (data, bytearray(data), memoryview(data)):
        encoded = data_chunk_message(given)
        assert type(encoded) is bytes
        assert encoded == expected
        assert api.RetrieveVersionDataReplyChunk.FromString(encoded).data_chunk == data


def test_data_chunk_message_of_a_slice_of_a_larger_buffer():
    blob = os.urandom(3 * MIB)
    view = memoryview(blob)[MIB + 5 : 2 * MIB + 5]
    encoded = data_chunk_message(view)
    assert api.RetrieveVersionDataReplyChunk.FromString(encoded).data_chunk == blob[MIB + 5 : 2 * MIB + 5]


@pytest.mark.parametrize("size", [0, 1, 127, 128, MIB, 5 * MIB])
def test_data_chunk_size_reads_the_length_of_what_protobuf_encodes(size):
    encoded = api.RetrieveVersionDataReplyChunk(data_chunk=os.urandom(size)).SerializeToString()
    assert data_chunk_size(encoded) == size
    assert data_chunk_size(data_chunk_message(b"x" * size)) == size


def test_data_chunk_size_of_an_unusual_encoding_is_at_most_the_message():
    # An unknown field before the data: valid protobuf, not the canonical layout.
    unusual = b"\x10\x01" + data_chunk_message(b"abc")
    assert data_chunk_size(unusual) == len(unusual)
