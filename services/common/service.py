"""The shell every service process runs in.

A service's `create_server(config)` builds a `ServiceApp` (not started);
`run_service` does the rest, identically for every service: logging,
tracing and metrics (the `/metrics` endpoint), configuration, start,
SIGTERM/SIGINT, drain, stop. A setting that
cannot be used stops the start with status 2 and one line on stderr that
names the service and the variable, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health

from services.common import metrics
from services.common.config import ConfigError, sent_chunk_size_warning
from services.common.grpc_server import GrpcServer, InFlightCalls
from services.common.logging_setup import configure_logging
from services.common.telemetry import configure_tracing, shutdown_tracing

log = logging.getLogger("registry")

# Exit statuses: a start refused because of a setting (or another error the
# service declares as such), and a service that could not get ready.
EXIT_BAD_SETTING = 2
EXIT_NOT_READY = 1


def _nothing() -> None:
    pass


async def _nothing_to_close() -> None:
    pass


@dataclass(frozen=True)
class BoundServer:
    """A server of a process besides its main one, and the port it is bound to."""

    grpc_server: GrpcServer
    port: int


@dataclass(frozen=True)
class ServiceApp:
    """A built service, not started: its gRPC server (with health and calls
    in flight), the port it is bound to, and the hooks its life runs.

    - `on_draining`: at the start of shutdown, right after health turns
      NOT_SERVING: ends calls that would never end by themselves (watches).
    - `on_stop`: after the server stopped: closes stores and channels.
    - `ready`: a task that prepares what the service needs and turns health
      SERVING; if it fails, the process stops (status 1), logging why.
    - `summary`: what the start-up log line tells besides the address.
    - `more_servers`: other servers of the same process (on ports of their
      own, sharing `grpc_server`'s health servicer), started, drained and
      stopped with it.
    """

    grpc_server: GrpcServer
    port: int
    on_draining: Callable[[], None] = _nothing
    on_stop: Callable[[], Awaitable[None]] = _nothing_to_close
    ready: asyncio.Task[None] | None = None
    summary: str = ""
    more_servers: tuple[BoundServer, ...] = ()

    @property
    def servers(self) -> tuple[grpc.aio.Server, ...]:
        return (self.grpc_server.server, *(more.grpc_server.server for more in self.more_servers))

    @property
    def server(self) -> grpc.aio.Server:
        return self.grpc_server.server

    @property
    def health(self) -> health.aio.HealthServicer:
        return self.grpc_server.health

    @property
    def in_flight(self) -> InFlightCalls:
        return self.grpc_server.in_flight

    async def shut_down(self, grace_seconds: float) -> None:
        """NOT_SERVING first (so Envoy stops routing new calls here),
        `on_draining`, drain this server's calls in flight for up to
        `grace_seconds`, stop the server, and finally `on_stop`."""
        log.info("shutting down: draining for up to %.0fs", grace_seconds)
        await self.health.enter_graceful_shutdown()
        self.on_draining()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        # Health checks are calls too: only Envoy's probes arrive now, and they are short.
        for grpc_server in (self.grpc_server, *(more.grpc_server for more in self.more_servers)):
            if not await grpc_server.in_flight.wait_idle(max(0.0, deadline - loop.time())):
                log.warning("%d calls still in flight after the grace period", grpc_server.in_flight.count)
        remaining = max(0.0, deadline - loop.time())
        await asyncio.gather(*(server.stop(remaining) for server in self.servers))
        await self.on_stop()
        log.info("stopped")


class ServiceConfig(Protocol):
    """What `run_service` reads from every service's settings."""

    @property
    def bind_host(self) -> str: ...

    @property
    def shutdown_grace_seconds(self) -> float: ...

    @property
    def sent_chunk_size(self) -> int: ...


Config = TypeVar("Config", bound=ServiceConfig)


async def run_until_signalled(app: ServiceApp, grace_seconds: float) -> None:
    """Waits for SIGTERM/SIGINT, then shuts `app` down (`ServiceApp.shut_down`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        await app.shut_down(grace_seconds)  # a second signal meanwhile changes nothing
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _serve(app: ServiceApp, config: ServiceConfig, name: str) -> int:
    for server in app.servers:
        await server.start()
    log.info("%s listening on %s:%d%s", name, config.bind_host, app.port, f", {app.summary}" if app.summary else "")
    # Signals are handled while the service is still getting ready (a bucket
    # may stay unreachable for long): a stop then is a clean one.
    serving = asyncio.ensure_future(run_until_signalled(app, config.shutdown_grace_seconds))
    if app.ready is not None:
        await asyncio.wait([app.ready, serving], return_when=asyncio.FIRST_COMPLETED)
        if app.ready.done() and not app.ready.cancelled() and app.ready.exception() is not None:
            log.critical("%s", app.ready.exception())
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await asyncio.gather(*(server.stop(0) for server in app.servers))
            await app.on_stop()
            return EXIT_NOT_READY
    await serving
    return 0


async def _start_and_serve(
    name: str,
    load_config: Callable[[], Config],
    create_server: Callable[[Config], Awaitable[ServiceApp]],
    start_errors: tuple[type[Exception], ...],
) -> int:
    try:
        config = load_config()
        # Before the service is built: with metrics off, it records nothing.
        metrics_port = metrics.metrics_port()
        metrics.configure_metrics(metrics_port != 0)
        if metrics_port:
            metrics.serve_metrics(config.bind_host, metrics_port)
            log.info("metrics on http://%s:%d/metrics", config.bind_host, metrics_port)
        app = await create_server(config)
    except (ConfigError, *start_errors) as exc:
        # The message names the variable: a traceback would only hide it.
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    # Usable, but it breaks downloads for some clients: said by every
    # service that reads it, so whichever log an operator reads shows it.
    warning = sent_chunk_size_warning(config.sent_chunk_size)
    if warning is not None:
        log.warning("%s", warning)
    return await _serve(app, config, name)


def run_service(
    name: str,
    load_config: Callable[[], Config],
    create_server: Callable[[Config], Awaitable[ServiceApp]],
    *,
    start_errors: tuple[type[Exception], ...] = (),
) -> None:
    """Runs a service process until SIGTERM/SIGINT, then exits: `name` is
    the service's (in logs, traces and errors), `load_config` reads its
    settings, `create_server` builds it. A `ConfigError`, or one of
    `start_errors`, raised by either stops the start (status 2)."""
    configure_logging(name)
    configure_tracing(name)
    try:
        status = asyncio.run(_start_and_serve(name, load_config, create_server, start_errors))
    finally:
        shutdown_tracing()
    sys.exit(status)
