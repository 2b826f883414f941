"""Tracing on vs off: what OpenTelemetry costs the stack.

- `TraceSink`: a minimal OTLP/gRPC trace collector, in this process on a
  free loopback port; it counts the spans it receives (by `service.name`)
  and drops them.
- `tracing_overhead`: archived uploads and downloads of one size against
  two stacks, the usual one (tracing off) and one started with
  `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at the sink (every service and
  Envoy trace every request: the default sampler keeps all, the worst
  case). Runs alternate off, on, off, on… so that both see the same
  machine; figures are medians and the on / off ratio. Informational: no
  target.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from concurrent import futures
from types import TracebackType

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_api
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from bench.monitor import ProcessMonitor, ProcessUsage
from bench.plan import Plan
from bench.report import Figure, Target, format_size
from bench.transfers import BYTES_PER_SMALL_RUN, MAX_REPEATS, StackSide, _usage_details
from services.common.config import MIB

SPANS_TIMEOUT_SECONDS = 15.0  # > the 5 s batch delay of the SDK and of Envoy
_OFF, _ON = "tracing off", "tracing on"


def _service_name(resource_spans: trace_pb2.ResourceSpans) -> str:
    for attribute in resource_spans.resource.attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value
    return "unknown"


class _CountingTraceService(trace_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: Counter[str] = Counter()
        self.exports = 0

    def Export(  # noqa: N802 (the generated servicer's name)
        self, request: trace_api.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_api.ExportTraceServiceResponse:
        counts: Counter[str] = Counter()
        for resource_spans in request.resource_spans:
            counts[_service_name(resource_spans)] += sum(len(scope.spans) for scope in resource_spans.scope_spans)
        with self.lock:
            self.spans.update(counts)
            self.exports += 1
        return trace_api.ExportTraceServiceResponse()


class TraceSink:
    """OTLP/gRPC trace collector on 127.0.0.1 (free port) that counts spans."""

    def __init__(self) -> None:
        self._service = _CountingTraceService()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="trace-sink"))
        trace_grpc.add_TraceServiceServicer_to_server(self._service, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        """The value of OTEL_EXPORTER_OTLP_ENDPOINT that points here."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def spans(self) -> int:
        with self._service.lock:
            return sum(self._service.spans.values())

    @property
    def exports(self) -> int:
        with self._service.lock:
            return self._service.exports

    @property
    def spans_by_service(self) -> dict[str, int]:
        with self._service.lock:
            return dict(sorted(self._service.spans.items()))

    def wait_for_spans(self, services: set[str], timeout: float = SPANS_TIMEOUT_SECONDS) -> bool:
        """Waits (exporters batch for seconds) until each of `services` sent
        a span; returns whether they all did within `timeout`."""
        deadline = time.monotonic() + timeout
        while not services <= self.spans_by_service.keys():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def __enter__(self) -> TraceSink:
        self._server.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.stop(grace=1.0).wait()


def _direction_figures(
    direction: str, size: int, repeats: int, runs: dict[str, list[float]], usage: dict[str, list[dict[str, ProcessUsage]]]
) -> list[Figure]:
    label = f"{direction} archived {format_size(size)}"
    key = f"tracing.{direction}.archived.{format_size(size).replace(' ', '')}"
    off, on = statistics.median(runs[_OFF]), statistics.median(runs[_ON])
    common = {"size_bytes": size, "transfers_per_run": repeats}
    return [
        Figure(key=f"{key}.off", label=f"{label}, tracing off", unit="MiB/s", stack_runs=runs[_OFF], details=common),
        Figure(key=f"{key}.on", label=f"{label}, tracing on", unit="MiB/s", stack_runs=runs[_ON], details=common),
        Figure(
            key=f"{key}.on_off_percent",
            label=f"{label}, tracing on / off",
            unit="%",
            stack_runs=[100.0 * on / off],
            details={
                **common,
                **_usage_details(usage, repeats * size),
                # Runs alternate off, on: each pair ran back to back.
                "paired_on_off_percent": [round(100.0 * b / a, 1) for a, b in zip(runs[_OFF], runs[_ON])],
            },
        ),
    ]


def tracing_overhead(off: StackSide, on: StackSide, size: int, plan: Plan) -> list[Figure]:
    """Archived upload, then download, of `size` bytes by one client, on the
    stack without and with tracing, runs alternating off, on, off, on…
    Below 16 MiB a run repeats the transfer, as in `single_transfers`.
    The span count is read by the caller once the traced stack has stopped
    (which flushes the services' last spans): see `spans_figure`."""
    repeats = max(1, min(MAX_REPEATS, BYTES_PER_SMALL_RUN // size))
    sides = {_OFF: off, _ON: on}
    figures: list[Figure] = []
    # A stored version per side, read back once: also warms both stacks
    # (the traced one has just started) before anything is timed.
    with off.stored_version(size, archived=True) as off_version, on.stored_version(size, archived=True) as on_version:
        versions = {_OFF: off_version, _ON: on_version}

        runs: dict[str, list[float]] = {_OFF: [], _ON: []}
        usage: dict[str, list[dict[str, ProcessUsage]]] = {_OFF: [], _ON: []}
        for _ in range(plan.runs):
            for name, side in sides.items():
                with side.fresh_model("tracing") as model_id:
                    with ProcessMonitor(side.pids) as monitor:
                        seconds = sum(side.client.upload(model_id, size, archived=True)[0] for _ in range(repeats))
                runs[name].append(repeats * size / MIB / seconds)
                usage[name].append(monitor.usage)
        figures += _direction_figures("upload", size, repeats, runs, usage)

        runs = {_OFF: [], _ON: []}
        usage = {_OFF: [], _ON: []}
        for _ in range(plan.runs):
            for name, side in sides.items():
                model_id, version = versions[name]
                with ProcessMonitor(side.pids) as monitor:
                    seconds = sum(side.client.download(model_id, version, size) for _ in range(repeats))
                runs[name].append(repeats * size / MIB / seconds)
                usage[name].append(monitor.usage)
        figures += _direction_figures("download", size, repeats, runs, usage)
    return figures


def spans_figure(sink: TraceSink) -> Figure:
    """Spans the sink received from the traced stack. Its target only checks
    that tracing was really on (else "tracing on" measured nothing)."""
    return Figure(
        key="tracing.spans",
        label="spans received with tracing on",
        unit="spans",
        stack_runs=[float(sink.spans)],
        target=Target("at_least", 1.0),
        details={"by_service": sink.spans_by_service, "exports": sink.exports},
    )
