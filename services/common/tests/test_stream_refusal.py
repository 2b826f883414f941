"""A client-streaming call refused early keeps the server's status through
grpc.aio's client (stream_refusal.py), on real servers on loopback."""

from __future__ import annotations

import collections

import grpc

from services.common.errors import ResourceExhausted
from services.common.stream_refusal import announce_refusal, refusal_behind

CALLS = 100


async def refuse_after_the_first_message(request_iterator, context):
    async for _ in request_iterator:
        refusal = ResourceExhausted("the archive is full: ARCHIVE_RESERVED_BYTES")
        await announce_refusal(context, refusal)
        await context.abort(refusal.code, refusal.message)


async def test_a_refusal_while_the_client_still_writes_keeps_its_status():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Refusing", {"Put": grpc.stream_unary_rpc_method_handler(refuse_after_the_first_message)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    put = channel.stream_unary("/test.Refusing/Put")
    raw, seen = collections.Counter(), collections.Counter()
    try:
        for _ in range(CALLS):

            async def requests():
                for _ in range(64):
                    yield b"x" * 65536

            call = put(requests())
            try:
                await call
            except grpc.aio.AioRpcError as error:
                raw[error.code()] += 1
                kept = await refusal_behind(call, error)
                seen[(kept.code(), kept.details())] += 1
    finally:
        await channel.close()
        await server.stop(0)
    assert seen == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "the archive is full: ARCHIVE_RESERVED_BYTES"): CALLS}
    # The case that matters happened: grpc.aio had replaced the status.
    assert raw[grpc.StatusCode.INTERNAL] > 0, raw


async def test_other_errors_are_left_as_they_are():
    class Call:
        async def initial_metadata(self):
            return ()

    error = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, (), (), "Internal error from Core")
    assert await refusal_behind(Call(), error) is error
    unavailable = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, (), (), "gone")
    assert await refusal_behind(Call(), unavailable) is unavailable
