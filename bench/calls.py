"""Scenarios of the stack alone, with grpc.aio clients on one event loop:
small calls (latency and requests/s) and VersionUpdate fan-out."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from cogmentAPI import model_registry_pb2 as api
from grpc_health.v1 import health_pb2

from bench.client import AsyncClient, BenchmarkError
from bench.monitor import ProcessMonitor
from bench.plan import Plan
from bench.report import Figure, Target, percentile

SMALL_CALL_MODELS = 10
SMALL_CALL_VERSIONS = 10
SMALL_VERSION_SIZE = 1024
CONCURRENT_CALLERS = 16
WARMUP_CALLS = 20
SUBSCRIBE_TIMEOUT_SECONDS = 60.0
FANOUT_TIMEOUT_SECONDS = 10.0

SmallCall = Callable[[AsyncClient], Awaitable[Any]]


class StackCalls:
    """The stack's address and processes, and an admin connection."""

    def __init__(self, address: str, pids: dict[str, int]) -> None:
        self.address = address
        self.pids = {**pids, "client": os.getpid()}
        self.admin = AsyncClient(address)

    @asynccontextmanager
    async def fresh_model(self, purpose: str) -> AsyncIterator[str]:
        """A new model, deleted with its versions at the end of the block."""
        model_id = f"bench-{purpose}-{uuid.uuid4().hex[:8]}"
        await self.admin.create_model(model_id)
        try:
            yield model_id
        finally:
            await self.admin.delete_model(model_id)

    async def connected_clients(self, count: int) -> list[AsyncClient]:
        """`count` connections, each established before it is timed."""
        return list(await asyncio.gather(*(AsyncClient(self.address).connect() for _ in range(count))))


async def _close_all(clients: list[AsyncClient]) -> None:
    await asyncio.gather(*(client.close() for client in clients))


async def _latencies_ms(client: AsyncClient, call: SmallCall, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call(client)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _requests_per_second(clients: list[AsyncClient], call: SmallCall, seconds: float) -> float:
    """Every client calls back to back for `seconds`; returns completed calls per second."""
    completed = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def keep_calling(client: AsyncClient) -> None:
        nonlocal completed
        while time.perf_counter() < deadline:
            await call(client)
            completed += 1

    await asyncio.gather(*(keep_calling(client) for client in clients))
    return completed / (time.perf_counter() - started)


# The floor of the stack's shape: a call that does no work, answered by a
# frontend through Envoy (the public health Check). A small call cannot be
# cheaper than one public hop plus one Python service hop; its ratio to the
# floor, measured in the same run, is what the targets are about (absolute
# figures swing with whatever else the machine runs).
FLOOR = "floor"
FLOOR_LABEL = "floor (health Check through Envoy)"
# Issue 14: the small reads at >= 90 % of the floor with 16 clients, p50 at most 1.2 ms with one.
FLOOR_RATIO_TARGET = 0.90
P50_TARGET_MS = 1.2
# Each requests/s run of the small calls is this many slices per call, in turn.
THROUGHPUT_SLICES = 5


def _small_call_kinds(model_id: str) -> dict[str, SmallCall]:
    """The calls `small_calls` measures, by name, the floor first."""
    latest_info = api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[-1])
    all_models = api.RetrieveModelsRequest()
    public_health = health_pb2.HealthCheckRequest(service="")
    return {
        FLOOR: lambda client: client.health.Check(public_health),
        "RetrieveVersionInfos": lambda client: client.stub.RetrieveVersionInfos(latest_info),
        "RetrieveModels": lambda client: client.stub.RetrieveModels(all_models),
    }


async def small_calls(stack: StackCalls, plan: Plan) -> list[Figure]:
    """RetrieveVersionInfos (the latest version's info, as actors ask for it)
    and RetrieveModels (all models: 10), with the floor (the public health
    Check, answered by a frontend through Envoy) measured in the same run:
    p50/p99 latency of one client calling back to back, and requests/s of
    16 clients on their own connections. Each run measures every call in
    turn (floor, then each call), so the calls and their floor meet the
    same machine (the 16-client runs in slices taken in turn); the
    16-client rows print their ratio to the floor."""
    async with AsyncExitStack() as resources:
        model_ids = [await resources.enter_async_context(stack.fresh_model("small")) for _ in range(SMALL_CALL_MODELS)]
        for _ in range(SMALL_CALL_VERSIONS):
            await stack.admin.upload(model_ids[0], SMALL_VERSION_SIZE, archived=False)
        calls = _small_call_kinds(model_ids[0])
        single = await AsyncClient(stack.address).connect()
        resources.push_async_callback(single.close)
        many = await stack.connected_clients(CONCURRENT_CALLERS)
        resources.push_async_callback(_close_all, many)
        p50s: dict[str, list[float]] = defaultdict(list)
        p99s: dict[str, list[float]] = defaultdict(list)
        rates: dict[str, list[float]] = defaultdict(list)
        cpu_by_run: dict[str, list[dict[str, float]]] = defaultdict(list)
        for call in calls.values():
            await _latencies_ms(single, call, WARMUP_CALLS)
            await _requests_per_second(many, call, 0.2)
        for _ in range(plan.runs):
            for name, call in calls.items():
                latencies = await _latencies_ms(single, call, plan.latency_calls)
                p50s[name].append(percentile(latencies, 0.50))
                p99s[name].append(percentile(latencies, 0.99))
            # Slices taken in turn (floor, each call, floor, ...): the
            # machine's other load changes over seconds, and every call
            # meets the same mix of it.
            slice_rates: dict[str, list[float]] = defaultdict(list)
            for _ in range(THROUGHPUT_SLICES):
                for name, call in calls.items():
                    with ProcessMonitor(stack.pids) as monitor:
                        slice_rates[name].append(
                            await _requests_per_second(many, call, plan.throughput_seconds / THROUGHPUT_SLICES)
                        )
                    cpu_by_run[name].append({process: usage.cpu_percent for process, usage in monitor.usage.items()})
            for name in calls:
                rates[name].append(statistics.fmean(slice_rates[name]))
    figures = []
    latency_details = {"calls_per_run": plan.latency_calls}
    for name in calls:
        label = FLOOR_LABEL if name == FLOOR else name
        is_read = name != FLOOR
        median_cpu = {
            process: round(statistics.median(run[process] for run in cpu_by_run[name]), 1) for process in stack.pids
        }
        figures += [
            Figure(
                f"{name}.p50_1_client",
                f"{label} p50, 1 client",
                "ms",
                p50s[name],
                target=Target("below_or_at", P50_TARGET_MS) if is_read else None,
                details=latency_details,
            ),
            Figure(f"{name}.p99_1_client", f"{label} p99, 1 client", "ms", p99s[name], details=latency_details),
            Figure(
                f"{name}.rate_{CONCURRENT_CALLERS}_clients",
                f"{label}, {CONCURRENT_CALLERS} clients",
                "req/s",
                rates[name],
                # The ratio column: this call's rate over the floor's, run by run medians.
                ideal_runs=rates[FLOOR] if is_read else None,
                target=Target("ratio_at_least", FLOOR_RATIO_TARGET, reference="floor") if is_read else None,
                details={"seconds_per_run": plan.throughput_seconds, "cpu_percent": {"stack": median_cpu}},
            ),
        ]
    return figures


class _Arrivals:
    """When each subscriber received each version number."""

    def __init__(self, subscribers: int) -> None:
        self._subscribers = subscribers
        self.times: dict[int, list[float]] = defaultdict(list)
        self._complete: dict[int, asyncio.Event] = defaultdict(asyncio.Event)

    def record(self, version_number: int) -> None:
        arrivals = self.times[version_number]
        arrivals.append(time.perf_counter())
        if len(arrivals) == self._subscribers:
            self._complete[version_number].set()

    async def wait_all(self, version_number: int, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._complete[version_number].wait(), timeout)
        except TimeoutError:
            got = len(self.times[version_number])
            raise BenchmarkError(
                f"VersionUpdate: {got} of {self._subscribers} subscribers received version {version_number} "
                f"within {timeout:.0f}s"
            ) from None


async def _follow(client: AsyncClient, model_id: str, arrivals: _Arrivals) -> None:
    async for reply in client.stub.VersionUpdate(api.VersionUpdateRequest(model_id=model_id)):
        arrivals.record(reply.version_info.version_number)


async def _fanout_latencies_ms(stack: StackCalls, subscribers: list[AsyncClient], versions: int) -> list[float]:
    """Subscribes every client to a fresh model, then creates `versions`
    versions one at a time; returns, for each version and subscriber, the ms
    from the CreateVersion reply to the subscriber receiving the version
    (0 when the subscriber had it first)."""
    latencies: list[float] = []
    async with stack.fresh_model("fanout") as model_id:
        first = await stack.admin.upload(model_id, SMALL_VERSION_SIZE, archived=False)
        arrivals = _Arrivals(len(subscribers))
        tasks = [asyncio.create_task(_follow(client, model_id, arrivals)) for client in subscribers]
        try:
            # A subscription is live once it has sent the latest version.
            await arrivals.wait_all(first.version_number, SUBSCRIBE_TIMEOUT_SECONDS)
            for _ in range(versions):
                info = await stack.admin.upload(model_id, SMALL_VERSION_SIZE, archived=False)
                replied = time.perf_counter()
                await arrivals.wait_all(info.version_number, FANOUT_TIMEOUT_SECONDS)
                latencies += [max(0.0, arrived - replied) * 1000 for arrived in arrivals.times[info.version_number]]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


async def version_update_fanout(stack: StackCalls, plan: Plan) -> list[Figure]:
    """`plan.subscribers` VersionUpdate subscribers (one connection each) on
    one model: p50/p99 of the delay from the CreateVersion reply to each
    subscriber receiving the new version."""
    subscribers = await stack.connected_clients(plan.subscribers)
    try:
        p50s, p99s = [], []
        for _ in range(plan.runs):
            latencies = await _fanout_latencies_ms(stack, subscribers, plan.fanout_versions)
            p50s.append(percentile(latencies, 0.50))
            p99s.append(percentile(latencies, 0.99))
    finally:
        await _close_all(subscribers)
    label = f"VersionUpdate to {plan.subscribers} subscribers"
    details = {"subscribers": plan.subscribers, "versions_per_run": plan.fanout_versions}
    return [
        Figure("version_update.fanout_p50", f"{label} p50", "ms", p50s, details=details),
        Figure("version_update.fanout_p99", f"{label} p99", "ms", p99s, target=Target("below", 50.0), details=details),
    ]


# Followers at RL scale: how many connections carry them (a training job's
# actors share a few channels), how many subscribe at a time (actors start
# over seconds, not in one instant), small calls timed while they are held.
FOLLOWER_CHANNELS = 8
FOLLOWER_RAMP = 1000
HELD_SMALL_CALLS = 300
FOLLOWERS_TIMEOUT_SECONDS = 300.0


async def followers_at_scale(stack: StackCalls, plan: Plan) -> list[Figure]:
    """`plan.followers` VersionUpdate subscriptions on one model, held at
    once over a few connections: how many are held, the p50/p99 delay from
    the start of a CreateVersion call to each follower receiving that
    version, and the p99 of a small call (the latest version's info) while
    they are held."""
    clients = await stack.connected_clients(FOLLOWER_CHANNELS)
    held, deliveries, small = [], [], []
    try:
        for _ in range(plan.runs):
            async with stack.fresh_model("followers") as model_id:
                first = await stack.admin.upload(model_id, SMALL_VERSION_SIZE, archived=False)
                arrivals = _Arrivals(plan.followers)
                tasks: list[asyncio.Task] = []
                try:
                    for start in range(0, plan.followers, FOLLOWER_RAMP):
                        batch = range(start, min(start + FOLLOWER_RAMP, plan.followers))
                        tasks += [
                            asyncio.create_task(_follow(clients[i % len(clients)], model_id, arrivals)) for i in batch
                        ]
                        deadline = time.perf_counter() + FOLLOWERS_TIMEOUT_SECONDS
                        while len(arrivals.times[first.version_number]) < batch.stop:
                            if time.perf_counter() > deadline or any(task.done() for task in tasks):
                                raise BenchmarkError(
                                    f"VersionUpdate: only {len(arrivals.times[first.version_number])} of "
                                    f"{batch.stop} followers subscribed"
                                )
                            await asyncio.sleep(0.05)
                    held.append(float(len(arrivals.times[first.version_number])))
                    latest = api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[-1])
                    latencies = await _latencies_ms(
                        stack.admin, lambda client: client.stub.RetrieveVersionInfos(latest), HELD_SMALL_CALLS
                    )
                    small.append(percentile(latencies, 0.99))
                    run_deliveries: list[float] = []
                    for _ in range(plan.follower_versions):
                        called = time.perf_counter()
                        info = await stack.admin.upload(model_id, SMALL_VERSION_SIZE, archived=False)
                        await arrivals.wait_all(info.version_number, FOLLOWERS_TIMEOUT_SECONDS)
                        run_deliveries += [(t - called) * 1000 for t in arrivals.times[info.version_number]]
                    deliveries.append(run_deliveries)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await _close_all(clients)
    label = f"{plan.followers} followers"
    details = {"followers": plan.followers, "channels": FOLLOWER_CHANNELS, "versions_per_run": plan.follower_versions}
    return [
        Figure("followers.held", f"{label}: held", "subscriptions", held, target=Target("at_least", plan.followers), details=details),
        Figure("followers.delivery_p50", f"{label}: delivery p50", "ms", [percentile(d, 0.50) for d in deliveries], details=details),
        Figure(
            "followers.delivery_p99",
            f"{label}: delivery p99",
            "ms",
            [percentile(d, 0.99) for d in deliveries],
            target=Target("below", 2000.0),
            details=details,
        ),
        Figure(
            "followers.small_call_p99",
            f"{label}: RetrieveVersionInfos p99 while held",
            "ms",
            small,
            target=Target("below", 50.0),
            details={**details, "calls_per_run": HELD_SMALL_CALLS},
        ),
    ]


async def stack_calls(address: str, pids: dict[str, int], plan: Plan) -> list[Figure]:
    """Small calls, then VersionUpdate fan-out, then followers at RL scale."""
    stack = StackCalls(address, pids)
    try:
        await stack.admin.connect()
        return (
            await small_calls(stack, plan)
            + await version_update_fanout(stack, plan)
            + await followers_at_scale(stack, plan)
        )
    finally:
        await stack.admin.close()


async def small_calls_only(address: str, pids: dict[str, int], plan: Plan) -> list[Figure]:
    """The small calls and their floor, nothing else (`--small-calls`)."""
    stack = StackCalls(address, pids)
    try:
        await stack.admin.connect()
        return await small_calls(stack, plan)
    finally:
        await stack.admin.close()
