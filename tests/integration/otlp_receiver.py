"""A real OTLP/gRPC trace receiver for tests: collects every exported span."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    status_code: int  # 0 unset, 1 ok, 2 error
    duration_ms: float
    attributes: dict


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0)

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        spans = []
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), "?"
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {}
                    for a in span.attributes:
                        value = a.value
                        attributes[a.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
                    spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            status_code=span.status.code,
                            duration_ms=(span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
                            attributes=attributes,
                        )
                    )
        with self._lock:
            self._spans.extend(spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if s.trace_id == trace_id]

    def wait_for(
        self, trace_id: str, services: set[str], root_parent: str = "", timeout: float = 30.0, settle: float = 1.5
    ) -> list[ReceivedSpan]:
        """Spans of one trace, once every service has exported some (Envoy
        flushes about every 5 s), the span under `root_parent` (the client's)
        has arrived, and no new span arrived for `settle` s."""
        deadline = time.monotonic() + timeout
        count, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if len(spans) != count:
                count, stable_since = len(spans), time.monotonic()
            elif (
                services <= {s.service for s in spans}
                and (not root_parent or any(s.parent_span_id == root_parent for s in spans))
                and time.monotonic() - stable_since >= settle
            ):
                return spans
            time.sleep(0.2)
        return self.trace(trace_id)


def span_tree(spans: list[ReceivedSpan]) -> str:
    """An indented tree (service, name, duration) for reports."""
    children: dict[str, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in spans}
    for s in spans:
        children.setdefault(s.parent_span_id if s.parent_span_id in ids else "", []).append(s)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s.name):
            lines.append(f"{'  ' * depth}{s.service}: {s.name} ({s.duration_ms:.1f} ms)")
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)
