"""`python -m bench` (what `make bench` runs): the registry against the ideal.

Starts the ideal registry and the stack (through `make up`'s code path, on
free ports, in a temporary directory), runs every scenario, then metrics on
vs off against a second stack without metrics, and tracing on vs off
against a third, traced one; prints a table and writes every figure to a
JSON file. The stacks are stopped at the end, even on failure.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import grpc

from bench.access import access_check_figures
from bench.calls import small_calls_only, stack_calls
from bench.client import UPLOAD_CHUNK_SIZE, BenchmarkError
from bench.ideal import SENT_CHUNK_SIZE
from bench.plan import Plan
from bench.report import Figure, format_size, machine_description, render_cpu, render_table, write_results
from bench.servers import IdealServer, RegistryStack, ServerError, stack_settings
from bench.shapes import DEFAULT_POSTGRES_URL, SHAPES
from bench.metrics import samples_figure
from bench.overhead import small_call_overhead, transfer_overhead
from bench.tracing import TraceSink, spans_figure
from bench.transfers import (
    IdealSide,
    StackSide,
    concurrent_downloads,
    concurrent_uploads,
    rss_growth_figures,
    single_transfers,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
# Runs of `--small-calls` at least: its figures are ratios to a floor on a
# shared machine, and more runs make their medians steadier.
SMALL_CALL_RUNS = 5
_UNITS = {"": 1, "B": 1, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(text: str) -> int:
    """'64MiB' -> 67108864 (B, KiB, MiB, GiB; case-insensitive)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 64KiB, 1MiB or 1GiB")
    size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return size


def parse_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the model registry against an ideal one.")
    parser.add_argument("--sizes", type=parse_sizes, default="1MiB,64MiB,1GiB", help="transfer sizes (default %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; medians are reported (default %(default)s)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one run, 20 subscribers: checks the bench works (< 60 s)"
    )
    parser.add_argument(
        "--small-calls",
        action="store_true",
        help="only the small calls (RetrieveVersionInfos, RetrieveModels) and their floor, measured in the same run",
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="default",
        help="the stack's shape: one process each on SQLite (default), or replicated: 2 frontends, "
        "3 blobstores, 2 metadata on PostgreSQL (REGISTRY_BENCH_POSTGRES_URL, default %s)" % DEFAULT_POSTGRES_URL,
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results (default bench/results.json)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _print_progress(figures: list[Figure]) -> None:
    for figure in figures:
        ratio = f" ({figure.ratio:.0%} of ideal)" if figure.ratio is not None else ""
        print(f"  {figure.label}: {figure.stack:.2f} {figure.unit}{ratio}", flush=True)


def run_scenarios(plan: Plan, stack: RegistryStack, ideal: IdealServer) -> list[Figure]:
    """Every scenario, in an order that keeps memory low: small calls and
    fan-out first, then transfers from the smallest size up."""
    stack_pids = stack.process_pids()
    print("small calls and VersionUpdate fan-out…", flush=True)
    figures = asyncio.run(stack_calls(stack.address, stack_pids, plan))
    _print_progress(figures)
    sides = [StackSide(stack.address, stack_pids), IdealSide(ideal.address, {"ideal": ideal.pid})]
    try:
        transfers: list[Figure] = []
        for size in plan.sizes:
            for archived in (True, False):
                print(f"transfers of {format_size(size)}, {'archived' if archived else 'transient'}…", flush=True)
                new = single_transfers(sides, size, archived=archived, plan=plan)
                _print_progress(new)
                transfers += new
        print(f"concurrent transfers of {format_size(plan.concurrent_size)}…", flush=True)
        concurrent = []
        for archived in (True, False):
            concurrent += [
                concurrent_uploads(sides, archived=archived, plan=plan),
                concurrent_downloads(sides, archived=archived, plan=plan),
            ]
            _print_progress(concurrent[-2:])
    finally:
        for side in sides:
            side.close()
    return figures + transfers + concurrent + rss_growth_figures(transfers, sorted(stack_pids))


def run_tracing_scenario(plan: Plan, stack: RegistryStack, work_dir: Path, settings: dict[str, str]) -> list[Figure]:
    """Tracing on vs off: a second stack, tracing to an in-process OTLP sink,
    against `stack` (tracing off), runs alternating between the two."""
    size = format_size(plan.overhead_size)
    print(f"tracing on vs off, archived {size} (second stack, spans to a local sink)…", flush=True)
    with TraceSink() as sink:
        with RegistryStack(work_dir / "traced", settings, tracing_endpoint=sink.endpoint) as traced:
            off = StackSide(stack.address, stack.process_pids())
            on = StackSide(traced.address, traced.process_pids())
            try:
                figures = transfer_overhead("tracing", off, on, plan.overhead_size, plan)
            finally:
                off.close()
                on.close()
            # Envoy and every kind of service (frontend-0 -> frontend) must trace.
            sink.wait_for_spans({name.rsplit("-", 1)[0] for name in traced.process_pids()})
        # Stopping the traced stack flushed its services' last spans.
        figures.append(spans_figure(sink))
    _print_progress(figures)
    return figures


def run_metrics_scenario(plan: Plan, stack: RegistryStack, work_dir: Path, settings: dict[str, str]) -> list[Figure]:
    """Metrics on vs off: `stack` (metrics on, as `make up` runs it) against a
    second stack with metrics off, runs alternating between the two."""
    size = format_size(plan.overhead_size)
    print(f"metrics on vs off, archived {size} and small calls (second stack, metrics off)…", flush=True)
    with RegistryStack(work_dir / "unmeasured", settings, metrics=False) as unmeasured:
        off = StackSide(unmeasured.address, unmeasured.process_pids())
        on = StackSide(stack.address, stack.process_pids())
        try:
            figures = transfer_overhead("metrics", off, on, plan.overhead_size, plan)
            figures += small_call_overhead("metrics", off, on, plan)
        finally:
            off.close()
            on.close()
        figures.append(samples_figure(stack.run_dir, unmeasured.run_dir))
    _print_progress(figures)
    return figures


def _cpu_worth_showing(figure: Figure, largest_single_size: int) -> bool:
    """CPU use is printed for the req/s runs, the concurrent transfers, the
    largest single transfers and tracing and metrics on vs off (all of it is in the JSON)."""
    if "cpu_percent" not in figure.details:
        return False
    size = figure.details.get("size_bytes")
    return (
        size is None
        or size == largest_single_size
        or figure.key.startswith(("concurrent_", "tracing.", "metrics."))
    )


def run_small_calls(plan: Plan, stack: RegistryStack) -> list[Figure]:
    """The small calls and their floor alone (`--small-calls`)."""
    print("small calls and their floor…", flush=True)
    figures = asyncio.run(small_calls_only(stack.address, stack.process_pids(), plan))
    _print_progress(figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    plan = Plan.smoke() if args.smoke else Plan.full(args.sizes, args.runs)
    if args.small_calls and not args.smoke:
        plan = dataclasses.replace(plan, runs=max(plan.runs, SMALL_CALL_RUNS))
    shape = SHAPES[args.shape]()
    settings = {**stack_settings(plan.largest_transfer), **shape.settings}
    # SIGTERM unwinds like Ctrl-C, so the stack is stopped either way.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work_dir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    succeeded = False
    try:
        print(f"starting the ideal registry and the stack (logs in {work_dir})…", flush=True)
        if args.small_calls:
            with RegistryStack(work_dir, settings) as stack:
                figures = run_small_calls(plan, stack)
        else:
            with IdealServer(work_dir / "ideal.log") as ideal, RegistryStack(work_dir, settings) as stack:
                figures = run_scenarios(plan, stack, ideal)
                access = access_check_figures(plan.runs)
                _print_progress(access)
                figures += access
                figures += run_metrics_scenario(plan, stack, work_dir, settings)
                figures += run_tracing_scenario(plan, stack, work_dir, settings)
        succeeded = True
    except (ServerError, BenchmarkError, grpc.RpcError) as exc:
        print(f"error: {exc}\n(logs kept in {work_dir})", file=sys.stderr)
        return 1
    finally:
        shape.close()
        shutil.rmtree(work_dir / "archive", ignore_errors=True)
        shutil.rmtree(work_dir / "traced" / "archive", ignore_errors=True)
        shutil.rmtree(work_dir / "unmeasured" / "archive", ignore_errors=True)
        if succeeded:
            shutil.rmtree(work_dir, ignore_errors=True)

    print()
    print(render_table(figures))
    print("\nCPU of each process (median over runs): % of one core, and CPU-seconds per GiB moved:")
    print(render_cpu([figure for figure in figures if _cpu_worth_showing(figure, max(plan.sizes))]))
    config = {
        "smoke": args.smoke,
        "small_calls_only": args.small_calls,
        "shape": args.shape,
        "plan": dataclasses.asdict(plan),
        "upload_chunk_bytes": UPLOAD_CHUNK_SIZE,
        "download_chunk_bytes": SENT_CHUNK_SIZE,
        "stack_settings": settings,
    }
    write_results(args.output, machine_description(), config, figures)
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
