"""Registration of the public endpoint in a Cogment Directory (SPEC §5).

Each frontend holds its own registration of the public (Envoy) endpoint,
made once the public endpoint serves (server.py: the stack serves and
Envoy routes to a serving frontend), so that the directory's first health
check (Status through Envoy, right at Register) passes. It then looks the
registration up every `check_interval_seconds` (Inquire by service id,
with the token): a directory that restarted, or that dropped the entry
(three failed health checks), no longer lists it, and the frontend
registers again, after deregistering the old id in case the directory only
hid it. A directory that is down is retried with backoff; it never stops
the registry from serving. At shutdown the frontend deregisters its own
registration, giving up after `call_timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field

import grpc
from cogmentAPI import directory_pb2, directory_pb2_grpc

from services.common import metrics, product
from services.frontend.config import DirectorySettings

log = logging.getLogger("registry.directory")

TOKEN_METADATA = "authentication-token"
# Properties every registration carries (Cogment's names), after the configured ones.
REGISTRATION_SOURCE_PROPERTY = "__registration_source"
VERSION_PROPERTY = "__version"
REGISTRATION_SOURCE = "Self-Implicit"
# Register waits for the directory's first health check of us (up to three
# rounds of 2, 4 and 8 s when we do not answer).
REGISTER_TIMEOUT_SECONDS = 30.0
_FIRST_RETRY_SECONDS = 0.5
_MAX_RETRY_SECONDS = 10.0
# A UDP "connect" to this address sends nothing; it only makes the kernel
# pick the interface, whose address is the outbound IPv4.
_OUTBOUND_PROBE = ("192.0.2.1", 9)  # TEST-NET-1: never routed, never answered


# Failures that say nothing about the registration: the directory did not answer.
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class DirectoryError(Exception):
    """The directory refused a call or could not be reached; the message says which."""


@dataclass(frozen=True)
class Registration:
    """What the directory answered to Register: needed to deregister."""

    service_id: int
    secret: str


def outbound_ipv4() -> str:
    """The host's IPv4 address that other hosts reach it by: the source
    address of its default route, else the first non-loopback address of
    its host name, else loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_OUTBOUND_PROBE)
            address = probe.getsockname()[0]
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for *_, sockaddr in infos:
        if not str(sockaddr[0]).startswith("127."):
            return str(sockaddr[0])
    return "127.0.0.1"


def registration_request(settings: DirectorySettings, host: str) -> directory_pb2.RegisterRequest:
    """The Register request of this registry's public endpoint."""
    protocol = directory_pb2.ServiceEndpoint.GRPC_SSL if settings.public_tls else directory_pb2.ServiceEndpoint.GRPC
    properties = dict(settings.properties)
    properties[REGISTRATION_SOURCE_PROPERTY] = REGISTRATION_SOURCE
    properties[VERSION_PROPERTY] = product.VERSION
    return directory_pb2.RegisterRequest(
        endpoint=directory_pb2.ServiceEndpoint(protocol=protocol, host=host, port=settings.public_port),
        details=directory_pb2.ServiceDetails(type=directory_pb2.MODEL_REGISTRY_SERVICE, properties=properties),
        permanent=False,
    )


class DirectoryClient:
    """The calls of `cogmentAPI.DirectorySP` a registration makes, each
    with the directory token and a deadline; every failure is a
    `DirectoryError`."""

    def __init__(self, channel: grpc.aio.Channel, *, token: str, call_timeout_seconds: float) -> None:
        self._stub = directory_pb2_grpc.DirectorySPStub(channel)
        self._metadata = ((TOKEN_METADATA, token),) if token else ()
        self._timeout = call_timeout_seconds

    async def register(self, request: directory_pb2.RegisterRequest) -> Registration:
        # A request iterator, not call.write(): the OpenTelemetry aio
        # interceptor breaks write()/done_writing() streams.
        reply = await self._one_reply(
            self._stub.Register(iter([request]), metadata=self._metadata, timeout=REGISTER_TIMEOUT_SECONDS), "Register"
        )
        if reply.status != directory_pb2.RegisterReply.OK:
            raise DirectoryError(f"the directory refused Register: {reply.error_msg or 'no reason given'}")
        return Registration(reply.service_id, reply.secret)

    async def deregister(self, registration: Registration, timeout: float | None = None) -> None:
        request = directory_pb2.DeregisterRequest(service_id=registration.service_id, secret=registration.secret)
        reply = await self._one_reply(
            self._stub.Deregister(iter([request]), metadata=self._metadata, timeout=timeout or self._timeout),
            "Deregister",
        )
        if reply.status != directory_pb2.DeregisterReply.OK:
            raise DirectoryError(f"the directory refused Deregister: {reply.error_msg or 'no reason given'}")

    async def is_listed(self, service_id: int) -> bool:
        """Whether the directory answers an inquiry for `service_id` (it
        leaves out an entry whose last health check failed)."""
        call = self._stub.Inquire(
            directory_pb2.InquireRequest(service_id=service_id), metadata=self._metadata, timeout=self._timeout
        )
        try:
            async for reply in call:
                if reply.data.service_id == service_id:
                    return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _UNREACHABLE:
                raise DirectoryError(f"Inquire failed: {exc.code().name}: {exc.details()}") from None
            # The directory answered, with an error for an id it does not know.
            return False
        finally:
            call.cancel()
        return False

    @staticmethod
    async def _one_reply(call: grpc.aio.StreamStreamCall, method: str):  # type: ignore[no-untyped-def]
        try:
            async for reply in call:
                return reply
        except grpc.aio.AioRpcError as exc:
            raise DirectoryError(f"{method} failed: {exc.code().name}: {exc.details()}") from None
        finally:
            call.cancel()
        raise DirectoryError(f"the directory ended {method} without a reply")


async def public_endpoint_serving(
    stack_serving: Awaitable[None],
    routed: Callable[[], Awaitable[bool]],
    interval_seconds: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Returns once this frontend's stack serves (`stack_serving`) and
    Envoy routes public calls to a serving frontend (`routed`, asked every
    `interval_seconds`): what the directory's health check at Register
    needs. This frontend serving is not enough: Envoy puts it in rotation
    only at its own next health check of it, up to its interval later, and
    a Register before then had every round of the directory's check fail
    with "no healthy upstream" (the entry stayed hidden until the next
    look-up registered it again)."""
    await stack_serving
    waited = False
    while not await routed():
        if not waited:
            log.info("Envoy routes public calls to no serving frontend yet: registering in the directory once it does")
            waited = True
        await sleep(interval_seconds)


@dataclass(eq=False)
class DirectoryRegistration:
    """Keeps one registration of the public endpoint in the directory, from
    `start` to `stop` (see the module's docstring)."""

    client: DirectoryClient
    request: directory_pb2.RegisterRequest
    _: KW_ONLY
    directory: str
    check_interval_seconds: float
    deregister_timeout_seconds: float
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _registration: Registration | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _stopping: asyncio.Task[None] | None = field(default=None, init=False)
    _registering: asyncio.Future[Registration] | None = field(default=None, init=False)
    # Repeated failures are logged once, until the next success.
    _failing: bool = field(default=False, init=False)

    @property
    def registration(self) -> Registration | None:
        """The registration held now, if any."""
        return self._registration

    @registration.setter
    def registration(self, registration: Registration | None) -> None:
        # Every change of state goes through here, so the metric follows it.
        self._registration = registration
        metrics.directory_registration_state(registration is not None)

    @property
    def endpoint(self) -> str:
        return f"{self.request.endpoint.host}:{self.request.endpoint.port}"

    def start(self, serving: Awaitable[None]) -> None:
        """Registers once `serving` is done (the stack answers), then keeps
        the registration until `stop`."""
        self._task = asyncio.get_running_loop().create_task(self._run(serving), name="directory registration")

    async def _run(self, serving: Awaitable[None]) -> None:
        await serving
        retry = _FIRST_RETRY_SECONDS
        while True:
            if self.registration is None:
                # Shielded: a stop meanwhile waits for the answer, so as to
                # deregister what the directory may have registered.
                self._registering = asyncio.ensure_future(self.client.register(self.request))
                try:
                    self.registration = await asyncio.shield(self._registering)
                except DirectoryError as exc:
                    self._failed(f"cannot register {self.endpoint} in the Cogment Directory at {self.directory}: {exc}; retrying")
                    await self.sleep(retry * random.uniform(0.8, 1.0))
                    retry = min(retry * 2, _MAX_RETRY_SECONDS)
                    continue
                self._registering = None
                self._failing, retry = False, _FIRST_RETRY_SECONDS
                log.info(
                    "registered %s in the Cogment Directory at %s as service id %d",
                    self.endpoint,
                    self.directory,
                    self.registration.service_id,
                )
            await self.sleep(self.check_interval_seconds)
            try:
                listed = await self.client.is_listed(self.registration.service_id)
            except DirectoryError as exc:
                self._failed(f"cannot reach the Cogment Directory at {self.directory} to check the registration: {exc}")
                continue
            if listed:
                self._failing = False
                continue
            log.warning(
                "the Cogment Directory at %s no longer lists service id %d (it restarted, or its health checks of %s "
                "failed): registering again",
                self.directory,
                self.registration.service_id,
                self.endpoint,
            )
            stale, self.registration = self.registration, None
            try:  # the entry may only be hidden: do not leave it behind
                await self.client.deregister(stale)
            except DirectoryError:
                pass

    def _failed(self, message: str) -> None:
        if not self._failing:
            log.warning("%s", message)
        else:
            log.debug("%s", message)
        self._failing = True

    def begin_stop(self) -> None:
        """Starts `stop` without waiting for it (the frontend's draining hook)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(), name="directory deregistration")

    async def stop(self) -> None:
        """Stops keeping the registration and deregisters it, waiting at
        most the deregistration timeout for a directory that does not answer."""
        self.begin_stop()
        assert self._stopping is not None
        await self._stopping

    async def _answer_in_flight(self, registering: asyncio.Future[Registration]) -> Registration | None:
        """The answer of a Register still in flight, if it comes within the
        deregistration timeout."""
        try:
            async with asyncio.timeout(self.deregister_timeout_seconds):
                return await registering
        except (TimeoutError, DirectoryError):
            registering.cancel()
            return None

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        registration, self.registration = self.registration, None
        if registration is None and self._registering is not None:
            registration = await self._answer_in_flight(self._registering)
        if registration is None:
            return
        try:
            await self.client.deregister(registration, timeout=self.deregister_timeout_seconds)
        except DirectoryError as exc:
            log.warning("could not deregister service id %d from the Cogment Directory: %s", registration.service_id, exc)
        else:
            log.info("deregistered service id %d from the Cogment Directory at %s", registration.service_id, self.directory)
