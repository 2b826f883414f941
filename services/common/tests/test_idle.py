"""Idle timeouts on a real server: a received stream that goes quiet, and a
sent stream whose reader stops reading."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from services.common.errors import DeadlineExceeded
from services.common.grpc_server import bind, create_aio_server
from services.common.idle import SendWatchdog, receive_within
from services.launcher.ports import LOOPBACK

CHUNK = b"x" * (1024 * 1024)


@contextlib.asynccontextmanager
async def serving(stream, *, max_message_bytes: int) -> AsyncIterator[grpc.aio.Channel]:
    """A real server whose one method, /test.Slow/Read, is `stream`, and a
    channel to it that accepts two chunks at most per message."""
    server = create_aio_server(max_message_bytes)
    handler = grpc.unary_stream_rpc_method_handler(stream)
    server.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Slow", {"Read": handler})])
    port = bind(server.server, LOOPBACK, 0)
    await server.server.start()
    channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{port}", options=[("grpc.max_receive_message_length", 2 * len(CHUNK))])
    try:
        yield channel
    finally:
        await channel.close()
        await server.server.stop(0)


async def test_a_quiet_stream_raises_the_idle_error():
    async def messages():
        yield 1
        yield 2
        await asyncio.sleep(10)
        yield 3

    received = []
    with pytest.raises(DeadlineExceeded, match="quiet"):
        async for message in receive_within(messages(), 0.2, lambda: DeadlineExceeded("quiet")):
            received.append(message)
    assert received == [1, 2]


async def test_a_reader_that_stops_reading_is_ended_and_the_producer_closed():
    closed = asyncio.Event()

    async def produce():
        try:
            for _ in range(1000):
                yield CHUNK
        finally:
            closed.set()

    async def stream(request: bytes, context):
        watchdog = SendWatchdog(context, 0.5, lambda: DeadlineExceeded("the reader went quiet"))
        async for chunk in watchdog.guard(produce()):
            yield chunk

    async with serving(stream, max_message_bytes=16 * 1024 * 1024) as channel:
        call = channel.unary_stream("/test.Slow/Read")(b"")
        await call.read()
        # The reader stops: the producer is closed (what it held released)
        # without waiting for the reader to come back.
        await asyncio.wait_for(closed.wait(), 10)
        read = 1
        with pytest.raises(grpc.aio.AioRpcError) as error:
            while await call.read() is not grpc.aio.EOF:
                read += 1
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error.value.details() == "the reader went quiet"
        assert read < 1000


async def test_a_reader_that_keeps_reading_is_never_ended():
    async def produce():
        for _ in range(20):
            await asyncio.sleep(0.05)  # slow to produce: not the reader's fault
            yield b"y"

    async def stream(request: bytes, context):
        watchdog = SendWatchdog(context, 0.2, lambda: DeadlineExceeded("never"))
        async for chunk in watchdog.guard(produce()):
            yield chunk

    async with serving(stream, max_message_bytes=4 * 1024 * 1024) as channel:
        chunks = [chunk async for chunk in channel.unary_stream("/test.Slow/Read")(b"")]
        assert chunks == [b"y"] * 20
