"""Metrics on vs off: what recording and serving Prometheus metrics costs.

The bench's stack runs as `make up` runs it, metrics on (every process
serves /metrics; nothing scrapes it during the runs, as a Prometheus
scraping every 15 s would barely). A second stack is started with
COGMENT_MODEL_REGISTRY_METRICS_PORT=0: no endpoint, and every metric a
no-op (services/common/metrics.py). The comparison is `bench.overhead`'s,
for archived transfers and small calls; `samples_figure` checks that the
first stack really measured and the second did not.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from bench.report import Figure, Target
from services.launcher.prometheus_targets import TARGETS_FILE_NAME


def _scrape(run_dir: Path) -> dict[str, int]:
    """Samples served by each kind of target of a stack's targets file."""
    samples: dict[str, int] = {}
    for group in json.loads((run_dir / TARGETS_FILE_NAME).read_text()):
        service = group["labels"]["service"]
        for target in group["targets"]:
            url = f"http://{target}{group['labels'].get('__metrics_path__', '/metrics')}"
            with urllib.request.urlopen(url, timeout=10) as response:
                lines = response.read().decode().splitlines()
            samples[service] = samples.get(service, 0) + sum(1 for line in lines if line and not line.startswith("#"))
    return samples


def samples_figure(measured_run_dir: Path, unmeasured_run_dir: Path) -> Figure:
    """Samples the registry's own processes served on the metrics-on stack
    (must be ≥ 1, else "metrics on" measured nothing); the details also say
    which targets the metrics-off stack listed (Envoy's only)."""
    measured = _scrape(measured_run_dir)
    unmeasured = [group["labels"]["service"] for group in json.loads((unmeasured_run_dir / TARGETS_FILE_NAME).read_text())]
    return Figure(
        key="metrics.samples",
        label="samples served by the services with metrics on",
        unit="samples",
        stack_runs=[float(sum(count for service, count in measured.items() if service != "envoy"))],
        target=Target("at_least", 1.0),
        details={"by_service": measured, "targets_with_metrics_off": unmeasured},
    )
