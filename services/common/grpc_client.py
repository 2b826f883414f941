"""Calling other registry services: channels, deadlines, retries, and turning
their failures into errors this service can pass on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from services.common import metrics
from services.common.errors import RegistryError, UpstreamError

T = TypeVar("T")

# Names the cluster a health check sent to Envoy's internal listener is
# meant for: every health check has the same path, whatever the service.
UPSTREAM_HEADER = "x-registry-upstream"

_FIRST_RETRY_DELAY_SECONDS = 0.05

# Statuses a caller can act on: passed through to our own client unchanged.
_PASS_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
}


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Keep long idle watch streams alive through proxies.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Retries are ours (tenacity), with knowledge of what is idempotent.
        ("grpc.enable_retries", 0),
    ]


def internal_channel(
    address: str, max_message_bytes: int, extra_options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to another registry service; its calls are recorded (`grpc_client_*`)."""
    return metrics.recorded(
        grpc.aio.insecure_channel(address, options=[*channel_options(max_message_bytes), *extra_options])
    )


def upstream_error(service: str, exc: grpc.aio.AioRpcError) -> RegistryError:
    """The error to raise when a call to `service` failed with `exc`."""
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return UpstreamError(code, f"the {service} service is unavailable, retry later: {details}")
    if code in _PASS_THROUGH:
        return UpstreamError(code, details)
    return UpstreamError(grpc.StatusCode.INTERNAL, f"the {service} service failed: {code.name}: {details}")


# Envoy's own answer when a cluster has no healthy host (a replica
# restarting, until its first health check passes): the call was sent to
# no server at all.
_NOT_SENT_DETAILS = "no healthy upstream"


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


def _was_not_sent(exc: BaseException) -> bool:
    return _is_transient(exc) and exc.details() == _NOT_SENT_DETAILS  # type: ignore[attr-defined]


async def call_idempotent(
    service: str,
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 5,
    max_seconds: float = 10.0,
) -> T:
    """Runs an idempotent unary call, retrying UNAVAILABLE with exponential
    backoff (0.4 s in all by default: a replica restarting is usually back
    within it); any failure left is raised as a `RegistryError`."""
    return await _call_retrying(service, call, _is_transient, attempts, max_seconds)


async def call_at_most_once(
    service: str,
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 5,
    max_seconds: float = 10.0,
) -> T:
    """Runs a unary call that must not reach its server twice (a second
    DeleteModel after a lost reply would answer NOT_FOUND): retried, as an
    idempotent call is, only when Envoy sent it nowhere."""
    return await _call_retrying(service, call, _was_not_sent, attempts, max_seconds)


async def _call_retrying(
    service: str,
    call: Callable[[], Awaitable[T]],
    retryable: Callable[[BaseException], bool],
    attempts: int,
    max_seconds: float,
) -> T:
    try:
        # Fast path: most calls succeed at once, and tenacity's machinery
        # costs about as much as a small call's own Python work.
        return await call()
    except grpc.aio.AioRpcError as exc:
        if not retryable(exc):
            raise upstream_error(service, exc) from None
    await asyncio.sleep(_FIRST_RETRY_DELAY_SECONDS)
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(attempts - 1) | stop_after_delay(max_seconds),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        ):
            with attempt:
                return await call()
    except grpc.aio.AioRpcError as exc:
        raise upstream_error(service, exc) from None
    raise AssertionError("unreachable")  # pragma: no cover
