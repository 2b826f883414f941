"""Scraping a running stack the way Prometheus does: every target of the
file_sd file `make up` writes, each at its `__metrics_path__`."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

TARGETS_FILE = "prometheus-targets.json"


@dataclass(frozen=True)
class Sample:
    service: str  # the target's `service` label
    target: str
    name: str
    labels: dict[str, str]
    value: float


def targets(run_dir: Path) -> list[tuple[str, str]]:
    """(service, URL) of every target in the stack's targets file."""
    groups = json.loads((run_dir / TARGETS_FILE).read_text())
    return [
        (group["labels"]["service"], f"http://{target}{group['labels'].get('__metrics_path__', '/metrics')}")
        for group in groups
        for target in group["targets"]
    ]


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def target_samples(service: str, url: str) -> list[Sample]:
    """Every sample one target (of `service`) serves now."""
    return [
        Sample(service, url, sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(_read(url))
        for sample in family.samples
    ]


class Scrape:
    """Every sample of every target, read once."""

    def __init__(self, run_dir: Path) -> None:
        self.targets = targets(run_dir)
        self.samples: list[Sample] = [sample for service, url in self.targets for sample in target_samples(service, url)]

    def values(self, name: str, service: str, **labels: str) -> list[float]:
        """The values of `name` on every target of `service` whose labels include `labels`."""
        return [
            s.value
            for s in self.samples
            if s.name == name and s.service == service and labels.items() <= s.labels.items()
        ]

    def total(self, name: str, service: str, **labels: str) -> float:
        return sum(self.values(name, service, **labels))

    def label_values(self) -> set[str]:
        return {value for sample in self.samples for value in sample.labels.values()}
