"""What a feature costs the stack: the same work on two stacks that differ
only by it (tracing, metrics), runs alternating off, on, off, on… so that
both see the same machine; figures are medians and the on / off ratio
(100 % = no measurable cost). Informational: no target.

- `transfer_overhead`: archived uploads, then downloads, of one size;
- `small_call_overhead`: RetrieveVersionInfos of a model's latest version
  (what actors poll), p50 and p99 latency of one client calling back to
  back: the calls where a per-call cost would show first.
"""

from __future__ import annotations

import statistics
import time

from cogmentAPI import model_registry_pb2 as api

from bench.monitor import ProcessMonitor, ProcessUsage
from bench.plan import Plan
from bench.report import Figure, format_size, percentile
from bench.transfers import BYTES_PER_SMALL_RUN, MAX_REPEATS, StackSide, _usage_details
from services.common.config import MIB

_SMALL_VERSION_SIZE = 1024


def _on_off_figures(
    feature: str,
    key: str,
    label: str,
    unit: str,
    off: list[float],
    on: list[float],
    details: dict,
    ratio_details: dict | None = None,
) -> list[Figure]:
    """The off and on medians, and on / off in % (for times: off / on, so
    that below 100 % always means slower with the feature on); the ratio
    also carries `ratio_details` (CPU use of both sides)."""
    faster_is_higher = unit != "ms"
    ratio = statistics.median(on) / statistics.median(off)
    paired = [b / a for a, b in zip(off, on)]
    if not faster_is_higher:
        ratio, paired = 1 / ratio, [1 / p for p in paired]
    return [
        Figure(key=f"{key}.off", label=f"{label}, {feature} off", unit=unit, stack_runs=off, details=details),
        Figure(key=f"{key}.on", label=f"{label}, {feature} on", unit=unit, stack_runs=on, details=details),
        Figure(
            key=f"{key}.on_off_percent",
            label=f"{label}, {feature} on / off",
            unit="%",
            stack_runs=[100.0 * ratio],
            # Runs alternate off, on: each pair ran back to back.
            details={
                **details,
                **(ratio_details or {}),
                "paired_on_off_percent": [round(100.0 * p, 1) for p in paired],
            },
        ),
    ]


def transfer_overhead(feature: str, off: StackSide, on: StackSide, size: int, plan: Plan) -> list[Figure]:
    """Archived upload, then download, of `size` bytes by one client, on the
    stack without and with `feature`, runs alternating off, on, off, on…
    Below 16 MiB a run repeats the transfer, as in `single_transfers`."""
    repeats = max(1, min(MAX_REPEATS, BYTES_PER_SMALL_RUN // size))
    sides = {"off": off, "on": on}
    figures: list[Figure] = []
    common = {"size_bytes": size, "transfers_per_run": repeats}
    # A stored version per side, read back once: also warms both stacks
    # (the second one has just started) before anything is timed.
    with off.stored_version(size, archived=True) as off_version, on.stored_version(size, archived=True) as on_version:
        versions = {"off": off_version, "on": on_version}
        for direction in ("upload", "download"):
            runs: dict[str, list[float]] = {"off": [], "on": []}
            usage: dict[str, list[dict[str, ProcessUsage]]] = {"off": [], "on": []}
            for _ in range(plan.runs):
                for name, side in sides.items():
                    if direction == "upload":
                        with side.fresh_model(feature) as model_id, ProcessMonitor(side.pids) as monitor:
                            seconds = sum(side.client.upload(model_id, size, archived=True)[0] for _ in range(repeats))
                    else:
                        model_id, version = versions[name]
                        with ProcessMonitor(side.pids) as monitor:
                            seconds = sum(side.client.download(model_id, version, size) for _ in range(repeats))
                    runs[name].append(repeats * size / MIB / seconds)
                    usage[name].append(monitor.usage)
            label = f"{direction} archived {format_size(size)}"
            key = f"{feature}.{direction}.archived.{format_size(size).replace(' ', '')}"
            usage_details = _usage_details(usage, repeats * size)
            figures += _on_off_figures(feature, key, label, "MiB/s", runs["off"], runs["on"], common, usage_details)
    return figures


def _latencies_ms(side: StackSide, model_id: str, count: int) -> list[float]:
    request = api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[-1])
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        side.client.retrieve_version_infos(request)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def small_call_overhead(feature: str, off: StackSide, on: StackSide, plan: Plan) -> list[Figure]:
    """p50 and p99 of RetrieveVersionInfos (the latest version's info) by one
    client calling back to back, `plan.latency_calls` calls per run, on the
    stack without and with `feature`, runs alternating."""
    sides = {"off": off, "on": on}
    p50s: dict[str, list[float]] = {"off": [], "on": []}
    p99s: dict[str, list[float]] = {"off": [], "on": []}
    with off.fresh_model(feature) as off_model, on.fresh_model(feature) as on_model:
        models = {"off": off_model, "on": on_model}
        for name, side in sides.items():
            side.client.upload(models[name], _SMALL_VERSION_SIZE, archived=False)
            _latencies_ms(side, models[name], 20)  # warm-up
        for _ in range(plan.runs):
            for name, side in sides.items():
                latencies = _latencies_ms(side, models[name], plan.latency_calls)
                p50s[name].append(percentile(latencies, 0.50))
                p99s[name].append(percentile(latencies, 0.99))
    details = {"calls_per_run": plan.latency_calls}
    key, label = f"{feature}.RetrieveVersionInfos", "RetrieveVersionInfos, 1 client"
    return [
        *_on_off_figures(feature, f"{key}.p50", f"{label} p50", "ms", p50s["off"], p50s["on"], details),
        *_on_off_figures(feature, f"{key}.p99", f"{label} p99", "ms", p99s["off"], p99s["on"], details),
    ]
