"""VersionUpdate: one uninterrupted stream per subscriber, over internal
watches that end (deadline, metadata restarts), and its end when the
frontend drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import grpc
from cogmentAPI import model_registry_pb2 as api

from services.common.errors import InvalidArgument, RegistryError, Unavailable
from services.common.grpc_client import upstream_error
from services.frontend.upstream import METADATA

# How long a broken watch waits before it is renewed: doubled while metadata
# stays unreachable, back to the first once a version arrives.
_FIRST_BACKOFF_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 2.0

# Ends of a watch after which it is renewed; any other status is the client's answer.
_RENEWABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class WatchCall(Protocol):
    """An internal watch in progress (grpc.aio.UnaryStreamCall): iterating
    it gives versions, until it ends with a status; cancelling it makes the
    iteration raise asyncio.CancelledError."""

    def __aiter__(self) -> AsyncIterator[api.ModelVersionInfo]: ...

    def cancel(self) -> bool: ...


class VersionWatches(Protocol):
    """The metadata call of VersionUpdate (upstream.MetadataClient)."""

    def watch_versions(self, model_id: str, after_version: int) -> WatchCall: ...


class Followers:
    """The VersionUpdate subscribers of this frontend: each follows a model
    through renewed internal watches, until it leaves or the frontend drains."""

    def __init__(
        self, metadata: VersionWatches, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self._metadata = metadata
        self._sleep = sleep
        # Internal watches of VersionUpdate subscribers, ended when draining.
        self._watches: set[WatchCall] = set()
        self._draining = False

    async def follow_versions(self, model_id: str) -> AsyncIterator[api.ModelVersionInfo]:
        """The latest version, then every new one, for as long as the client listens.

        The internal watch is renewed (deadline, metadata restart) from the
        last version sent, so the client sees one uninterrupted stream: no
        version twice, none skipped.
        """
        if not model_id:
            raise InvalidArgument("model_id must not be empty")
        last_sent = 0
        backoff = _FIRST_BACKOFF_SECONDS
        while True:
            if self._draining:
                raise _shutting_down()
            call = self._metadata.watch_versions(model_id, last_sent)
            self._watches.add(call)
            try:
                async for info in call:
                    if info.version_number <= last_sent:
                        continue
                    last_sent = info.version_number
                    backoff = _FIRST_BACKOFF_SECONDS
                    yield info
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._draining and current is not None and not current.cancelling():
                    raise _shutting_down() from None  # we ended the watch, not the client
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RENEWABLE:
                    raise upstream_error(METADATA, exc) from None
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # a planned renewal: resume at once
            finally:
                self._watches.discard(call)
                call.cancel()
            # The watch broke (metadata restarting, replica gone): resume
            # from the last version sent, backing off while it stays down.
            await self._sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    def stop_following(self) -> None:
        """Ends every VersionUpdate stream with UNAVAILABLE (the frontend is
        draining): subscribers reconnect at once, to another replica, instead
        of being cut when the grace period ends."""
        self._draining = True
        for call in list(self._watches):
            call.cancel()


def _shutting_down() -> RegistryError:
    return Unavailable("this frontend is shutting down: subscribe again to continue")
