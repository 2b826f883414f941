"""What is particular to the memory tier (the contract is in
test_tier_contract): budget reserved up front, chunks kept as received,
no verification."""

from __future__ import annotations

import hashlib

import pytest

from services.blobstore.store import MemoryTier
from services.blobstore.tests.helpers import read_all, store
from services.common.errors import NotFound, ResourceExhausted


async def test_an_upload_is_admitted_if_its_size_fits_what_is_free_then_reserves_as_bytes_arrive(memory_tier: MemoryTier):
    first = await memory_tier.open_writer("first", 600)
    assert memory_tier.held_bytes == 0  # nothing held before a byte arrived
    await first.write(b"x" * 600)
    assert memory_tier.held_bytes == 600
    with pytest.raises(ResourceExhausted) as error:
        await memory_tier.open_writer("second", 401)
    message = error.value.message
    assert "holds 600 bytes" in message and "401" in message and "budget of 1000 bytes" in message
    assert "COGMENT_MODEL_REGISTRY_BLOBSTORE_MEMORY_MAX_BYTES" in message
    second = await memory_tier.open_writer("second", 400)  # exactly the budget
    await second.write(b"y" * 400)
    assert memory_tier.held_bytes == 1000
    await first.abort()
    await second.abort()
    assert memory_tier.held_bytes == 0


async def test_a_blob_that_could_never_fit_is_refused_before_any_byte(memory_tier: MemoryTier):
    with pytest.raises(ResourceExhausted, match="a blob of 1001 bytes"):
        await memory_tier.open_writer("huge", 1001)


async def test_uploads_admitted_together_fail_at_the_chunk_that_overflows(memory_tier: MemoryTier):
    first = await memory_tier.open_writer("first", 600)
    second = await memory_tier.open_writer("second", 600)
    await first.write(b"x" * 600)
    await second.write(b"y" * 400)
    with pytest.raises(ResourceExhausted):
        await second.write(b"y" * 1)
    await second.abort()
    assert memory_tier.held_bytes == 600
    await first.commit()
    assert memory_tier.held_bytes == 600


async def test_abort_releases_the_reservation(memory_tier: MemoryTier):
    writer = await memory_tier.open_writer("partial", 1000)
    await writer.write(b"x" * 10)
    assert memory_tier.held_bytes == 10  # what arrived, not what was announced
    await writer.abort()
    await writer.abort()  # idempotent: released once
    assert memory_tier.held_bytes == 0
    with pytest.raises(NotFound):
        await read_all(memory_tier, "partial")
    await store(memory_tier, "full", [b"y" * 1000])


async def test_delete_releases_the_budget_at_once_and_once(memory_tier: MemoryTier):
    await store(memory_tier, "big", [b"a" * 600, b"b" * 100])
    assert memory_tier.held_bytes == 700
    with pytest.raises(ResourceExhausted):
        await memory_tier.open_writer("next", 400)
    reader = await memory_tier.open_reader("big", expected_size=700, expected_sha256=None, chunk_size=600)
    async with reader:
        chunks = reader.__aiter__()
        first = await anext(chunks)
        assert await memory_tier.delete("big") is True
        # Even while a reader still streams the chunks.
        assert memory_tier.held_bytes == 0
        rest = [chunk async for chunk in chunks]
    assert [first, *rest] == [b"a" * 600, b"b" * 100]
    assert await memory_tier.delete("big") is False
    assert memory_tier.held_bytes == 0
    await store(memory_tier, "next", [b"c" * 1000])


async def test_chunks_are_kept_as_received_and_rechunked_on_read(memory_tier: MemoryTier):
    chunks = [b"a" * 10, b"", b"b" * 3, b"c" * 8]
    await store(memory_tier, "chunks", chunks)
    # Stored as received: no concatenation (same objects).
    assert all(stored is sent for stored, sent in zip(memory_tier._blobs["chunks"].chunks, [chunks[0], *chunks[2:]]))
    read = await read_all(memory_tier, "chunks", chunk_size=4)
    assert [len(c) for c in read] == [4, 4, 2, 3, 4, 4]
    assert b"".join(read) == b"".join(chunks)
    assert [len(c) for c in await read_all(memory_tier, "chunks", chunk_size=100)] == [10, 3, 8]


async def test_received_views_are_kept_and_rechunked_without_copies(memory_tier: MemoryTier):
    # What the servicer passes: views of the received messages' data.
    messages = [b"\x12\x0c\x0a\x0a" + b"a" * 10, b"\x12\x05\x0a\x03" + b"bbb"]
    views = [memoryview(messages[0])[4:], memoryview(messages[1])[4:]]
    await store(memory_tier, "views", views)
    assert all(stored is sent for stored, sent in zip(memory_tier._blobs["views"].chunks, views))
    read = await read_all(memory_tier, "views", chunk_size=4)
    assert [bytes(c) for c in read] == [b"aaaa", b"aaaa", b"aa", b"bbb"]
    # Slices of the stored views: they share the received messages' memory.
    assert [c.obj for c in read] == [messages[0]] * 3 + [messages[1]]
    # Stored bytes are re-chunked as views too, not copied slice by slice.
    await store(memory_tier, "bytes", [b"c" * 10])
    assert all(isinstance(c, memoryview) for c in await read_all(memory_tier, "bytes", chunk_size=4))


async def test_reads_are_not_verified(memory_tier: MemoryTier):
    """Memory does not rot, and the frontend hashed every byte on the way in."""
    await store(memory_tier, "unchecked", [b"abc"])
    reader = await memory_tier.open_reader(
        "unchecked", expected_size=3, expected_sha256=hashlib.sha256(b"other").digest(), chunk_size=10
    )
    async with reader:
        assert [bytes(chunk) async for chunk in reader] == [b"abc"]
    assert not reader.verified
