"""The scrape targets of a local stack, as a Prometheus file_sd file.

`make up` writes `<run dir>/prometheus-targets.json`: one group per kind of
process, with a `service` label, in the format of Prometheus's
`file_sd_configs`:

    [{"targets": ["127.0.0.1:41234", ...], "labels": {"service": "frontend"}},
     ...,
     {"targets": ["127.0.0.1:9901"],
      "labels": {"service": "envoy", "__metrics_path__": "/stats/prometheus"}}]

Prometheus re-reads the file when it changes; it is replaced atomically,
so a scrape never sees half of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.launcher.ports import LOOPBACK
from services.launcher.topology import StackTopology

TARGETS_FILE_NAME = "prometheus-targets.json"
# Envoy serves its statistics in the Prometheus format on its admin port.
ENVOY_METRICS_PATH = "/stats/prometheus"


def scrape_targets(processes: Sequence[dict[str, Any]], topology: StackTopology) -> list[dict[str, Any]]:
    """The file_sd groups of a stack: every service process with a metrics
    port (see `LocalStack.plan`), grouped by kind, and Envoy's admin."""
    by_kind: dict[str, list[str]] = {}
    for proc in processes:
        if proc.get("metrics_port"):
            by_kind.setdefault(proc["kind"], []).append(f"{LOOPBACK}:{proc['metrics_port']}")
    groups = [{"targets": targets, "labels": {"service": kind}} for kind, targets in by_kind.items()]
    groups.append(
        {
            "targets": [f"{topology.admin_host}:{topology.admin_port}"],
            "labels": {"service": "envoy", "__metrics_path__": ENVOY_METRICS_PATH},
        }
    )
    return groups


def write_scrape_targets(path: Path, processes: Sequence[dict[str, Any]], topology: StackTopology) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(scrape_targets(processes, topology), indent=2) + "\n")
    os.replace(temporary, path)
