"""What the access check costs per call, in process (no network): the
`authorize` the request interceptor awaits before decoding each call, with
the metadata Envoy forwards, for no credentials file (OpenAccess), a bearer
token, and HTTP Basic once its scrypt verification is cached. The first
Basic call of a credential (scrypt) is shown too. Informational: no target.

    .venv/bin/python -m bench.access          # prints the figures alone (~5 s)
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path

import model_registry_credentials as cf

from bench.report import Figure
from services.common.access import AccessPolicy, AccessSettings, OpenAccess

CALLS_PER_RUN = 20_000
METHOD = "/cogmentAPI.ModelRegistrySP/RetrieveVersionInfos"
# What a call through Envoy carries besides the credential.
_ENVOY_METADATA = (
    ("user-agent", "grpc-python/1.85.3 grpc-c/45.0.0 (linux; chttp2)"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
    ("x-envoy-expected-rq-timeout-ms", "60000"),
)


class _Context:
    """The part of a grpc.aio.ServicerContext the check reads."""

    def __init__(self, authorization: str | None) -> None:
        extra = (("authorization", authorization),) if authorization else ()
        self._metadata = _ENVOY_METADATA + extra

    def invocation_metadata(self):  # type: ignore[no-untyped-def]
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


async def _per_call_us(access, context: _Context, calls: int) -> float:  # type: ignore[no-untyped-def]
    await access.authorize(METHOD, context)  # warm (a Basic credential's one scrypt)
    started = time.perf_counter()
    for _ in range(calls):
        await access.authorize(METHOD, context)
    return (time.perf_counter() - started) / calls * 1e6


async def _first_basic_ms(path: Path, context: _Context) -> float:
    policy = AccessPolicy(AccessSettings(auth_file=str(path)))
    started = time.perf_counter()
    await policy.authorize(METHOD, context)
    return (time.perf_counter() - started) * 1000


def access_check_figures(runs: int, calls: int = CALLS_PER_RUN) -> list[Figure]:
    """Per-call cost of the check (µs; median of `runs` runs of `calls` calls)."""
    token, password = cf.new_token(), "bench password"
    with tempfile.TemporaryDirectory(prefix="bench-access-") as directory:
        path = Path(directory) / "credentials.json"
        cf.save(
            path,
            [
                cf.Entry("bench-token", "token", "read", cf.token_digest(token)),
                cf.Entry("bench-user", "user", "read", cf.hash_password(password)),
            ],
        )
        policy = AccessPolicy(AccessSettings(auth_file=str(path)))
        basic = _Context("Basic " + base64.b64encode(f"bench-user:{password}".encode()).decode())
        cases = {
            "open": (OpenAccess(), _Context(None), "no credentials file"),
            "bearer": (policy, _Context(f"Bearer {token}"), "bearer token"),
            "basic_cached": (policy, basic, "HTTP Basic, verification cached"),
        }
        results: dict[str, list[float]] = {key: [] for key in cases}
        first_basic: list[float] = []
        for _ in range(runs):
            for key, (access, context, _label) in cases.items():
                results[key].append(asyncio.run(_per_call_us(access, context, calls)))
            first_basic.append(asyncio.run(_first_basic_ms(path, basic)))
    details = {"calls_per_run": calls, "method": METHOD}
    figures = [
        Figure(key=f"access.check.{key}", label=f"access check per call, {label}", unit="µs", stack_runs=results[key], details=details)
        for key, (_access, _context, label) in cases.items()
    ]
    figures.append(
        Figure(
            key="access.check.basic_first",
            label="access check, first HTTP Basic call (scrypt n=2^14 r=8)",
            unit="ms",
            stack_runs=first_basic,
            details={"scrypt": {"n": cf.SCRYPT_N, "r": cf.SCRYPT_R, "p": cf.SCRYPT_P}},
        )
    )
    return figures


def main() -> None:
    for figure in access_check_figures(runs=3):
        runs = ", ".join(f"{value:.2f}" for value in figure.stack_runs)
        print(f"{figure.label}: {statistics.median(figure.stack_runs):.2f} {figure.unit} (runs: {runs})")


if __name__ == "__main__":
    main()
