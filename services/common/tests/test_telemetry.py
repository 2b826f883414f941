"""Tracing is off, at no cost, unless an OTLP endpoint is configured."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import threading
from services.common.telemetry import configure_tracing
enabled = configure_tracing("probe")
from opentelemetry import trace
print(enabled, type(trace.get_tracer_provider()).__name__, sorted(t.name for t in threading.enumerate()))
"""


def run_probe(**env: str) -> str:
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_no_endpoint_means_no_provider_and_no_threads():
    out = run_probe()
    assert out.startswith("False ProxyTracerProvider"), out
    assert out.endswith("['MainThread']"), out


def test_endpoint_installs_an_exporter():
    out = run_probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317")
    assert out.startswith("True TracerProvider"), out
    assert "OtelBatchSpan" in out, out
