"""Prometheus metrics: every metric the registry exports, and its `/metrics`
endpoint (started by `run_service`, on COGMENT_MODEL_REGISTRY_METRICS_PORT).

Names follow the Prometheus conventions: units in names (`_seconds`,
`_bytes`), `_total` on counters, histograms for durations. The gRPC
families are those of go-grpc-prometheus (`grpc_server_handled_total`,
`grpc_server_handling_seconds`...), which dashboards and alerts written for
Go services (Cogment 2.x's among them) already know; the registry's own are
`registry_*`. What each one means is listed in README.md, "Reading metrics".

Labels are bounded: method and status names, a tier, an access kind, a
health service name, values of fixed lists. Never a model id, a blob key, a
version number or anything else a client chooses: a label value that
grows with traffic grows Prometheus's memory with it.

Cheap on the hot path: the metric objects a call touches are looked up once
(per method, per upload or download), and data is counted per chunk, never
per byte; a call costs a few microseconds of the ~400 it costs anyway.

Each service's families are created on first use (`frontend()`,
`blobstore()`, `metadata()`), so a process exports its own and the common
ones only. With the endpoint off (METRICS_PORT unset or 0),
`configure_metrics` makes every metric a no-op: nothing is counted that
nobody could read.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from services.common.config import PREFIX, ConfigError, env_int

METRICS_PORT_VARIABLE = PREFIX + "METRICS_PORT"
# Unset or 0: no endpoint, and nothing recorded. The images set a fixed port
# (the Dockerfile: each container has its own network namespace); the local
# launcher gives each process a free loopback port. A default port here
# would make every process started by hand (tests...) fight for it.
METRICS_OFF = 0

# `_created` series double the series of every counter and histogram for
# a timestamp that `rate()` does not need.
disable_created_metrics()

# Durations from a cached read (~0.5 ms) to a stream that lasts hours
# (VersionUpdate, multi-GiB transfers: +Inf).
DURATION_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)
# An fsync of a blob: milliseconds on a local disk, seconds for a large one.
FSYNC_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DATABASE_BUCKETS_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

# The values the bounded labels of the hooks may take; anything else is
# counted as "other" rather than growing a series.
CREDENTIAL_KINDS = frozenset({"none", "bearer", "basic", "certificate"})
AUTHENTICATION_FAILURE_REASONS = frozenset({"missing", "malformed", "unknown", "mismatch", "forbidden", "busy"})
OTHER = "other"

_enabled = True


def metrics_port(env: Mapping[str, str] | None = None) -> int:
    """The port of this process's `/metrics` endpoint; 0 (`METRICS_OFF`): none."""
    port = env_int(METRICS_PORT_VARIABLE, METRICS_OFF, env, minimum=0)
    if port > 65535:
        raise ConfigError(f"{METRICS_PORT_VARIABLE}={port} is not a port (0 turns metrics off)")
    return port


def configure_metrics(enabled: bool) -> None:
    """On (the default) or off for this process; call before any server or
    channel is built (`run_service` does)."""
    global _enabled
    _enabled = enabled


def serve_metrics(host: str, port: int) -> None:
    """Serves `/metrics` (Prometheus text format) on `host:port` from a
    daemon thread, for as long as the process lives. A port already in use
    is a ConfigError naming the variable."""
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port} ({METRICS_PORT_VARIABLE}): {exc.strerror}") from None


class _Off:
    """What a metric is when metrics are off: every operation does nothing."""

    def labels(self, *values: str, **named: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set_function(self, function: Callable[[], float]) -> None:
        pass


_OFF = _Off()


def _counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Any:
    return Counter(name, documentation, labels) if _enabled else _OFF


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Any:
    return Gauge(name, documentation, labels) if _enabled else _OFF


def _histogram(name: str, documentation: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> Any:
    return Histogram(name, documentation, labels, buckets=buckets) if _enabled else _OFF


TIERS = ("memory", "archive")


def tier_label(archived: bool) -> str:
    """The `tier` label of a version's data: where the blobstore keeps it."""
    return TIERS[1] if archived else TIERS[0]


def _start_at_zero(*metrics: Any, values: tuple[str, ...]) -> None:
    """Creates the series of every value of a one-label metric at once: a
    series that appears only with its first event leaves `rate()` and
    `increase()` without an answer until then (and alerts silent)."""
    for metric in metrics:
        for value in values:
            metric.labels(value)


# -- gRPC calls, served and made (every service) -------------------------------------


def _rpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming and response_streaming:
        return "bidi_stream"
    if request_streaming:
        return "client_stream"
    return "server_stream" if response_streaming else "unary"


def _split_method(method: str) -> tuple[str, str]:
    """`/package.Service/Method` -> (`package.Service`, `Method`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class _GrpcFamilies:
    """One side's (server or client) families, as go-grpc-prometheus names them."""

    def __init__(self, side: str) -> None:
        method_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = _counter(f"grpc_{side}_started", f"gRPC calls started ({side} side).", method_labels)
        self.handled = _counter(
            f"grpc_{side}_handled", f"gRPC calls finished, by status code ({side} side).", (*method_labels, "grpc_code")
        )
        self.seconds = _histogram(
            f"grpc_{side}_handling_seconds",
            f"Duration of gRPC calls until their status, in seconds ({side} side).",
            DURATION_BUCKETS_SECONDS,
            method_labels,
        )


@functools.cache
def _grpc(side: str) -> _GrpcFamilies:
    return _GrpcFamilies(side)


class CallMetrics:
    """The series of one gRPC method on one side, bound once: a call costs
    two counter increments and one histogram observation."""

    __slots__ = ("_handled", "_labels", "_seconds", "_started", "_by_code")

    def __init__(self, families: _GrpcFamilies, method: str, rpc_type: str) -> None:
        self._labels = (rpc_type, *_split_method(method))
        self._started = families.started.labels(*self._labels)
        self._seconds = families.seconds.labels(*self._labels)
        self._handled = families.handled
        # Status codes are a fixed enumeration: at most 17 entries.
        self._by_code: dict[grpc.StatusCode, Any] = {}

    def started(self) -> None:
        self._started.inc()

    def finished(self, code: grpc.StatusCode, seconds: float) -> None:
        handled = self._by_code.get(code)
        if handled is None:
            handled = self._by_code[code] = self._handled.labels(*self._labels, code.name)
        handled.inc()
        self._seconds.observe(seconds)


def server_calls(method: str, handler: grpc.RpcMethodHandler) -> CallMetrics:
    """The series the request interceptor records `method`'s calls in."""
    return CallMetrics(_grpc("server"), method, _rpc_type(handler.request_streaming, handler.response_streaming))


# (method, type) -> its series on the client side; bounded by the methods
# a service calls.
_client_calls: dict[tuple[str, str], CallMetrics] = {}
# The recording tasks in progress (asyncio keeps only weak references).
_recording: set[asyncio.Future[None]] = set()


def _client_call(method: str, rpc_type: str) -> CallMetrics:
    calls = _client_calls.get((method, rpc_type))
    if calls is None:
        calls = _client_calls[(method, rpc_type)] = CallMetrics(_grpc("client"), method, rpc_type)
    return calls


async def _until_reply(calls: CallMetrics, call: Any) -> Any:
    """The reply of a call with one reply, the call recorded once it is there."""
    started, code = time.perf_counter(), grpc.StatusCode.OK
    calls.started()
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        raise
    except BaseException:
        code = grpc.StatusCode.CANCELLED
        raise
    finally:
        calls.finished(code, time.perf_counter() - started)


def _when_done(calls: CallMetrics, call: Any) -> Any:
    """A call with streamed replies, recorded when gRPC reports it done,
    whoever reads the replies (or cancels the call)."""
    started = time.perf_counter()
    calls.started()

    async def record(done: grpc.aio.Call) -> None:
        calls.finished(await done.code(), time.perf_counter() - started)

    def on_done(done: grpc.aio.Call) -> None:
        # code() is a coroutine, answered at once for a finished call.
        task = asyncio.ensure_future(record(done))
        _recording.add(task)
        task.add_done_callback(_recording.discard)

    call.add_done_callback(on_done)
    return call


class _RecordedMethod:
    """A channel's callable for one method, recording each call."""

    __slots__ = ("_call", "_calls", "_one_reply")

    def __init__(self, call: Any, calls: CallMetrics, *, one_reply: bool) -> None:
        self._call, self._calls, self._one_reply = call, calls, one_reply

    def __call__(self, request: Any, **options: Any) -> Any:
        call = self._call(request, **options)
        # One reply: awaited (every internal caller awaits it at once), in a
        # plain coroutine. Streams: the call itself, for its callers to
        # iterate and cancel.
        return _until_reply(self._calls, call) if self._one_reply else _when_done(self._calls, call)


class RecordedChannel:
    """A grpc.aio channel whose calls are recorded (`grpc_client_*`).

    A wrapper of the channel's callables rather than grpc.aio interceptors:
    an intercepted call costs a task and a proxy object more, measured at
    ~40 us of CPU per small call (5-10 % of its cost); this costs ~3 us.
    Everything but the four kinds of callables is the channel's own.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def _method(self, kind: str, rpc_type: str, method: str, args: tuple, options: dict, *, one_reply: bool) -> Any:
        call = getattr(self._channel, kind)(method, *args, **options)
        return _RecordedMethod(call, _client_call(method, rpc_type), one_reply=one_reply)

    def unary_unary(self, method: str, *args: Any, **options: Any) -> Any:
        return self._method("unary_unary", "unary", method, args, options, one_reply=True)

    def stream_unary(self, method: str, *args: Any, **options: Any) -> Any:
        return self._method("stream_unary", "client_stream", method, args, options, one_reply=True)

    def unary_stream(self, method: str, *args: Any, **options: Any) -> Any:
        return self._method("unary_stream", "server_stream", method, args, options, one_reply=False)

    def stream_stream(self, method: str, *args: Any, **options: Any) -> Any:
        return self._method("stream_stream", "bidi_stream", method, args, options, one_reply=False)


def recorded(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    """`channel`, its calls recorded (as is with metrics off)."""
    return RecordedChannel(channel) if _enabled else channel  # type: ignore[return-value]


# -- health (every service) ---------------------------------------------------------------


@functools.cache
def _health() -> Any:
    return _gauge(
        "registry_health_serving",
        "1 while this process answers SERVING for the health service named by the label, else 0 "
        '("overall" is the empty name).',
        ("health_service",),
    )


def health_status(service: str, serving: bool) -> None:
    """What this process's health servicer answers for `service` now."""
    _health().labels(service or "overall").set(1 if serving else 0)


# -- frontend ---------------------------------------------------------------------------------


class FrontendMetrics:
    """The frontend's own families: the public data path and VersionUpdate."""

    def __init__(self) -> None:
        self.upload_bytes = _counter(
            "registry_upload_bytes", "Version data received by CreateVersion, in bytes.", ("tier",)
        )
        self.download_bytes = _counter(
            "registry_download_bytes", "Version data sent by RetrieveVersionData, in bytes.", ("tier",)
        )
        self.subscribers = _gauge(
            "registry_version_update_subscribers", "VersionUpdate streams open on this frontend."
        )
        self.notifications = _counter(
            "registry_version_update_notifications", "Versions sent to VersionUpdate subscribers."
        )
        self.blobstore_replicas_serving = _gauge(
            "registry_blobstore_replicas_serving",
            "Blobstore replicas this frontend places new blobs on: its own view (it calls them directly), "
            "refreshed every upstream health interval.",
        )
        self.data_loss = _data_loss()
        _start_at_zero(self.upload_bytes, self.download_bytes, values=TIERS)
        _start_at_zero(self.data_loss, values=("missing",))


@functools.cache
def frontend() -> FrontendMetrics:
    return FrontendMetrics()


@functools.cache
def _directory_registered() -> Any:
    return _gauge(
        "registry_directory_registered",
        "1 while this frontend's registration in the Cogment Directory stands, else 0.",
    )


def directory_registration_state(registered: bool) -> None:
    """Hook for the Cogment Directory registration: call on every change
    (registered, deregistered, lost, registration failing)."""
    _directory_registered().set(1 if registered else 0)


@functools.cache
def _authentication_failures() -> Any:
    return _counter(
        "registry_authentication_failures",
        "Calls refused for their credential (UNAUTHENTICATED or PERMISSION_DENIED), by credential kind and reason.",
        ("credential", "reason"),
    )


def authentication_failed(credential: str, reason: str) -> None:
    """Hook for the auth interceptor: one refused call. `credential` is one
    of CREDENTIAL_KINDS, `reason` one of AUTHENTICATION_FAILURE_REASONS
    (anything else counts as "other": labels stay bounded)."""
    _authentication_failures().labels(
        credential if credential in CREDENTIAL_KINDS else OTHER,
        reason if reason in AUTHENTICATION_FAILURE_REASONS else OTHER,
    ).inc()


@functools.cache
def _data_loss() -> Any:
    return _counter(
        "registry_data_loss",
        "Reads of archived data that found it corrupt (blobstore: size or SHA-256 differs from the recorded one) "
        "or missing (frontend: the archive has no blob for the version).",
        ("cause",),
    )


# -- metadata -----------------------------------------------------------------------------------


class MetadataMetrics:
    """Metadata's families: the transient cache, watches and the database."""

    def __init__(self) -> None:
        self.transient_versions = _gauge(
            "registry_transient_versions", "Transient versions held (the whole cache, every model)."
        )
        self.transient_bytes = _gauge("registry_transient_bytes", "Bytes of the transient versions held.")
        self.transient_max_versions = _gauge(
            "registry_transient_max_versions", "Budget of the transient cache in versions (VERSION_CACHE_MAX_ITEMS)."
        )
        self.transient_max_bytes = _gauge(
            "registry_transient_max_bytes", "Budget of the transient cache in bytes (VERSION_CACHE_MAX_BYTES)."
        )
        self.evicted_versions = _counter(
            "registry_evicted_versions", "Transient versions evicted from the cache by commits of this replica."
        )
        self.watches = _gauge(
            "registry_metadata_watches", "WatchVersions streams (the frontends' VersionUpdate) open on this replica."
        )
        self.database_seconds = _histogram(
            "registry_database_transaction_duration_seconds",
            "Duration of metadata database transactions, in seconds, by access (read or write).",
            DATABASE_BUCKETS_SECONDS,
            ("access",),
        )
        self.database_errors = _counter(
            "registry_database_errors",
            "Metadata database transactions that failed in the database (not a refused request), by access.",
            ("access",),
        )
        self.read_cache_lookups = _counter(
            "registry_public_read_cache_lookups",
            "Public small reads looked up in the reply cache, by outcome (hit or miss).",
            ("outcome",),
        )


@functools.cache
def metadata() -> MetadataMetrics:
    return MetadataMetrics()


# -- blobstore ------------------------------------------------------------------------------------


class BlobstoreMetrics:
    """The blobstore's families: bytes stored and read, durability, memory, sweeps."""

    def __init__(self) -> None:
        self.written_bytes = _counter(
            "registry_blobstore_written_bytes", "Blob data received by PutBlob, in bytes.", ("tier",)
        )
        self.read_bytes = _counter("registry_blobstore_read_bytes", "Blob data sent by GetBlob, in bytes.", ("tier",))
        self.fsync_seconds = _histogram(
            "registry_blobstore_fsync_duration_seconds",
            "Duration of making an archived blob durable in the file archive (fsync of the file, link, "
            "fsync of its directory), in seconds.",
            FSYNC_BUCKETS_SECONDS,
        )
        self.memory_bytes = _gauge(
            "registry_blobstore_memory_bytes", "Bytes the memory tier holds or has reserved for uploads in progress."
        )
        self.memory_max_bytes = _gauge(
            "registry_blobstore_memory_max_bytes", "Budget of the memory tier in bytes (BLOBSTORE_MEMORY_MAX_BYTES)."
        )
        self.sweeps = _counter("registry_sweeper_runs", "Sweeps of orphaned blobs, by outcome (ok, failed, or refused: metadata looked like another or an empty database).", ("outcome",))
        self.swept_blobs = _counter("registry_sweeper_removed_blobs", "Orphaned blobs the sweeper removed.", ("tier",))
        self.data_loss = _data_loss()
        _start_at_zero(self.written_bytes, self.read_bytes, self.swept_blobs, values=TIERS)
        _start_at_zero(self.sweeps, values=("ok", "failed", "refused"))
        _start_at_zero(self.data_loss, values=("corrupt",))

    def follow_memory_tier(self, held_bytes: Callable[[], float], max_bytes: int) -> None:
        """Reports the memory tier's use, read when scraped (nothing on the data path)."""
        self.memory_bytes.set_function(held_bytes)
        self.memory_max_bytes.set(max_bytes)


@functools.cache
def blobstore() -> BlobstoreMetrics:
    return BlobstoreMetrics()
