"""One logging format for every service: timestamp, service, level, message,
and the current trace/span ids so a log line leads to its trace."""

from __future__ import annotations

import logging
import os
import sys
import time

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


class _Formatter(logging.Formatter):
    """`logging.Formatter` whose timestamps cost a string lookup, not a
    `strftime`, for every line after the first of each second: a busy
    service logs one line per request."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        # (second since the epoch, its text): one tuple, so that threads
        # logging at once never pair a second with another one's text.
        self._cached: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached_second, text = self._cached
        if second != cached_second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._cached = (second, text)
        return self.default_msec_format % (text, record.msecs)


def configure_logging(service_name: str) -> None:
    level = os.environ.get("COGMENT_MODEL_REGISTRY_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceContextFilter())
    handler.setFormatter(
        _Formatter(
            f"%(asctime)s {service_name} %(levelname)s "
            "trace_id=%(trace_id)s span_id=%(span_id)s %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
