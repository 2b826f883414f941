"""gRPC server plumbing shared by every service.

- `RequestInterceptor`: one log line per request (method, status, duration;
  DEBUG for health checks and successful small reads, INFO otherwise),
  its metrics (`grpc_server_*`, services.common.metrics), and the single
  place where domain errors become gRPC statuses; it decodes every request
  itself (an undecodable one is INVALID_ARGUMENT, never gRPC's UNKNOWN),
  bounds the streams in flight when told to, and counts the server's calls
  in flight (`InFlightCalls`), which shutdown drains.
  With an `AccessControl` (public servers), it checks every call's
  credential before decoding anything, and writes the audit line of
  every write and delete (services.common.access).
- `ReportedHealth`: the health servicer, whose answers are also a metric.
- `server_options` / `create_aio_server`: message limits and port clash
  detection identical across services.

Starting, draining and stopping a server is `services.common.service`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from google.protobuf.message import DecodeError

from services.common import access as access_control
from services.common import metrics, service_names
from services.common.access import AccessControl
from services.common.errors import InvalidArgument, RegistryError, ResourceExhausted

log = logging.getLogger("registry.requests")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# The path of every health call: Envoy's probes, logged at DEBUG only.
HEALTH_METHOD_PREFIX = f"/{service_names.HEALTH}/"
# The calls asked thousands of times a second (actors polling for the
# latest version): their request line is DEBUG when they succeed, as health
# checks' always is; a failure is logged at INFO. Metrics count every call.
_QUIET_WHEN_OK = frozenset(
    f"/{service}/{method}" for service in service_names.PUBLIC for method in service_names.PUBLIC_READS
)


def _trace_suffix() -> str:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return f" (trace_id {format(context.trace_id, '032x')})"
    return ""


# The most a status message carries, in UTF-8 bytes. Messages travel as
# grpc-message metadata, percent-encoded (up to 3 characters per byte), and
# every hop bounds metadata (16 KiB by default): a message past that bound
# would replace the status it carries with RESOURCE_EXHAUSTED "metadata size
# exceeds hard limit". Messages quote user input through `errors.quoted`;
# this is the last line of defence.
MESSAGE_MAX_BYTES = 2048


def bounded_message(message: str) -> str:
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MESSAGE_MAX_BYTES:
        return message
    return encoded[: MESSAGE_MAX_BYTES - 20].decode("utf-8", "ignore") + "... (message cut)"


async def _fail(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Aborts the call with the status `exc` stands for (always raises)."""
    # gRPC's semantic conventions leave client errors (INVALID_ARGUMENT…)
    # unmarked on server spans; operators want every failed call to stand out.
    span = trace.get_current_span()
    if isinstance(exc, RegistryError):
        message = bounded_message(exc.message)
        span.set_status(Status(StatusCode.ERROR, f"{exc.code.name}: {message}"))
        await context.abort(exc.code, message)
    if isinstance(exc, NotImplementedError):
        # A generated servicer's default for a method nobody implemented
        # (grpc.health.v1's List, for one): not a bug, not an INTERNAL.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server does not implement this method")
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"INTERNAL: {exc}"))
    logging.getLogger("registry.errors").exception("unexpected error")
    await context.abort(
        grpc.StatusCode.INTERNAL,
        bounded_message(f"internal error: {type(exc).__name__}: {exc}{_trace_suffix()}"),
    )


def _abort_code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    try:
        code = context.code()
    except Exception:  # older runtimes have no code()
        return default
    return code if isinstance(code, grpc.StatusCode) else default


class InFlightCalls:
    """Calls not yet finished on the wire, on one server.

    A handler returns once its last message is queued, which can be long
    before a slow client has read it (flow control holds it in gRPC's
    buffers); a call is finished when gRPC reports it done. Shutdown waits
    for these, not for handlers, so draining never cuts a stream short.
    """

    def __init__(self) -> None:
        self.count = 0
        # The same, per method path (what a load figure is made of: a
        # subscription that idles for hours is not load, a download is).
        self.by_method: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def started(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.count += 1
        self.by_method[method] = self.by_method.get(method, 0) + 1
        self._idle.clear()
        context.add_done_callback(lambda _context: self._finished(method))

    def _finished(self, method: str) -> None:
        self.count -= 1
        self.by_method[method] -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
        # a cancel that lands as the event is set.
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


def _log_request(level: int, method: str, code: grpc.StatusCode, started: float) -> None:
    """The request's one log line, built lazily (only if `level` is enabled)."""
    if log.isEnabledFor(level):
        # makeRecord + handle is what `log.log` does, minus `findCaller`: a
        # walk up the stack for a file and line the format never shows,
        # which costs as much as the rest of the record on every request.
        log.handle(
            log.makeRecord(
                log.name,
                level,
                __file__,
                0,
                "rpc=%s status=%s duration_ms=%.1f",
                (method, code.name, (time.perf_counter() - started) * 1000),
                None,
            )
        )


def _failure_code(context: grpc.aio.ServicerContext, exc: BaseException) -> grpc.StatusCode:
    """The status a handler's exception ends the call with (for the log line)."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, grpc.aio.AbortError):
        return _abort_code(context, grpc.StatusCode.OK)
    if isinstance(exc, RegistryError):
        return exc.code
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL


Decoder = Callable[[bytes], Any]


def request_decoder(deserializer: Decoder | None, name: str | None = None) -> Decoder | None:
    """The function that turns a received message into the request the
    handler expects (None: the handler takes bytes), raising
    InvalidArgument for bytes that are not such a message: truncated or
    malformed protobuf, invalid UTF-8 in a string field. The message names
    the type as `name` if given (a caller of the 1.x alias sent a `cogment.`
    message, decoded as its twin), else as the deserializer's."""
    if deserializer is None:
        return None
    if name is None:
        message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
        name = message_type.full_name if message_type is not None else "the expected message"

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            raise InvalidArgument(f"the request is not a valid {name}: {exc}") from None

    return decode


async def _decoded_stream(requests: AsyncIterator[bytes], decode: Decoder) -> AsyncIterator[Any]:
    async for raw in requests:
        yield decode(raw)


class StreamGate:
    """Bounds the streaming calls in flight on one server (None: unbounded).

    Streams are what a server holds for long (a VersionUpdate lives for
    hours): past the bound, a new one is refused at once with
    RESOURCE_EXHAUSTED naming the variable, instead of the server running
    out of memory or making every call slow. Unary calls are not counted.
    """

    def __init__(self, max_streams: int | None = None, variable: str = "") -> None:
        self.max_streams = max_streams
        self.variable = variable
        self.open = 0

    def enter(self, context: grpc.aio.ServicerContext) -> None:
        if self.max_streams is not None and self.open >= self.max_streams:
            raise ResourceExhausted(
                f"this server already holds {self.open} streams, its limit ({self.variable}={self.max_streams}): "
                "retry later, or spread the streams over more frontends"
            )
        self.open += 1
        context.add_done_callback(self._left)

    def _left(self, _context: object) -> None:
        self.open -= 1


@dataclass(frozen=True)
class _Wrapping:
    """What the request interceptor puts around one method's calls."""

    method: str
    level: int  # of the request's log line
    ok_level: int  # of the request's log line when it succeeds
    in_flight: InFlightCalls
    decode: Decoder | None
    streams: StreamGate | None  # set for streaming methods only
    calls: metrics.CallMetrics
    # None: an internal server, no credential checked, nothing audited.
    access: AccessControl | None
    audited: bool


async def _admit(w: _Wrapping, context: grpc.aio.ServicerContext) -> Any:
    """Checks the caller (if the server checks callers) and starts the
    call's audit record (if it is audited); returns what `_audit_end` takes."""
    if w.access is None:
        return None
    identity = await w.access.authorize(w.method, context)
    return access_control.begin(identity, w.method, context) if w.audited else None


def _audit_end(audit: Any, code: grpc.StatusCode) -> None:
    if audit is not None:
        access_control.end(audit, code)


class _CallScope:
    """One call's bookkeeping around its handler: the in-flight count, the
    caller's admission, the audit record, the status an exception maps to,
    the log line and the call metrics. The unary and streaming wrappers
    differ only in how they hand over the handler's result."""

    __slots__ = ("_w", "_context", "_started", "_audit")

    def __init__(self, w: _Wrapping, context: grpc.aio.ServicerContext) -> None:
        self._w, self._context, self._audit = w, context, None

    async def __aenter__(self) -> "_CallScope":
        self._started = time.perf_counter()
        self._w.in_flight.started(self._w.method, self._context)
        self._w.calls.started()
        return self

    async def admit(self, request: Any, request_streaming: bool) -> Any:
        """Checks the caller, then decodes the request: a refused call
        decodes nothing and holds no stream."""
        w = self._w
        self._audit = await _admit(w, self._context)
        if w.streams is not None:
            w.streams.enter(self._context)
        if w.decode is None:
            return request
        return _decoded_stream(request, w.decode) if request_streaming else w.decode(request)

    async def __aexit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> bool:
        code = grpc.StatusCode.OK
        try:
            if isinstance(exc, (Exception, asyncio.CancelledError)):
                code = _failure_code(self._context, exc)
                if not isinstance(exc, (asyncio.CancelledError, grpc.aio.AbortError)):
                    await _fail(self._context, exc)  # raises: the status `exc` stands for
            return False
        finally:
            w = self._w
            _audit_end(self._audit, code)
            _log_request(w.ok_level if code == grpc.StatusCode.OK else w.level, w.method, code, self._started)
            w.calls.finished(code, time.perf_counter() - self._started)


def _wrap_unary_response(w: _Wrapping, behavior: Callable[..., Awaitable[Any]], request_streaming: bool) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _CallScope(w, context) as call:
            return await behavior(await call.admit(request, request_streaming), context)

    return wrapped


def _wrap_stream_response(w: _Wrapping, behavior: Callable[..., AsyncIterator[Any]], request_streaming: bool) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _CallScope(w, context) as call:
            responses = behavior(await call.admit(request, request_streaming), context)
            if hasattr(responses, "__aiter__"):
                async for item in responses:
                    yield item
            else:  # a handler that writes with context.write (grpc's health Watch)
                await responses

    return wrapped


def handler_behavior(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The servicer function behind `handler`, whatever its kind."""
    return handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream


def rebuild_handler(
    handler: grpc.RpcMethodHandler,
    behavior: Callable[..., Any],
    request_deserializer: Callable[[bytes], Any] | None,
    response_serializer: Callable[[Any], bytes] | None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (streaming or not on each
    side) made of the given parts."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, request_deserializer, response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, request_deserializer, response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, request_deserializer, response_serializer)
    return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer, response_serializer)


def wrap_handler(
    method: str,
    handler: grpc.RpcMethodHandler,
    in_flight: InFlightCalls,
    streams: StreamGate | None = None,
    access: AccessControl | None = None,
) -> grpc.RpcMethodHandler:
    """`handler` with the request interceptor's behaviour around each call,
    counting each in `in_flight` (and, if it streams, in `streams`),
    checked by `access` first if given.

    The wrapped handler receives bytes and decodes them itself: when gRPC
    decodes, a message it cannot parse fails the call with UNKNOWN before
    any interceptor sees it."""
    streaming = handler.request_streaming or handler.response_streaming
    health = method.startswith(HEALTH_METHOD_PREFIX)
    wrapping = _Wrapping(
        method=method,
        level=logging.DEBUG if health else logging.INFO,
        ok_level=logging.DEBUG if health or method in _QUIET_WHEN_OK else logging.INFO,
        in_flight=in_flight,
        decode=request_decoder(handler.request_deserializer),
        streams=streams if streaming else None,
        calls=metrics.server_calls(method, handler),
        access=access,
        audited=access is not None and access_control.audited(method),
    )
    wrap = _wrap_stream_response if handler.response_streaming else _wrap_unary_response
    return rebuild_handler(
        handler,
        wrap(wrapping, handler_behavior(handler), handler.request_streaming),
        None,
        handler.response_serializer,
    )


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Logs every request once and maps `RegistryError` to its status code.

    Unexpected exceptions become INTERNAL with the trace id in the message,
    never UNKNOWN. Its `in_flight` counts the calls of the one server it
    intercepts: another server's calls never delay this one's shutdown.

    gRPC asks for a method's handler on every call, and gets the same
    handler object every time: its wrapped version is built once per method
    and reused, so a call pays for the wrapper's work, not for building it.
    """

    def __init__(self, streams: StreamGate | None = None, access: AccessControl | None = None) -> None:
        self.in_flight = InFlightCalls()
        self.streams = streams
        self.access = access
        # method -> (the handler gRPC returned, its wrapped version). Bounded
        # by the methods the server implements: unknown ones have no handler.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        # Identity, not the name alone: a generic handler may answer a name
        # with a new handler (never the case for generated servicers).
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap_handler(method, handler, self.in_flight, self.streams, self.access)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


# Calls a server's gRPC core may hold before Python has taken them.
PENDING_CALLS_MAX = 100_000


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # grpc Python shares a busy port silently by default; a clash must fail.
        ("grpc.so_reuseport", 0),
        # Idle streams (VersionUpdate) live for hours: let clients ping them.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC core cancels (CANCELLED, before any handler sees them) the
        # calls that arrive faster than Python takes them, past 1,000
        # pending (3,000 hard): 10,000 followers subscribing at once lost
        # half their subscriptions that way. Our own bounds (StreamGate,
        # the request limits) answer with a status that says why.
        ("grpc.server.max_pending_requests", PENDING_CALLS_MAX),
        ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_MAX),
    ]


class ReportedHealth(health.aio.HealthServicer):
    """The standard health servicer; every status it is given is also
    published as `registry_health_serving`."""

    def __init__(self) -> None:
        super().__init__()
        self._services: set[str] = set()
        self._shutting_down = False

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        await super().set(service, status)
        if not self._shutting_down:  # the servicer ignores it then
            self._services.add(service)
            metrics.health_status(service, status == SERVING)

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._shutting_down = True
        for service in self._services:
            metrics.health_status(service, False)


@dataclass(frozen=True)
class GrpcServer:
    """A grpc.aio server with the request interceptor, the calls in flight on
    it (counted by that interceptor) and its health servicer."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    in_flight: InFlightCalls


def create_aio_server(
    max_message_bytes: int,
    *,
    streams: StreamGate | None = None,
    access: AccessControl | None = None,
    health: ReportedHealth | None = None,
) -> GrpcServer:
    """A server with the request interceptor (bounding streams with
    `streams`, if given) and a health servicer that answers NOT_SERVING
    until the caller declares the service ready: a new one, or `health`,
    another server's of the same process (both then answer the same).

    `access`: for a server that serves public methods, the check every call
    passes first and the audit trail (services.common.access.access_control);
    None for internal servers (nothing checked, nothing audited)."""
    interceptor = RequestInterceptor(streams, access)
    server = grpc.aio.server(interceptors=[interceptor], options=server_options(max_message_bytes))
    health_servicer = health if health is not None else ReportedHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return GrpcServer(server, health_servicer, interceptor.in_flight)


def bind(server: grpc.aio.Server, host: str, port: int) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise SystemExit(f"cannot listen on {address}: {exc} (is another process using the port?)") from exc
    return bound
