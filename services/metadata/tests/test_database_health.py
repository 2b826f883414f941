"""Health follows the database: a metadata replica whose PostgreSQL stops
answering turns NOT_SERVING, and SERVING again once it answers.

The database is the real local PostgreSQL, reached through a TCP relay the
test can cut (as a network partition or a database restart would)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry import metadata_pb2_grpc

from services.common.service import ServiceApp
from services.common.service_names import METADATA
from services.launcher.ports import free_port
from services.metadata.config import MetadataConfig
from services.metadata.server import create_server, open_registry
from services.metadata.tests.helpers import test_config

pytestmark = pytest.mark.postgres

POSTGRES_ADDRESS = "127.0.0.1:5432"


class Relay:
    """Forwards TCP connections from a local port to PostgreSQL; `cut`
    closes the port and every connection, `restore` listens again."""

    def __init__(self, port: int, target_host: str, target_port: int) -> None:
        self.port = port
        self._target = (target_host, target_port)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        self._writers -= {client_writer, server_writer}


async def wait_for_status(health: health_pb2_grpc.HealthStub, expected: int, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=METADATA))
        if reply.status == expected:
            return
        assert asyncio.get_running_loop().time() < deadline, f"health stayed {reply.status}, expected {expected}"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def serving(
    config: MetadataConfig,
) -> AsyncIterator[tuple[ServiceApp, grpc.aio.Channel, health_pb2_grpc.HealthStub]]:
    """The metadata server of `config`, started and SERVING, with a channel
    to it; drained and stopped on exit."""
    app = await create_server(config, registry=await open_registry(config))
    await app.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await wait_for_status(health, health_pb2.HealthCheckResponse.SERVING)
            yield app, channel, health
    finally:
        app.on_draining()
        await app.server.stop(0)
        await app.on_stop()


async def test_health_follows_the_database(postgres_url: str, tmp_path):
    host, port = POSTGRES_ADDRESS.split(":")
    relay = Relay(free_port(), host, int(port))
    await relay.restore()
    url = postgres_url.replace(POSTGRES_ADDRESS, f"127.0.0.1:{relay.port}", 1)
    config = test_config(tmp_path, METADATA_URL=url, DATABASE_CHECK_INTERVAL_SECONDS="0.2")
    try:
        async with serving(config) as (_, channel, health):
            await relay.cut()
            await wait_for_status(health, health_pb2.HealthCheckResponse.NOT_SERVING)

            await relay.restore()
            await wait_for_status(health, health_pb2.HealthCheckResponse.SERVING)
            # ... and calls work again, on a new connection.
            model = api.ModelInfo(model_id="after-the-outage")
            stub = metadata_pb2_grpc.MetadataServiceStub(channel)
            await stub.UpsertModel(model)
            reply = await stub.RetrieveModels(api.RetrieveModelsRequest(model_ids=["after-the-outage"]))
            assert [m.model_id for m in reply.model_infos] == ["after-the-outage"]
    finally:
        await relay.cut()


async def test_draining_is_not_undone_by_the_database_checks(tmp_path):
    config = test_config(tmp_path, DATABASE_CHECK_INTERVAL_SECONDS="0.05")
    async with serving(config) as (app, _, health):
        # What run_until_signalled does on SIGTERM.
        for service in ("", METADATA):
            await app.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        app.on_draining()
        await asyncio.sleep(0.3)  # several check intervals
        await wait_for_status(health, health_pb2.HealthCheckResponse.NOT_SERVING, timeout=0)
