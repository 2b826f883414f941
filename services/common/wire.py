"""Hand-rolled protobuf wire encoding of the two messages that carry blob data.

Model bytes cross the registry in two message shapes, always one data chunk
(typically 1 MiB) per message:

- upload: `registry.PutBlobRequest{body: {data_chunk}}`, which is byte for byte
  the public `cogmentAPI.CreateVersionRequestChunk{body: {data_chunk}}`
  (the body is field 2 of both);
- download: `cogmentAPI.RetrieveVersionDataReplyChunk{data_chunk}`, sent by
  both GetBlob and the public RetrieveVersionData.

Going through the protobuf runtime costs two copies of every chunk each way
(parsing copies the bytes into the message's arena, reading the field makes
another `bytes`; building a message copies the data in, serialising copies
it out), which is most of a blob server's CPU. These helpers work on the
encoding directly: the upload's data is returned as a view into the
received buffer (no copy), the download's message is built with a single
copy. Everything they produce or accept is plain protobuf of those types,
so either side may still use the generated classes.

Only the canonical encoding of an upload body is recognised here (what
every protobuf runtime emits for a message whose only field is set). Any
other encoding — fields in another order, unknown or repeated fields, an
empty body, non-minimal varints — makes `upload_body_data` return None, and
the caller parses the message with protobuf: valid input is never refused,
it only takes the slow path.

Encoding reminder: a field's key is the varint `(number << 3) | wire_type`,
and a length-delimited field (wire type 2: bytes, strings, sub-messages) is
`key, varint length, payload`.
"""

from __future__ import annotations

# Keys of the length-delimited fields involved (wire type 2).
_BODY_KEY = (2 << 3) | 2  # PutBlobRequest.body / CreateVersionRequestChunk.body: 0x12
_DATA_CHUNK_KEY = (1 << 3) | 2  # Body.data_chunk / RetrieveVersionDataReplyChunk.data_chunk: 0x0A
_DATA_CHUNK_KEY_BYTES = bytes((_DATA_CHUNK_KEY,))

# A varint holds at most 64 bits, in 7-bit groups.
_MAX_VARINT_BYTES = 10


def _read_varint(buffer: memoryview, position: int) -> tuple[int, int] | None:
    """The varint at `position` and the position after it, or None if it is
    truncated, too long or not minimally encoded (a trailing zero group)."""
    value = shift = 0
    end = min(len(buffer), position + _MAX_VARINT_BYTES)
    while position < end:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            # Minimal: a zero last group only for the one-byte varint 0.
            if byte == 0 and shift:
                return None
            return value, position
        shift += 7
    return None


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def upload_body_data(raw: bytes) -> memoryview | None:
    """The data chunk of an upload body message, as a zero-copy view of `raw`.

    `raw` is a serialised `PutBlobRequest` (or `CreateVersionRequestChunk`).
    When it is exactly `0x12 <n> 0x0A <m> <m data bytes>` with `n` and `m`
    minimal varints covering the whole buffer, the view of the data bytes is
    returned; it stays valid for as long as it is referenced (it keeps
    `raw` alive, and `bytes` never change). Anything else returns None:
    another kind of message (header, finish), a body with unusual content or
    layout, an empty body (proto3 omits an empty data_chunk, so the body is
    then `0x12 0x00`), or bytes that are not protobuf at all. The caller
    then parses `raw` with protobuf, which decides what it means.
    """
    view = memoryview(raw)
    if len(view) < 2 or view[0] != _BODY_KEY:
        return None
    body_length = _read_varint(view, 1)
    if body_length is None:
        return None
    length, position = body_length
    if length != len(view) - position or position >= len(view) or view[position] != _DATA_CHUNK_KEY:
        return None
    data_length = _read_varint(view, position + 1)
    if data_length is None:
        return None
    length, position = data_length
    if length != len(view) - position:
        return None
    return view[position:]


def data_chunk_message(data: bytes | bytearray | memoryview) -> bytes:
    """The serialised `RetrieveVersionDataReplyChunk{data_chunk: data}`.

    Costs one copy of `data` (into the returned bytes), where building and
    serialising the message would cost two. Empty data gives b"", the
    encoding of the message with its field left at the proto3 default: what
    protobuf itself emits.
    """
    length = len(data) if not isinstance(data, memoryview) else data.nbytes
    if length == 0:
        return b""
    # bytes + buffer: the data is copied once, straight into the result.
    return _DATA_CHUNK_KEY_BYTES + _encode_varint(length) + data


def data_chunk_size(message: bytes) -> int:
    """The size of the data a serialised `RetrieveVersionDataReplyChunk`
    carries, read from its length prefix (no copy, no parse). Only the
    canonical encoding (what `data_chunk_message` and every protobuf runtime
    emit) is read; for anything else the message's own size is returned, an
    upper bound that is off by a few bytes at most."""
    if not message:
        return 0
    view = memoryview(message)
    if view[0] == _DATA_CHUNK_KEY:
        length = _read_varint(view, 1)
        if length is not None and length[0] == len(view) - length[1]:
            return length[0]
    return len(message)
