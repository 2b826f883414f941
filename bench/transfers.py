"""Transfer scenarios: uploads and downloads against both sides.

Each scenario runs on the stack (through Envoy's public port) and on the
ideal registry, with the same client; the ratio of the two is the figure
that matters. Every run is watched by a `ProcessMonitor` (RSS and CPU of
each server process and of the client).
"""

from __future__ import annotations

import functools
import os
import statistics
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from bench.client import TransferClient
from bench.ideal import ideal_model_id
from bench.monitor import ProcessMonitor, ProcessUsage
from bench.plan import Plan
from bench.report import Figure, Target, format_size
from services.common.config import GIB, MIB

# Sizes from here up carry the throughput targets.
TARGET_MIN_SIZE = 64 * MIB
# Smaller transfers repeat within a run, to time more than one call's latency.
BYTES_PER_SMALL_RUN = 16 * MIB
MAX_REPEATS = 16
# Ratio to the ideal each (direction, archived) must reach.
RATIO_TARGETS = {("upload", True): 0.6, ("download", True): 0.7, ("upload", False): 0.7, ("download", False): 0.8}


class Side(ABC):
    """One registry under test: where it listens, which processes serve it,
    and how to get a model to upload into or a stored version to read."""

    name: str

    def __init__(self, address: str, pids: dict[str, int]) -> None:
        self.address = address
        self.pids = {**pids, "client": os.getpid()}
        self.client = TransferClient(address)

    def close(self) -> None:
        self.client.close()

    @abstractmethod
    def fresh_model(self, purpose: str) -> AbstractContextManager[str]:
        """A model id to create versions in, for the duration of the block."""

    @abstractmethod
    def stored_version(self, size: int, *, archived: bool) -> AbstractContextManager[tuple[str, int]]:
        """(model id, version number) holding `size` bytes, for the block."""


class StackSide(Side):
    """The real registry: models are created, filled, then deleted (which
    frees their transient memory before the next scenario)."""

    name = "stack"

    @contextmanager
    def fresh_model(self, purpose: str) -> Iterator[str]:
        model_id = f"bench-{purpose}-{uuid.uuid4().hex[:8]}"
        self.client.create_model(model_id)
        try:
            yield model_id
        finally:
            self.client.delete_model(model_id)

    @contextmanager
    def stored_version(self, size: int, *, archived: bool) -> Iterator[tuple[str, int]]:
        """A version read back once (checking its bytes, and warming up the
        path) before it is handed out."""
        with self.fresh_model("download") as model_id:
            _, info = self.client.upload(model_id, size, archived=archived)
            self.client.download(model_id, info.version_number, size, verify=True)
            yield model_id, info.version_number


class IdealSide(Side):
    """The ideal registry: stores nothing, serves `ideal-<bytes>` ids."""

    name = "ideal"

    @contextmanager
    def fresh_model(self, purpose: str) -> Iterator[str]:
        yield f"ideal-{purpose}"

    @contextmanager
    def stored_version(self, size: int, *, archived: bool) -> Iterator[tuple[str, int]]:
        model_id = ideal_model_id(size)
        self.client.download(model_id, 1, size)  # warm-up, as on the stack
        yield model_id, 1


def _mib_per_second(size: int, seconds: float) -> float:
    return size / MIB / seconds


def _usage_details(usages_by_side: dict[str, list[dict[str, ProcessUsage]]], moved_bytes: int) -> dict[str, Any]:
    """Median CPU % and CPU-seconds per GiB moved, and largest RSS growth,
    of each process over the runs (each run moved `moved_bytes`)."""
    cpu: dict[str, dict[str, float]] = {}
    cpu_per_gib: dict[str, dict[str, float]] = {}
    rss: dict[str, dict[str, float]] = {}
    gib = moved_bytes / GIB
    for side, usages in usages_by_side.items():
        names = usages[0].keys()
        cpu[side] = {name: round(statistics.median(u[name].cpu_percent for u in usages), 1) for name in names}
        cpu_per_gib[side] = {
            name: round(statistics.median(u[name].cpu_seconds for u in usages) / gib, 2) for name in names
        }
        rss[side] = {name: round(max(u[name].rss_growth_mib for u in usages), 1) for name in names}
    return {"cpu_percent": cpu, "cpu_seconds_per_gib": cpu_per_gib, "rss_growth_mib": rss}


def _mode(archived: bool) -> str:
    return "archived" if archived else "transient"


class _Runs:
    """Per-side throughput and process usage of each run of a scenario."""

    def __init__(self) -> None:
        self.throughput: dict[str, list[float]] = {}
        self.usage: dict[str, list[dict[str, ProcessUsage]]] = {}

    def add(self, side: Side, mib_per_second: float, monitor: ProcessMonitor) -> None:
        self.throughput.setdefault(side.name, []).append(mib_per_second)
        self.usage.setdefault(side.name, []).append(monitor.usage)


def _upload_runs(side: Side, size: int, repeats: int, archived: bool, plan: Plan, runs: _Runs) -> None:
    for _ in range(plan.runs):
        with side.fresh_model("upload") as model_id:
            with ProcessMonitor(side.pids) as monitor:
                seconds = sum(side.client.upload(model_id, size, archived=archived)[0] for _ in range(repeats))
        runs.add(side, _mib_per_second(repeats * size, seconds), monitor)


def _download_runs(side: Side, size: int, repeats: int, archived: bool, plan: Plan, runs: _Runs) -> None:
    with side.stored_version(size, archived=archived) as (model_id, version):
        for _ in range(plan.runs):
            with ProcessMonitor(side.pids) as monitor:
                seconds = sum(side.client.download(model_id, version, size) for _ in range(repeats))
            runs.add(side, _mib_per_second(repeats * size, seconds), monitor)


def single_transfers(sides: list[Side], size: int, *, archived: bool, plan: Plan) -> list[Figure]:
    """Upload, then download, of `size` bytes by one client in 1 MiB chunks.
    Below 16 MiB a run repeats the transfer (up to 16 times) and counts the
    total bytes over the total time of the calls."""
    repeats = max(1, min(MAX_REPEATS, BYTES_PER_SMALL_RUN // size))
    figures = []
    for direction, run_side in (("upload", _upload_runs), ("download", _download_runs)):
        runs = _Runs()
        for side in sides:
            run_side(side, size, repeats, archived, plan, runs)
        details = {**_usage_details(runs.usage, repeats * size), "size_bytes": size, "transfers_per_run": repeats}
        if direction == "upload" and not archived:
            details["data_held_mib"] = size / MIB  # by the blobstore, by design
        figures.append(
            Figure(
                key=f"{direction}.{_mode(archived)}.{format_size(size).replace(' ', '')}",
                label=f"{direction} {_mode(archived)} {format_size(size)}",
                unit="MiB/s",
                stack_runs=runs.throughput["stack"],
                ideal_runs=runs.throughput["ideal"],
                target=Target("ratio_at_least", RATIO_TARGETS[(direction, archived)]) if size >= TARGET_MIN_SIZE else None,
                details=details,
            )
        )
    return figures


def _in_parallel(transfers: list[Callable[[], object]]) -> float:
    """Runs each transfer in its own thread, all released at once; returns
    the seconds until the last one finished (re-raises the first failure)."""
    start_line = threading.Barrier(len(transfers) + 1)
    failures: list[BaseException] = []

    def run(transfer: Callable[[], object]) -> None:
        start_line.wait()
        try:
            transfer()
        except BaseException as exc:  # re-raised in the calling thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(transfer,)) for transfer in transfers]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    return elapsed


def _concurrent_figure(direction: str, runs: _Runs, count: int, size: int, archived: bool) -> Figure:
    """The total MiB/s of `count` clients moving `size` bytes each at once."""
    return Figure(
        key=f"concurrent_{direction}.{_mode(archived)}",
        label=f"{count} {direction}ers {_mode(archived)} {format_size(size)} (total)",
        unit="MiB/s",
        stack_runs=runs.throughput["stack"],
        ideal_runs=runs.throughput["ideal"],
        details={**_usage_details(runs.usage, count * size), "clients": count, "size_bytes": size},
    )


def concurrent_uploads(sides: list[Side], *, archived: bool, plan: Plan) -> Figure:
    """`plan.uploaders` clients, each on its own connection, each uploading
    one version at the same time; the figure is the total MiB/s."""
    size, count = plan.concurrent_size, plan.uploaders
    runs = _Runs()
    for side in sides:
        clients = [TransferClient(side.address) for _ in range(count)]
        try:
            for _ in range(plan.runs):
                with ExitStack() as models:
                    model_ids = [models.enter_context(side.fresh_model("concurrent")) for _ in clients]
                    with ProcessMonitor(side.pids) as monitor:
                        seconds = _in_parallel(
                            [
                                functools.partial(client.upload, model_id, size, archived=archived)
                                for client, model_id in zip(clients, model_ids)
                            ]
                        )
                runs.add(side, _mib_per_second(count * size, seconds), monitor)
        finally:
            for client in clients:
                client.close()
    return _concurrent_figure("upload", runs, count, size, archived)


def concurrent_downloads(sides: list[Side], *, archived: bool, plan: Plan) -> Figure:
    """`plan.downloaders` clients, each on its own connection, reading the
    same version at the same time; the figure is the total MiB/s."""
    size, count = plan.concurrent_size, plan.downloaders
    runs = _Runs()
    for side in sides:
        clients = [TransferClient(side.address) for _ in range(count)]
        try:
            with side.stored_version(size, archived=archived) as (model_id, version):
                for _ in range(plan.runs):
                    with ProcessMonitor(side.pids) as monitor:
                        seconds = _in_parallel(
                            [functools.partial(client.download, model_id, version, size) for client in clients]
                        )
                    runs.add(side, _mib_per_second(count * size, seconds), monitor)
        finally:
            for client in clients:
                client.close()
    return _concurrent_figure("download", runs, count, size, archived)


def rss_growth_figures(transfers: list[Figure], stack_processes: list[str]) -> list[Figure]:
    """Peak RSS growth above idle of each stack process during the largest
    single transfers (both directions, both modes, every run). During a
    transient upload the blobstore holds the data by design: its growth
    there is counted beyond that."""
    largest = max(figure.details["size_bytes"] for figure in transfers)
    observed = [figure for figure in transfers if figure.details["size_bytes"] == largest]
    figures = []
    for process in stack_processes:
        growths = {}
        for figure in observed:
            growth = figure.details["rss_growth_mib"]["stack"][process]
            if process.startswith("blobstore"):
                growth -= figure.details.get("data_held_mib", 0.0)
            growths[figure.key] = round(growth, 1)
        figures.append(
            Figure(
                key=f"rss_growth.{process}",
                label=f"peak RSS growth {process}, {format_size(largest)} transfers",
                unit="MiB",
                stack_runs=[max(growths.values())],
                target=Target("below", 100.0),
                details={"by_transfer": growths},
            )
        )
    return figures
