"""An in-process stand-in for a Cogment 2.x Directory (`cogmentAPI.DirectorySP`),
behaving as the real one does where the registry depends on it:

- Register stores the request with the `authentication-token` it came with,
  answers a random 64-bit id and a secret, and health-checks the endpoint
  right away the way Cogment does (Status(names=["overall_load"]) on
  `cogmentAPI.ModelRegistrySP`, falling back to Version; three rounds);
  an entry whose last check failed is left out of Inquire;
- Deregister needs the same token and the secret;
- Inquire answers only entries registered with the inquirer's token.

It records every call (method, request as a dict, metadata; for Register,
the outcome of its health check) in `calls`, and
`forget()` drops every entry, as a directory that restarted would have.
Standalone (logs calls as JSON lines): `python tests/integration/fake_directory.py --port 9005`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from cogmentAPI import common_pb2, directory_pb2, directory_pb2_grpc
from google.protobuf import json_format

TOKEN_METADATA = "authentication-token"
MODEL_REGISTRY_STATUS = "/cogmentAPI.ModelRegistrySP/Status"
MODEL_REGISTRY_VERSION = "/cogmentAPI.ModelRegistrySP/Version"


@dataclass
class Entry:
    service_id: int
    secret: str
    token: str
    request: directory_pb2.RegisterRequest
    healthy: bool = False
    load: int | None = None
    # What the last health check did, for test failure messages.
    last_check: str = ""
    registered_at: float = field(default_factory=time.monotonic)


def as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _failure(exc: grpc.aio.AioRpcError) -> str:
    """A failed call's code, with Envoy's or the server's message if any
    ("no healthy upstream" is Envoy routing to no frontend)."""
    return f"{exc.code().name} ({exc.details()})" if exc.details() else exc.code().name


async def health_check(host: str, port: int, *, rounds: int = 3, timeout: float = 2.0) -> tuple[bool, int | None, str]:
    """What Cogment's directory does for a GRPC model registry endpoint:
    (healthy, overall_load as it parses it, how it went)."""
    how = []
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        status = channel.unary_unary(
            MODEL_REGISTRY_STATUS,
            request_serializer=common_pb2.StatusRequest.SerializeToString,
            response_deserializer=common_pb2.StatusReply.FromString,
        )
        version = channel.unary_unary(
            MODEL_REGISTRY_VERSION,
            request_serializer=common_pb2.VersionRequest.SerializeToString,
            response_deserializer=common_pb2.VersionInfo.FromString,
        )
        for _ in range(rounds):
            try:
                reply = await status(common_pb2.StatusRequest(names=["overall_load"]), timeout=timeout)
                raw = reply.statuses.get("overall_load", "")
                load = int(raw) if raw.isdigit() and int(raw) <= 255 else None
                return True, load, f"Status overall_load={raw!r}"
            except grpc.aio.AioRpcError as exc:
                how.append(f"Status {_failure(exc)}")
            try:
                await version(common_pb2.VersionRequest(), timeout=timeout / 2)
                return True, None, "; ".join([*how, "Version ok"])
            except grpc.aio.AioRpcError as exc:
                how.append(f"Version {_failure(exc)}")
            timeout *= 2
    return False, None, "; ".join(how)


class FakeDirectory(directory_pb2_grpc.DirectorySPServicer):
    """See the module docstring. `check_rounds`/`check_timeout` shape the
    health check at Register (Cogment's: 3 rounds from 2 s); without
    `health_check`, every entry passes it."""

    def __init__(self, *, check_rounds: int = 3, check_timeout: float = 2.0, health_check: bool = True) -> None:
        self.health_check = health_check
        self.entries: dict[int, Entry] = {}
        self.calls: list[dict[str, Any]] = []
        self.check_rounds = check_rounds
        self.check_timeout = check_timeout
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Condition()

    # -- life ---------------------------------------------------------------

    async def start(self, port: int = 0) -> int:
        """Serves on 127.0.0.1:`port` (0: a free one; the same port again
        after `stop` to play a restarted directory)."""
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        directory_pb2_grpc.add_DirectorySPServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def restart(self) -> None:
        """Stops, forgets every entry (as a restarted directory has), and serves again on the same port."""
        await self.stop()
        self.forget()
        await self.start(self.port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def forget(self) -> None:
        self.entries.clear()

    # -- what tests look at -------------------------------------------------

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        return [call for call in self.calls if call["method"] == method]

    def listed(self) -> list[Entry]:
        """Entries Inquire would answer (their last health check passed)."""
        return [entry for entry in self.entries.values() if entry.healthy]

    async def wait_for(self, predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        """Waits until `predicate(self)` holds (checked after every call received)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

    async def _record(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> tuple[str, dict[str, Any]]:
        """Records the call; gives its token and its record (which Register
        completes with the outcome of its health check)."""
        metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        call = {"method": method, "request": as_dict(request), "metadata": metadata, "time": time.time()}
        self.calls.append(call)
        return metadata.get(TOKEN_METADATA, ""), call

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- cogmentAPI.DirectorySP ---------------------------------------------

    async def Register(self, request_iterator, context):  # noqa: N802
        async for request in request_iterator:
            token, call = await self._record("Register", request, context)
            reply = directory_pb2.RegisterReply()
            if not request.endpoint.host:
                reply.status, reply.error_msg = directory_pb2.RegisterReply.FAILED, "Empty host"
            else:
                entry = Entry(secrets.randbits(63) + 1, secrets.token_hex(3)[:5], token, request)
                self.entries[entry.service_id] = entry
                if self.health_check:
                    entry.healthy, entry.load, entry.last_check = await health_check(
                        request.endpoint.host, request.endpoint.port, rounds=self.check_rounds, timeout=self.check_timeout
                    )
                else:
                    entry.healthy, entry.last_check = True, "not checked"
                # Kept with the call: an entry the registry replaces is gone from `entries`.
                call["health_check"] = {"healthy": entry.healthy, "how": entry.last_check}
                reply.status, reply.service_id, reply.secret = directory_pb2.RegisterReply.OK, entry.service_id, entry.secret
            await self._notify()
            yield reply

    async def Deregister(self, request_iterator, context):  # noqa: N802
        async for request in request_iterator:
            token, _ = await self._record("Deregister", request, context)
            entry = self.entries.get(request.service_id)
            reply = directory_pb2.DeregisterReply(status=directory_pb2.DeregisterReply.OK)
            if entry is None:
                reply.status, reply.error_msg = directory_pb2.DeregisterReply.FAILED, f"Unknown service ID [{request.service_id}]"
            elif entry.token != token or entry.secret != request.secret:
                reply.status, reply.error_msg = directory_pb2.DeregisterReply.FAILED, "Authentication failure"
            else:
                del self.entries[request.service_id]
            await self._notify()
            yield reply

    async def Inquire(self, request, context):  # noqa: N802
        token, _ = await self._record("Inquire", request, context)
        await self._notify()
        if request.WhichOneof("inquiry") == "service_id":
            found = [self.entries[request.service_id]] if request.service_id in self.entries else []
        else:
            wanted = request.details
            found = [
                entry
                for entry in self.entries.values()
                if (not wanted.type or entry.request.details.type == wanted.type)
                and all(entry.request.details.properties.get(k) == v for k, v in wanted.properties.items())
            ]
        found = sorted((e for e in found if e.token == token and e.healthy), key=lambda e: -e.registered_at)
        for entry in found:
            yield directory_pb2.InquireReply(
                data=directory_pb2.FullServiceData(
                    endpoint=entry.request.endpoint,
                    service_id=entry.service_id,
                    details=entry.request.details,
                    permanent=entry.request.permanent,
                )
            )

    async def Version(self, request, context):  # noqa: N802
        return common_pb2.VersionInfo()

    async def Status(self, request, context):  # noqa: N802
        return common_pb2.StatusReply(statuses={"overall_load": "0"} if request.names else {})


class DirectoryThread:
    """A `FakeDirectory` served by an event loop of its own, in a thread:
    for tests that block (subprocesses, sync gRPC) while it must answer."""

    def __init__(self, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake directory", daemon=True)
        self._thread.start()
        self.fake: FakeDirectory = self._run(self._make, options)

    @staticmethod
    async def _make(options: dict[str, Any]) -> FakeDirectory:
        return FakeDirectory(**options)

    def _run(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(function(*args), self._loop).result(timeout)

    def start(self, port: int = 0) -> int:
        return self._run(self.fake.start, port)

    def stop(self) -> None:
        self._run(self.fake.stop)

    def restart(self) -> None:
        self._run(self.fake.restart)

    def wait_for(self, predicate: Callable[[FakeDirectory], bool], timeout: float = 30.0) -> None:
        self._run(self.fake.wait_for, predicate, timeout, timeout=timeout + 5)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> DirectoryThread:
        """Serves on a free port until the block ends."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _serve(port: int) -> None:
    directory = FakeDirectory()
    await directory.start(port)
    print(json.dumps({"listening": directory.address}), flush=True)
    shown = 0
    while True:
        await asyncio.sleep(0.2)
        for call in directory.calls[shown:]:
            print(json.dumps(call, sort_keys=True), flush=True)
        shown = len(directory.calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A fake Cogment Directory that logs every call.")
    parser.add_argument("--port", type=int, default=0)
    try:
        asyncio.run(_serve(parser.parse_args().port))
    except KeyboardInterrupt:
        sys.exit(0)
