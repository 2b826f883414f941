"""Tracing on vs off: what OpenTelemetry costs the stack.

- `TraceSink`: a minimal OTLP/gRPC trace collector, in this process on a
  free loopback port; it counts the spans it receives (by `service.name`)
  and drops them.
- The comparison itself is `bench.overhead.transfer_overhead`, between the
  usual stack (tracing off) and one started with
  `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at the sink (every service and
  Envoy trace every request: the default sampler keeps all, the worst case).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent import futures
from types import TracebackType

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_api
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from bench.report import Figure, Target

SPANS_TIMEOUT_SECONDS = 15.0  # > the 5 s batch delay of the SDK and of Envoy


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
