"""Figures, targets, the printed table and `results.json`."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from services.common.config import MIB



def format_size(size: int) -> str:
    """1048576 -> '1 MiB' (the largest unit that divides it, down to bytes)."""
    for unit, factor in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` 0.99 for p99)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Target:
    """A requirement on a figure: `kind` is `ratio_at_least` (stack / the
    figure's reference: the ideal registry, or the floor of the stack's
    shape), `at_least`, `below` or `below_or_at` (the stack's figure, in the
    figure's unit)."""

    kind: str
    threshold: float
    reference: str = "ideal"

    def describe(self, unit: str) -> str:
        if self.kind == "ratio_at_least":
            return f">= {self.threshold:.0%} of {self.reference}"
        sign = {"at_least": ">=", "below": "<", "below_or_at": "<="}[self.kind]
        return f"{sign} {self.threshold:g} {unit}"

    def met(self, figure: Figure) -> bool:
        if self.kind == "ratio_at_least":
            return figure.ratio is not None and figure.ratio >= self.threshold
        if self.kind == "at_least":
            return figure.stack >= self.threshold
        if self.kind == "below_or_at":
            return figure.stack <= self.threshold
        return figure.stack < self.threshold


@dataclass
class Figure:
    """One measured quantity: the stack's value per run, the ideal's when the
    comparison is meaningful, and the target it must meet, if any."""

    key: str  # stable identifier, e.g. "upload.archived.64MiB"
    label: str  # what the table shows
    unit: str
    stack_runs: list[float]
    ideal_runs: list[float] | None = None
    target: Target | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def stack(self) -> float:
        return statistics.median(self.stack_runs)

    @property
    def ideal(self) -> float | None:
        return statistics.median(self.ideal_runs) if self.ideal_runs else None

    @property
    def ratio(self) -> float | None:
        ideal = self.ideal
        return self.stack / ideal if ideal else None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "stack": self.stack,
            "ideal": self.ideal,
            "ratio": self.ratio,
            "target": self.target.describe(self.unit) if self.target else None,
            "target_met": self.target.met(self) if self.target else None,
            "runs": {"stack": self.stack_runs, "ideal": self.ideal_runs},
            "details": self.details,
        }


def machine_description() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "grpc": grpc.__version__,
    }


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "spans":
        return f"{value:,.0f} spans"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def render_table(figures: list[Figure]) -> str:
    """The results as a fixed-width text table, one figure per row."""
    # "ideal or floor": the ideal registry's figure, or for small calls the
    # floor of the stack's shape measured in the same run (bench/calls.py).
    header = ("scenario", "stack", "ideal or floor", "ratio", "target", "result")
    rows = [header]
    for figure in figures:
        ratio = figure.ratio
        rows.append(
            (
                figure.label,
                _number(figure.stack, figure.unit),
                _number(figure.ideal, figure.unit),
                f"{ratio:.0%}" if ratio is not None else "-",
                figure.target.describe(figure.unit) if figure.target else "",
                ("pass" if figure.target.met(figure) else "MISS") if figure.target else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:5], widths[1:5])] + [row[5]]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def render_cpu(figures: list[Figure]) -> str:
    """CPU use of each process during the scenarios that recorded it: % of
    one core (the busiest process is the bottleneck) and, for transfers,
    CPU-seconds per GiB moved (what each process costs per byte; on a
    machine where all of them share the cores, the sum bounds throughput)."""
    lines = []
    for figure in figures:
        cpu = figure.details.get("cpu_percent")
        per_gib = figure.details.get("cpu_seconds_per_gib", {})
        if cpu:
            for side, per_process in cpu.items():
                seconds = per_gib.get(side, {})
                usage = ", ".join(
                    f"{name} {percent:.0f}%" + (f" ({seconds[name]:.2f} s/GiB)" if name in seconds else "")
                    for name, percent in per_process.items()
                )
                total = f"; total {sum(seconds.values()):.2f} s/GiB" if seconds else ""
                lines.append(f"{figure.label} [{side}]: {usage}{total}")
    return "\n".join(lines)


def write_results(path: Path, machine: dict[str, Any], config: dict[str, Any], figures: list[Figure]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine, "config": config, "figures": [figure.to_json() for figure in figures]}
    path.write_text(json.dumps(document, indent=2) + "\n")
