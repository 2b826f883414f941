"""Retries of upstream calls, against a real gRPC server on loopback."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import UpstreamError
from services.common.grpc_client import call_at_most_once, call_idempotent


class FlakyHealth(health_pb2_grpc.HealthServicer):
    """Fails the first `failures` calls with `code` (and `details`, else
    "failure N"), then answers SERVING."""

    def __init__(self, failures: int, code: grpc.StatusCode, details: str | None = None) -> None:
        self.failures, self.code, self.details, self.calls = failures, code, details, 0

    async def Check(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(self.code, self.details or f"failure {self.calls}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def run_against(servicer: FlakyHealth, call=call_idempotent, **kwargs):
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return await call(
                "test", lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=2), **kwargs
            )
    finally:
        await server.stop(0)


async def test_unavailable_is_retried_until_success():
    servicer = FlakyHealth(2, grpc.StatusCode.UNAVAILABLE)
    reply = await run_against(servicer)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert servicer.calls == 3


async def test_retries_stop_after_the_attempts():
    servicer = FlakyHealth(10, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(UpstreamError) as error:
        await run_against(servicer, attempts=3)
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert "the test service is unavailable" in error.value.message
    assert servicer.calls == 3


async def test_other_errors_are_not_retried_and_pass_through():
    servicer = FlakyHealth(1, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(UpstreamError) as error:
        await run_against(servicer)
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert error.value.message == "failure 1"
    assert servicer.calls == 1


async def test_a_call_not_to_repeat_is_retried_only_where_envoy_sent_it_nowhere():
    """Envoy's "no healthy upstream" (a replica restarting): the call
    reached no server, and is sent again; any other UNAVAILABLE may have
    reached it, and is not."""
    unsent = FlakyHealth(2, grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
    reply = await run_against(unsent, call=call_at_most_once)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING and unsent.calls == 3
    maybe_sent = FlakyHealth(2, grpc.StatusCode.UNAVAILABLE, "the database is unavailable")
    with pytest.raises(UpstreamError) as error:
        await run_against(maybe_sent, call=call_at_most_once)
    assert error.value.code == grpc.StatusCode.UNAVAILABLE and maybe_sent.calls == 1
