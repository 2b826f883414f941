"""The blobstore replicas this frontend calls directly.

Blob bytes go from the frontend straight to a replica: through a proxy they
would make one more loopback hop, which on a small machine costs about a
third of the transfer rate (see README, "Benchmarks"). Envoy still health-
checks every replica for operators; this class keeps the frontend's own view:

- Discovery: each configured address (`host:port`) is resolved every
  refresh; a name may stand for several replicas (`docker compose --scale`
  gives one DNS record per container).
- Health and identity: every refresh asks each replica `DescribeReplica`
  (its id and whether it takes calls), with a short deadline, so a frozen or
  draining replica leaves rotation within one interval.
- Placement: a new blob goes to the serving replica with the fewest calls in
  flight; a transient blob is read and deleted where its key says it lives
  (services/common/blob_keys.py); archived blobs are in shared storage and
  any serving replica reads them.

`BlobRouter` makes every blob call go where this view says, and decides
what a failed call means for the next one: it is the only place that
chooses a replica. The calls themselves (one call to one given replica)
are `upstream.BlobStoreClient`'s.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import grpc
from registry import blobstore_pb2, blobstore_pb2_grpc

from services.common import metrics
from services.common.blob_keys import holder_of, new_archived_key, new_transient_key
from services.common.errors import Unavailable
from services.common.grpc_client import internal_channel

log = logging.getLogger("registry.frontend")

# (host, port) -> addresses it stands for; blocking (getaddrinfo).
Resolver = Callable[[str, int], list[str]]


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError if malformed."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def resolve_address(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, as `ip:port` (sorted, deduplicated)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = set()
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        found.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(found)


@dataclass
class Replica:
    """One blobstore process, as this frontend last saw it."""

    address: str
    channel: grpc.aio.Channel
    stub: blobstore_pb2_grpc.BlobStoreStub
    replica_id: str = ""
    # Takes new blobs: answered DescribeReplica with serving=true.
    serving: bool = False
    # Answered the last DescribeReplica (serving or draining: a draining
    # replica still holds, and serves, its transient blobs until it stops).
    answering: bool = False
    # Not answering, and connections to it fail (refused, reset): the
    # process is gone, with its transient blobs. A replica that accepts
    # connections but does not answer (frozen, overloaded) is not down: its
    # blobs may well come back.
    down: bool = False
    in_flight: int = 0

    def mark_not_answering(self) -> None:
        self.serving = self.answering = False
        self.down = self.channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.TRANSIENT_FAILURE


class BlobReplicas:
    """Discovers blobstore replicas, tracks which serve, and picks the one
    each blob call goes to (see the module docstring)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        max_message_bytes: int,
        refresh_interval_seconds: float,
        describe_timeout_seconds: float,
        resolver: Resolver = resolve_address,
    ) -> None:
        self._names = [split_address(address) for address in addresses]
        self._interval = refresh_interval_seconds
        self._describe_timeout = describe_timeout_seconds
        self._resolver = resolver
        # A replica that was down is retried at least every interval, not
        # after gRPC's default backoff (up to 2 minutes).
        backoff_ms = max(int(refresh_interval_seconds * 1000), 100)
        self._max_message_bytes = max_message_bytes
        self._reconnect_options = [
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ]
        self._replicas: dict[str, Replica] = {}  # by address
        self._last_resolved: dict[tuple[str, int], list[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._refreshed = asyncio.Event()
        self._refreshing: asyncio.Future[None] | None = None

    # -- the view -----------------------------------------------------------

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    def serving(self) -> list[Replica]:
        return [r for r in self._replicas.values() if r.serving]

    def locate(self, key: str) -> Replica | None:
        """The answering replica that holds transient blob `key`; None when
        the blob is gone for all a client can tell: every replica answers and
        none has the id the key names (it restarted, or left), or that
        replica is down. Raises Unavailable when the replica is there but
        does not answer (frozen, overloaded), or when the id is unknown
        while some replica does not answer: the blob may come back."""
        holder = holder_of(key)
        if holder is None:
            return None
        for replica in self._replicas.values():
            if replica.replica_id != holder:
                continue
            if replica.answering:
                return replica
            if replica.down:
                return None
            raise Unavailable(
                f"the blobstore replica {replica.address} holding blob {key} does not answer; try again later"
            )
        # No replica we know has that id. Gone, unless one of them does not
        # answer: it may be the holder under an id we have not learned yet
        # (another frontend placed the blob on a replica just restarted).
        silent = [r.address for r in self._replicas.values() if not r.answering]
        if silent:
            raise Unavailable(
                f"the blobstore replica holding blob {key} is not known yet and {', '.join(silent)} does not answer; "
                "try again later"
            )
        return None

    async def find_holder(self, key: str) -> Replica | None:
        """`locate(key)`, looking again (one refresh) before concluding the
        holder is gone or silent: the view may be up to an interval old."""
        try:
            replica = self.locate(key)
        except Unavailable:
            replica = None
        if replica is None and holder_of(key) is not None:
            await self.refresh()
            replica = self.locate(key)
        return replica

    async def choose(self, exclude: frozenset[str] = frozenset()) -> Replica:
        """`least_busy`, with two checks against a view up to an interval
        old: when no replica seems to serve, look again (right after
        start-up the view may predate the replicas' readiness); and a chosen
        replica whose connection is not up is asked again before it gets a
        blob (it may have died since the last look)."""
        if not any(r.address not in exclude for r in self.serving()):
            await self.refresh()
        for _ in range(len(self._replicas)):
            replica = self.least_busy(exclude)
            if replica.channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY:
                return replica
            await self._describe(replica)
            if replica.serving:
                return replica
        return self.least_busy(exclude)

    def least_busy(self, exclude: frozenset[str] = frozenset()) -> Replica:
        """The serving replica with the fewest calls in flight (ties at
        random); Unavailable when none serves."""
        candidates = [r for r in self.serving() if r.address not in exclude]
        if not candidates:
            raise Unavailable(self._none_serving())
        fewest = min(r.in_flight for r in candidates)
        return random.choice([r for r in candidates if r.in_flight == fewest])

    def _none_serving(self) -> str:
        known = ", ".join(f"{r.address} ({'serving' if r.serving else 'not serving'})" for r in self._replicas.values())
        return f"no blobstore replica is serving (known: {known or 'none resolved yet'})"

    @contextmanager
    def call(self, replica: Replica) -> Iterator[Replica]:
        """Counts a call in flight on `replica` while the block runs."""
        replica.in_flight += 1
        try:
            yield replica
        finally:
            replica.in_flight -= 1

    def report_unreachable(self, replica: Replica) -> None:
        """A call found `replica` unreachable: out of rotation until the next
        refresh says otherwise."""
        if replica.serving:
            log.warning("blobstore replica %s (%s) unreachable: out of rotation", replica.address, replica.replica_id)
        replica.mark_not_answering()
        self._publish()

    def _publish(self) -> None:
        metrics.frontend().blobstore_replicas_serving.set(len(self.serving()))

    # -- refreshing ---------------------------------------------------------

    async def refresh(self) -> None:
        """Resolves the configured names and describes every replica once;
        concurrent callers share one refresh."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        addresses: set[str] = set()
        for host, port in self._names:
            try:
                self._last_resolved[(host, port)] = await loop.run_in_executor(None, self._resolver, host, port)
            except OSError as exc:
                # Keep what the name stood for: a DNS hiccup is not a lost replica.
                log.warning("cannot resolve blobstore address %s:%d (%s); keeping the last answer", host, port, exc)
            addresses.update(self._last_resolved.get((host, port), []))
        for address in set(self._replicas) - addresses:
            gone = self._replicas.pop(address)
            log.info("blobstore replica %s (%s) left", address, gone.replica_id)
            await gone.channel.close()
            self._publish()
        for address in sorted(addresses - set(self._replicas)):
            channel = internal_channel(address, self._max_message_bytes, self._reconnect_options)
            self._replicas[address] = Replica(address, channel, blobstore_pb2_grpc.BlobStoreStub(channel))
        await asyncio.gather(*(self._describe(replica) for replica in list(self._replicas.values())))
        self._refreshed.set()

    async def _describe(self, replica: Replica) -> None:
        try:
            # wait_for_ready: a replica that just came up is reached as soon
            # as it listens, not after the channel's reconnect backoff.
            reply = await replica.stub.DescribeReplica(
                blobstore_pb2.DescribeReplicaRequest(), timeout=self._describe_timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            if replica.serving:
                log.warning(
                    "blobstore replica %s (%s) out of rotation: %s", replica.address, replica.replica_id, exc.code().name
                )
            replica.mark_not_answering()
            self._publish()
            return
        if replica.replica_id and reply.replica_id != replica.replica_id:
            log.warning(
                "blobstore replica %s restarted (id %s -> %s): its transient blobs are gone",
                replica.address,
                replica.replica_id,
                reply.replica_id,
            )
        if reply.serving and not replica.serving:
            log.info("blobstore replica %s (%s) in rotation", replica.address, reply.replica_id)
        replica.replica_id = reply.replica_id
        replica.serving = reply.serving
        replica.answering, replica.down = True, False
        self._publish()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # never let the view freeze on a bug
                log.exception("refreshing the blobstore replicas failed")
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name="blobstore replicas")

    async def wait_refreshed(self) -> None:
        """Returns once the first refresh has completed."""
        await self._refreshed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for replica in self._replicas.values():
            await replica.channel.close()
        self._replicas.clear()


# -- routing -----------------------------------------------------------------


class BlobMissing(Exception):
    """The blob a version points to is not where its key says (a transient
    blob whose replica restarted or left, or a blob deleted meanwhile)."""


class BlobWire(Protocol):
    """One call to one given replica, nothing more (upstream.BlobStoreClient).
    Failures are raised as grpc.aio.AioRpcError, for the router to judge."""

    async def put(self, replica: Replica, size: int, requests: AsyncIterator[bytes]) -> None: ...

    def get(
        self, replica: Replica, key: str, *, archived: bool, expected_size: int, expected_sha256: bytes
    ) -> AsyncIterable[bytes]: ...

    async def delete(self, replica: Replica, key: str, *, archived: bool) -> None: ...


class NewBlob:
    """A key for a new blob and the replica chosen to store it (see `BlobRouter.place`)."""

    def __init__(self, key: str, replica: Replica, replicas: BlobReplicas, wire: BlobWire) -> None:
        self.key = key
        self._replica = replica
        self._replicas = replicas
        self._wire = wire

    @property
    def address(self) -> str:
        return self._replica.address

    async def put(self, size: int, requests: AsyncIterator[bytes]) -> None:
        """Streams `requests` (encoded header, chunks, finish) into the chosen
        replica. Raises grpc.aio.AioRpcError: the caller knows why an upload
        stopped."""
        with self._replicas.call(self._replica):
            try:
                await self._wire.put(self._replica, size, requests)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._replicas.report_unreachable(self._replica)
                raise


class BlobRouter:
    """Sends each blob call to the replica it belongs to, and decides what an
    unreachable replica means (see the module docstring)."""

    def __init__(self, replicas: BlobReplicas, wire: BlobWire) -> None:
        self._replicas = replicas
        self._wire = wire

    async def place(self, archived: bool) -> NewBlob:
        """A key for a new blob and the replica to store it: the least busy
        serving one (the only one that can hold a transient blob's bytes,
        since its key names it)."""
        replica = await self._replicas.choose()
        key = new_archived_key() if archived else new_transient_key(replica.replica_id)
        return NewBlob(key, replica, self._replicas, self._wire)

    async def get(
        self, key: str, *, archived: bool, expected_size: int, expected_sha256: bytes
    ) -> AsyncIterator[bytes]:
        """The encoded RetrieveVersionDataReplyChunk messages of a blob.

        Raises BlobMissing when the blob is not there (checked before the
        first chunk), grpc.aio.AioRpcError or Unavailable for other failures.
        An archived read that finds its replica unreachable before the first
        chunk moves on to another replica. A transient blob's replica that
        becomes unreachable is looked at again: down, the blob is missing;
        frozen, the read is UNAVAILABLE (the blob may come back); answering
        again, it gets one more try.
        """
        tried: set[str] = set()
        holder_retried = False
        while True:
            replica = await self._reader(key, archived=archived, exclude=frozenset(tried))
            tried.add(replica.address)
            started = False
            with self._replicas.call(replica):
                try:
                    chunks = self._wire.get(
                        replica, key, archived=archived, expected_size=expected_size, expected_sha256=expected_sha256
                    )
                    async for chunk in chunks:
                        started = True
                        yield chunk
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        raise BlobMissing(key) from None
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or started:
                        raise
                    self._replicas.report_unreachable(replica)
                    if archived:
                        continue  # the shared archive: any other replica reads it
                    # Dead (its blobs are gone), frozen (they may come
                    # back) or a blip? Look again before answering.
                    await self._replicas.refresh()
                    if replica.down:
                        raise BlobMissing(key) from None
                    if holder_retried or not replica.answering:
                        raise
                    holder_retried = True  # it answers again: one more try

    async def _reader(self, key: str, *, archived: bool, exclude: frozenset[str]) -> Replica:
        """The replica to read `key` from: for an archived blob any serving
        one not in `exclude`; for a transient blob its holder, or BlobMissing."""
        if archived:
            return await self._replicas.choose(exclude=exclude)
        holder = await self._replicas.find_holder(key)
        if holder is None:
            raise BlobMissing(key)
        return holder

    async def delete(self, key: str, *, archived: bool) -> None:
        """Deletes a blob where it lives; a transient blob whose replica is
        gone needs nothing (its memory went with it)."""
        if archived:
            replica = await self._replicas.choose()
        else:
            try:
                holder = await self._replicas.find_holder(key)
            except Unavailable:
                # Unreferenced from now on: its replica's sweeper removes it.
                return
            if holder is None:
                return  # gone with its replica's memory
            replica = holder
        with self._replicas.call(replica):
            await self._wire.delete(replica, key, archived=archived)
