"""How much of each scenario a benchmark run does."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import MIB

# Archived transfers of the on vs off scenarios (tracing, metrics).
OVERHEAD_SIZE = 64 * MIB


@dataclass(frozen=True)
class Plan:
    """Sizes, repetitions and client counts of one benchmark run."""

    sizes: list[int]  # single transfers, each in both directions and modes
    runs: int  # every figure is the median of this many runs
    concurrent_size: int  # size of each concurrent transfer
    uploaders: int
    downloaders: int
    latency_calls: int  # sequential small calls per run
    throughput_seconds: float  # duration of a requests/s run
    subscribers: int  # VersionUpdate subscribers
    fanout_versions: int  # versions created per fan-out run
    overhead_size: int  # archived transfers of the on vs off scenarios (tracing, metrics)
    followers: int  # VersionUpdate subscriptions held at once (RL scale)
    follower_versions: int  # versions delivered to all of them per run

    @classmethod
    def full(cls, sizes: list[int], runs: int) -> Plan:
        return cls(
            sizes=sorted(sizes),
            runs=runs,
            concurrent_size=64 * MIB,
            uploaders=4,
            downloaders=16,
            latency_calls=2000,
            throughput_seconds=5.0,
            subscribers=100,
            fanout_versions=20,
            overhead_size=OVERHEAD_SIZE,
            followers=10_000,
            follower_versions=3,
        )

    @classmethod
    def smoke(cls) -> Plan:
        """Tiny sizes, one run, fewer subscribers: checks that every scenario
        works, in well under a minute."""
        sizes = [64 * 1024, MIB]
        return cls(
            sizes=sizes,
            runs=1,
            concurrent_size=MIB,
            uploaders=4,
            downloaders=16,
            latency_calls=100,
            throughput_seconds=0.5,
            subscribers=20,
            fanout_versions=3,
            overhead_size=max(size for size in sizes if size <= OVERHEAD_SIZE),
            followers=200,
            follower_versions=2,
        )

    @property
    def largest_transfer(self) -> int:
        return max([*self.sizes, self.concurrent_size, self.overhead_size])
