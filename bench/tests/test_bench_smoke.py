"""`python -m bench --smoke` runs end to end and reports every scenario.

This keeps the benchmark from rotting; it asserts nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE_SIZES = ("64KiB", "1MiB")
OVERHEAD_SIZE = "1MiB"  # the largest smoke size up to 64 MiB
STACK_PROCESSES = ("envoy", "frontend-0", "metadata-0", "blobstore-0")
COMPARED_WITH_IDEAL = [
    *(f"{direction}.{mode}.{size}" for size in SMOKE_SIZES for mode in ("archived", "transient") for direction in ("upload", "download")),
    *(f"concurrent_{direction}.{mode}" for direction in ("upload", "download") for mode in ("archived", "transient")),
]
STACK_ONLY = [
    *(
        f"{call}.{figure}"
        for call in ("floor", "RetrieveVersionInfos", "RetrieveModels")
        for figure in ("p50_1_client", "p99_1_client", "rate_16_clients")
    ),
    # Tracing on vs off: MiB/s of each, on / off in %, and the spans the
    # sink received (> 0: the traced stack really traced).
    *(
        f"{feature}.{direction}.archived.{OVERHEAD_SIZE}.{figure}"
        for feature in ("tracing", "metrics")
        for direction in ("upload", "download")
        for figure in ("off", "on", "on_off_percent")
    ),
    "tracing.spans",
    # Metrics on vs off, small calls too; the samples the services served (> 0).
    *(
        f"metrics.RetrieveVersionInfos.{quantile}.{figure}"
        for quantile in ("p50", "p99")
        for figure in ("off", "on", "on_off_percent")
    ),
    "metrics.samples",
    # What the access check costs per call (in process), and a first Basic call.
    *(f"access.check.{case}" for case in ("open", "bearer", "basic_cached", "basic_first")),
    # Followers at RL scale (200 in the smoke run).
    *(f"followers.{figure}" for figure in ("held", "delivery_p50", "delivery_p99", "small_call_p99")),
]
# Zero is a real outcome here: a subscriber can get the version before the
# uploader gets its reply, and a process may not grow at all.
# Fan-out latencies are 0 when every subscriber had the version before the
# uploader had its reply (the commit notifies before it replies).
MAY_BE_ZERO = ["version_update.fanout_p50", "version_update.fanout_p99", *(f"rss_growth.{process}" for process in STACK_PROCESSES)]


def test_smoke_run_reports_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(output)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"python -m bench --smoke failed:\n{result.stdout}\n{result.stderr}"
    results = json.loads(output.read_text())

    assert {"nproc", "cpu_model", "memory_gib", "python", "grpc"} <= results["machine"].keys()
    figures = {figure["key"]: figure for figure in results["figures"]}
    assert set(figures) == {*COMPARED_WITH_IDEAL, *STACK_ONLY, *MAY_BE_ZERO}
    for key in COMPARED_WITH_IDEAL:
        assert figures[key]["stack"] > 0 and figures[key]["ideal"] > 0 and figures[key]["ratio"] > 0, figures[key]
        # What each process costs per GiB, for the stack's processes and the ideal's.
        details = figures[key]["details"]
        for side in ("stack", "ideal"):
            per_gib = details["cpu_seconds_per_gib"][side]
            assert per_gib.keys() == details["cpu_percent"][side].keys() and min(per_gib.values()) >= 0, details
    for key in STACK_ONLY:
        assert figures[key]["stack"] > 0, figures[key]
    for call in ("RetrieveVersionInfos", "RetrieveModels"):  # measured against the floor of the same run
        rate = figures[f"{call}.rate_16_clients"]
        assert rate["ideal"] == figures["floor.rate_16_clients"]["stack"] and rate["ratio"] > 0, rate
    for key in MAY_BE_ZERO:
        assert figures[key]["stack"] >= 0, figures[key]
    assert all(figure["target_met"] is not None for figure in figures.values() if figure["target"])
    assert figures["tracing.spans"]["target_met"], figures["tracing.spans"]
    assert set(figures["tracing.spans"]["details"]["by_service"]) >= {"envoy", "frontend", "metadata", "blobstore"}
    assert figures["metrics.samples"]["target_met"], figures["metrics.samples"]
    assert set(figures["metrics.samples"]["details"]["by_service"]) == {"envoy", "frontend", "metadata", "blobstore"}
    assert figures["metrics.samples"]["details"]["targets_with_metrics_off"] == ["envoy"]
