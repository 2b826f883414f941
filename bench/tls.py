"""What TLS at Envoy costs: a 256 MiB push and pull, and a new connection
(handshake + one call), through a plaintext, a TLS and an mTLS stack (the
same stack code, `make up`'s path), with the SDK. Informational: no target.

    .venv/bin/python -m bench.tls [--size 256MiB] [--connections 50]   # ~1 min

Certificates (ECDSA P-256) come from the integration tests' helper
(tests/integration/certs.py, the `cryptography` package).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.servers import RegistryStack, stack_settings
from model_registry_client import RegistryClient
from model_registry_client.tls import tls_credentials

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from certs import CertificateAuthority, write_pair  # noqa: E402

MIB = 1024 * 1024


def _settings(directory: Path, mode: str) -> tuple[dict[str, str], dict[str, str]]:
    """(stack env, client kwargs) of a mode: off, tls, mtls."""
    if mode == "off":
        return {}, {}
    server_ca = CertificateAuthority.create(f"bench {mode} server CA")
    ca_file = server_ca.write(directory / "ca.pem")
    server = write_pair(directory, "server", server_ca.issue("localhost", server=True))
    env = {"COGMENT_MODEL_REGISTRY_TLS_CERT_FILE": str(server.cert_file), "COGMENT_MODEL_REGISTRY_TLS_KEY_FILE": str(server.key_file)}
    client = {"ca_cert": str(ca_file)}
    if mode == "mtls":
        client_ca = CertificateAuthority.create("bench client CA")
        env["COGMENT_MODEL_REGISTRY_TLS_CLIENT_CA_FILE"] = str(client_ca.write(directory / "client-ca.pem"))
        pair = write_pair(directory, "client", client_ca.issue("bench", server=False))
        client.update(cert=str(pair.cert_file), key=str(pair.key_file))
    return env, client


def _connection_ms(address: str, client: dict[str, str], connections: int) -> float:
    credentials = tls_credentials(**client, env={}) if client else None
    times = []
    for _ in range(connections):
        started = time.perf_counter()
        channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        with channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(mode: str, size: int, connections: int, work: Path) -> dict[str, float]:
    directory = work / mode
    directory.mkdir()
    env, client = _settings(directory, mode)
    data = os.urandom(size)
    with RegistryStack(directory, {**stack_settings(size), **env}) as stack:
        address = f"localhost:{stack.port}"
        with RegistryClient(address, **client) as registry:
            registry.create_model("bench-tls")
            registry.push("bench-tls", data[: 4 * MIB])  # warm the channel and the services
            started = time.perf_counter()
            info = registry.push("bench-tls", data, archived=False)
            push_seconds = time.perf_counter() - started
            started = time.perf_counter()
            assert registry.pull("bench-tls", info.version_number) == data
            pull_seconds = time.perf_counter() - started
        connection_ms = _connection_ms(address, client, connections)
    return {
        "push MiB/s": size / MIB / push_seconds,
        "pull MiB/s": size / MIB / pull_seconds,
        "new connection + call, ms (median)": connection_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls")
    parser.add_argument("--size", type=int, default=256 * MIB, help="bytes per transfer")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as work:
        results = {mode: measure(mode, args.size, args.connections, Path(work)) for mode in ("off", "tls", "mtls")}
    names = list(results["off"])
    print(f"{'':<38}" + "".join(f"{mode:>12}" for mode in results))
    for name in names:
        print(f"{name:<38}" + "".join(f"{results[mode][name]:>12.1f}" for mode in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
