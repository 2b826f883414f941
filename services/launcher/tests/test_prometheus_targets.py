"""The scrape targets `make up` writes for Prometheus, and the metrics
ports the launcher hands its processes (without starting anything)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from services.common.metrics import METRICS_PORT_VARIABLE
from services.launcher.prometheus_targets import TARGETS_FILE_NAME, write_scrape_targets
from services.launcher.stack import LaunchSettings, LocalStack


def settings(tmp_path: Path, **changes: object) -> LaunchSettings:
    return dataclasses.replace(
        LaunchSettings(
            public_port=9000,
            archive_dir=tmp_path / "archive",
            run_dir=tmp_path / "run",
            frontend_replicas=2,
            metadata_replicas=1,
            blobstore_replicas=3,
            startup_timeout_seconds=1,
            shutdown_grace_seconds=1,
            public_host="127.0.0.1",
        ),
        **changes,
    )


def test_every_service_process_gets_a_metrics_port_of_its_own(tmp_path: Path):
    _, processes = LocalStack(settings(tmp_path)).plan()
    services = [p for p in processes if p["kind"] != "envoy"]
    ports = [p["metrics_port"] for p in services]
    assert all(int(p["env"][METRICS_PORT_VARIABLE]) == p["metrics_port"] > 0 for p in services)
    assert len(set(ports) | {p["port"] for p in services}) == 2 * len(services), "ports must all differ"


def test_the_targets_file_lists_every_process_by_service_and_envoys_stats_path(tmp_path: Path):
    stack = LocalStack(settings(tmp_path))
    topology, processes = stack.plan()
    path = tmp_path / TARGETS_FILE_NAME
    write_scrape_targets(path, processes, topology)
    groups = json.loads(path.read_text())
    by_service = {group["labels"]["service"]: group for group in groups}
    assert set(by_service) == {"frontend", "metadata", "blobstore", "envoy"}
    for kind in ("frontend", "metadata", "blobstore"):
        expected = sorted(f"127.0.0.1:{p['metrics_port']}" for p in processes if p["kind"] == kind)
        assert sorted(by_service[kind]["targets"]) == expected
        assert by_service[kind]["labels"] == {"service": kind}, "/metrics is Prometheus's default path"
    assert by_service["envoy"] == {
        "targets": [f"127.0.0.1:{topology.admin_port}"],
        "labels": {"service": "envoy", "__metrics_path__": "/stats/prometheus"},
    }
    assert stack.targets_path == tmp_path / "run" / TARGETS_FILE_NAME
    assert not list(tmp_path.glob(".*.tmp")), "written through a temporary file, renamed into place"


def test_metrics_port_zero_turns_the_stacks_metrics_off(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(METRICS_PORT_VARIABLE, "0")
    launch = LaunchSettings.from_env()
    assert not launch.metrics
    topology, processes = LocalStack(settings(tmp_path, metrics=False)).plan()
    assert {p["env"][METRICS_PORT_VARIABLE] for p in processes if p["kind"] != "envoy"} == {"0"}
    path = tmp_path / TARGETS_FILE_NAME
    write_scrape_targets(path, processes, topology)
    assert [group["labels"]["service"] for group in json.loads(path.read_text())] == ["envoy"]
