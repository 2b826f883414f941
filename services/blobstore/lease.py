"""The blobstore replica's lease in metadata: how metadata learns that a
replica's transient blobs are gone for good.

A replica holds its transient blobs in memory: they die with the process.
It renews a lease (`RenewReplicaLease`: its id, its slot, the lease's
length) at start and then every third of the lease. Metadata forgets the
transient versions of a replica

- replaced in its slot by another id (it restarted: the first renewal of
  the new process forgets the old one's versions, before it serves),
- whose lease expired (dead, or frozen for longer than the lease: a
  SIGSTOPped replica keeps its versions until then), or
- that released its lease (lease 0, at a clean stop).

The slot is `host:port`: the same process restarted by a supervisor (or a
container restarted in place) has the same one.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import grpc
from registry import metadata_pb2, metadata_pb2_grpc

from services.common.errors import RegistryError
from services.common.grpc_client import upstream_error

log = logging.getLogger("registry.blobstore")

# How soon a failed renewal is tried again.
RETRY_SECONDS = 1.0


def replica_slot(port: int) -> str:
    """Where this replica runs, as metadata records it."""
    return f"{socket.gethostname()}:{port}"


class LeaseKeeper:
    """Renews this replica's lease every third of `lease_seconds`; releases
    it at `stop`. A failed renewal is logged once per outage and retried
    every second (metadata may not be reachable yet at start, and the
    lease outlives two failed renewals)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        replica_id: str,
        slot: str,
        *,
        lease_seconds: float,
        call_timeout_seconds: float,
    ) -> None:
        self._stub = metadata_pb2_grpc.MetadataServiceStub(channel)
        self.replica_id = replica_id
        self.slot = slot
        self.lease_seconds = lease_seconds
        self._timeout = min(call_timeout_seconds, lease_seconds / 3)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def renew(self, lease_seconds: float | None = None) -> int:
        """One renewal (or, with 0, the release); returns the versions metadata forgot."""
        request = metadata_pb2.RenewReplicaLeaseRequest(
            replica_id=self.replica_id,
            slot=self.slot,
            lease_seconds=self.lease_seconds if lease_seconds is None else lease_seconds,
        )
        try:
            reply = await self._stub.RenewReplicaLease(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("metadata", exc) from None
        return reply.forgotten_versions

    async def renew_logged(self) -> None:
        try:
            forgotten = await self.renew()
        except RegistryError as exc:
            if not self._failing:
                log.warning(
                    "could not renew this replica's lease in metadata (retried every %.1fs; the lease "
                    "lasts %.0fs): %s", min(RETRY_SECONDS, self.lease_seconds / 3), self.lease_seconds, exc.message,
                )
            self._failing = True
            return
        if self._failing:
            log.info("renewed this replica's lease in metadata again")
        self._failing = False
        if forgotten:
            log.info(
                "replica %s in slot %s: metadata forgot %d transient versions of the replica it replaces",
                self.replica_id, self.slot, forgotten,
            )

    def start(self) -> None:
        """Renews every third of the lease from now on (call `renew_logged`
        first, so the replica's predecessor is forgotten before it serves)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="replica lease")

    async def _run(self) -> None:
        # The first renewal is the caller's (before the replica serves).
        # After a failure, retried every second: until metadata has recorded
        # this replica, a restart of it would not be noticed (metadata
        # cannot forget the versions of a replica it never heard of).
        while True:
            await asyncio.sleep(min(RETRY_SECONDS, self.lease_seconds / 3) if self._failing else self.lease_seconds / 3)
            await self.renew_logged()

    async def stop(self, *, release: bool = True) -> None:
        """Stops renewing and (by default) releases the lease: the replica's
        transient versions are forgotten at once, as its memory goes."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if release:
            try:
                await asyncio.wait_for(self.renew(0), timeout=1.0)
            except (RegistryError, asyncio.TimeoutError) as exc:
                log.warning("could not release this replica's lease (it expires in %.0fs): %s", self.lease_seconds, exc)
