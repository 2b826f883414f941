"""Free loopback ports, for the local launcher, the tests and the benchmark
(not for the services: they bind the port they are given).

A port is picked here and bound later by another process, so in between
nothing else may take it. Ports the kernel hands out itself (to `bind(0)`
and as the local port of every outgoing connection) come from its ephemeral
range, and a busy test run opens thousands of loopback connections: a port
picked from that range was seen taken by one before the service bound it.
So ports are picked outside it, at random, and checked free."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"

# Below this, ports that well-known services listen on by default.
_LOWEST = 10_000
_HIGHEST = 65_535
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Linux's default ephemeral range, where the kernel does not say.
_DEFAULT_EPHEMERAL = (32_768, 60_999)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for bind(0) and outgoing connections."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL


def _candidates() -> list[int]:
    low, high = ephemeral_range()
    outside = [p for p in range(_LOWEST, _HIGHEST + 1) if not low <= p <= high]
    random.shuffle(outside)
    return outside


def free_ports(count: int) -> list[int]:
    """`count` different ports free now, outside the ephemeral range (inside
    it only when nothing outside is free)."""
    sockets: list[socket.socket] = []
    try:
        for port in _candidates():
            if len(sockets) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        while len(sockets) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    (port,) = free_ports(1)
    return port
