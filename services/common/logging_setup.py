"""One logging format for every service: timestamp, service, level, message,
and the current trace/span ids so a log line leads to its trace."""

from __future__ import annotations

import logging
import os
import sys

from opentelemetry import trace


class _TraceContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = "-"
            record.span_id = "-"
        return True


def configure_logging(service_name: str) -> None:
    level = os.environ.get("COGMENT_MODEL_REGISTRY_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceContextFilter())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s {service_name} %(levelname)s "
            "trace_id=%(trace_id)s span_id=%(span_id)s %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
