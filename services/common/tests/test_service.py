"""The service shell (services.common.service): each server drains its own
calls only, and every service refuses a bad setting the same way."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from services.common.config import METADATA_READS_PORT, PREFIX, SERVICE_PORTS
from services.common.grpc_server import bind, create_aio_server
from services.common.service import ServiceApp
from services.launcher.ports import LOOPBACK

REPO_ROOT = Path(__file__).resolve().parents[3]
HOLD = "/test.Holder/Hold"


async def started_app(release: asyncio.Event) -> ServiceApp:
    """A server with one method, which returns once `release` is set."""

    async def hold(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await release.wait()
        return request

    grpc_server = create_aio_server(4 * 1024 * 1024)
    grpc_server.server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Holder", {"Hold": grpc.unary_unary_rpc_method_handler(hold)})]
    )
    port = bind(grpc_server.server, LOOPBACK, 0)
    await grpc_server.server.start()
    return ServiceApp(grpc_server, port)


async def test_a_server_drains_its_own_calls_not_another_servers():
    release = asyncio.Event()
    busy, idle = await started_app(release), await started_app(release)
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{busy.port}") as channel:
            call = channel.unary_unary(HOLD)(b"")
            while busy.in_flight.count == 0:
                await asyncio.sleep(0.01)
            assert idle.in_flight.count == 0
            started = time.monotonic()
            await idle.shut_down(grace_seconds=5)
            assert time.monotonic() - started < 2, "the idle server waited for the other server's call"

            # The busy one does drain its call: it ends within the grace period.
            asyncio.get_running_loop().call_later(0.3, release.set)
            started = time.monotonic()
            await busy.shut_down(grace_seconds=5)
            assert 0.3 <= time.monotonic() - started < 2
            assert await call == b""
    finally:
        release.set()
        await asyncio.gather(busy.server.stop(0), idle.server.stop(0))


@pytest.mark.parametrize("kind", sorted(SERVICE_PORTS))
def test_a_bad_variable_stops_the_start_with_one_line_naming_it(kind, tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith((PREFIX, "OTEL_"))}
    env.update(
        {
            PREFIX + "ARCHIVE_DIR": str(tmp_path),
            PREFIX + "BIND_HOST": LOOPBACK,
            SERVICE_PORTS[kind][0]: "0", METADATA_READS_PORT[0]: "0",
            PREFIX + "SHUTDOWN_GRACE_SECONDS": "abc",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", f"services.{kind}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{kind}: {PREFIX}SHUTDOWN_GRACE_SECONDS='abc' is not a number"]
    assert not any(tmp_path.iterdir()), "nothing started"


def _start_service(kind: str, tmp_path: Path, **settings: str) -> list[str]:
    """Starts `kind` on a free port, returns its log lines up to "listening", stops it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith((PREFIX, "OTEL_"))}
    env.update({PREFIX + "ARCHIVE_DIR": str(tmp_path), PREFIX + "BIND_HOST": LOOPBACK, SERVICE_PORTS[kind][0]: "0", METADATA_READS_PORT[0]: "0"})
    env.update(settings)
    process = subprocess.Popen(
        [sys.executable, "-m", f"services.{kind}"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if " listening on " in line:
                break
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert any(" listening on " in line for line in lines), "".join(lines)
    return lines


@pytest.mark.parametrize("kind", sorted(SERVICE_PORTS))
def test_every_service_warns_at_start_of_a_reply_chunk_default_clients_refuse(kind, tmp_path):
    variable = PREFIX + "SENT_MODEL_VERSION_DATA_CHUNK_SIZE"
    warned = [line for line in _start_service(kind, tmp_path, **{variable: str(5 * 1024 * 1024)}) if " WARNING " in line]
    assert any(variable in line and "Cogment SDK" in line for line in warned), warned
    assert not any(variable in line for line in _start_service(kind, tmp_path / "default"))
