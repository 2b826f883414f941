"""The request interceptor on a real server: it decodes requests itself
(undecodable bytes are INVALID_ARGUMENT on every kind of method), bounds
streams when told to, and keeps status messages within metadata limits."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.common.errors import NotFound
from services.common.grpc_server import MESSAGE_MAX_BYTES, StreamGate, bind, create_aio_server
from services.launcher.ports import LOOPBACK

# Field 1 (a string) holding bytes that are not UTF-8, and a truncated field.
BAD_UTF8 = b"\x0a\x02\xff\xfe"
TRUNCATED = b"\x0a\x09ab"


class Server:
    def __init__(self, streams: StreamGate | None = None) -> None:
        self.grpc = create_aio_server(4 * 1024 * 1024, streams=streams)

    async def __aenter__(self) -> grpc.aio.Channel:
        async def fail_long(request: health_pb2.HealthCheckRequest, context) -> health_pb2.HealthCheckResponse:
            raise NotFound("x" * 100_000)

        async def count(requests, context) -> health_pb2.HealthCheckResponse:
            seen = [request.service async for request in requests]
            return health_pb2.HealthCheckResponse(status=len(seen))

        handlers = {
            "FailLong": grpc.unary_unary_rpc_method_handler(
                fail_long,
                health_pb2.HealthCheckRequest.FromString,
                health_pb2.HealthCheckResponse.SerializeToString,
            ),
            "Count": grpc.stream_unary_rpc_method_handler(
                count, health_pb2.HealthCheckRequest.FromString, health_pb2.HealthCheckResponse.SerializeToString
            ),
        }
        self.grpc.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Probe", handlers)])
        port = bind(self.grpc.server, LOOPBACK, 0)
        await self.grpc.server.start()
        await self.grpc.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{port}")
        return self.channel

    async def __aexit__(self, *exc_info) -> None:
        await self.channel.close()
        await self.grpc.server.stop(0)


def raw_unary(channel: grpc.aio.Channel, method: str):
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize("raw", [BAD_UTF8, TRUNCATED])
async def test_an_undecodable_unary_request_is_invalid_argument(raw):
    async with Server() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await raw_unary(channel, "/grpc.health.v1.Health/Check")(raw)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid grpc.health.v1.HealthCheckRequest" in error.value.details()


async def test_an_undecodable_message_of_a_server_stream_is_invalid_argument():
    async with Server() as channel:
        call = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=None, response_deserializer=None)(BAD_UTF8)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in call:
                pass
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_undecodable_message_in_a_client_stream_is_invalid_argument():
    good = health_pb2.HealthCheckRequest(service="a").SerializeToString()
    async with Server() as channel:
        count = channel.stream_unary("/test.Probe/Count", request_serializer=None, response_deserializer=None)
        assert health_pb2.HealthCheckResponse.FromString(await count(iter([good, good]))).status == 2
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await count(iter([good, TRUNCATED]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_huge_message_is_cut_to_fit_metadata():
    async with Server() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await raw_unary(channel, "/test.Probe/FailLong")(b"")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.value.details().encode()) <= MESSAGE_MAX_BYTES
    assert error.value.details().endswith("(message cut)")


async def test_streams_over_the_limit_are_refused_with_the_variable_and_counted_down_when_they_end():
    async with Server(StreamGate(1, "TEST_MAX_STREAMS")) as channel:
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        first = watch(health_pb2.HealthCheckRequest())
        await first.read()
        second = watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await second.read()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "TEST_MAX_STREAMS=1" in error.value.details()
        # Unary calls are not streams.
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        await check(health_pb2.HealthCheckRequest())
        first.cancel()
        for _ in range(100):
            third = watch(health_pb2.HealthCheckRequest())
            try:
                await third.read()
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the slot of the cancelled stream was never given back")
        third.cancel()
