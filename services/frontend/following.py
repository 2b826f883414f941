"""VersionUpdate at RL scale: every subscriber of a model on this frontend
shares one internal watch of it (docs/design.md, 4).

A `ModelFeed` per followed model holds that watch, renewed from the last
version it received (deadline, metadata restarts) and of the same model
incarnation, and a bounded window of the model's latest versions, each
encoded once as the VersionUpdateReply every subscriber is sent. A
subscriber is a cursor (the last number it was sent) and a wake-up: it
sends what the window holds after its cursor, one message at a time, at
the pace its client reads (gRPC flow control). A subscriber so slow that
the window moved past its cursor catches up from metadata by number
(RetrieveVersionInfos pages), then rejoins the window: it misses nothing,
and the frontend never buffers on its behalf.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

import grpc
from cogmentAPI import model_registry_pb2 as api
from registry import metadata_pb2

from services.common.errors import RegistryError, Unavailable
from services.common.grpc_client import upstream_error
from services.common.limits import RequestLimits
from services.frontend.upstream import METADATA

# How long a broken watch waits before it is renewed: doubled while metadata
# stays unreachable, back to the first once the watch started again.
_FIRST_BACKOFF_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 2.0

# Ends of a watch after which it is renewed; any other status is the subscribers' answer.
_RENEWABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def _renewable(exc: grpc.aio.AioRpcError) -> bool:
    """A renewable end, or the stream reset under it: a metadata replica
    killed mid-watch makes Envoy reset the stream, which gRPC reports as
    INTERNAL "RST_STREAM" (measured: every subscriber used to get INTERNAL
    on a kill -9 of metadata). A reset is the transport's, not metadata's
    answer; INTERNAL from metadata itself still surfaces."""
    if exc.code() in _RENEWABLE:
        return True
    return exc.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in (exc.details() or "")

# The window of recent versions a feed keeps for its subscribers: bounded in
# count and in bytes (a version's user_data may be large).
WINDOW_MAX_VERSIONS = 64
WINDOW_MAX_BYTES = 8 * 1024 * 1024

# Versions a lagging subscriber asks metadata for at a time.
CATCH_UP_PAGE = 64

# Subscribers woken per turn of the event loop when a version arrives: the
# loop polls its sockets between slices, so health checks and other calls
# are served while 10,000 subscribers are sent the version, instead of
# waiting for all of them (a second or more on a busy machine).
WAKE_SLICE = 1000


class WatchCall(Protocol):
    """An internal watch in progress (grpc.aio.UnaryStreamCall): iterating
    it gives WatchVersionsReply messages, until it ends with a status;
    cancelling it makes the iteration raise asyncio.CancelledError."""

    def __aiter__(self) -> AsyncIterator[metadata_pb2.WatchVersionsReply]: ...

    def cancel(self) -> bool: ...


class VersionWatches(Protocol):
    """The metadata calls of VersionUpdate (upstream.MetadataClient)."""

    def watch_versions(self, model_id: str, after_version: int | None, model_incarnation: int) -> WatchCall: ...

    async def retrieve_version_infos(
        self, request: api.RetrieveVersionInfosRequest
    ) -> api.RetrieveVersionInfosReply: ...


def _encoded(info: api.ModelVersionInfo) -> bytes:
    return api.VersionUpdateReply(version_info=info).SerializeToString()


class ModelFeed:
    """One followed model: its internal watch and its recent versions.

    `position` is the last version number metadata sent (None before the
    first watch started); the window holds every version metadata sent
    numbered above `floor`, ascending, as (number, encoded reply).
    """

    def __init__(
        self,
        model_id: str,
        metadata: VersionWatches,
        *,
        sleep: Callable[[float], Awaitable[None]],
        window_max_versions: int = WINDOW_MAX_VERSIONS,
        window_max_bytes: int = WINDOW_MAX_BYTES,
    ) -> None:
        self.model_id = model_id
        self._metadata = metadata
        self._sleep = sleep
        self._window_max_versions = window_max_versions
        self._window_max_bytes = window_max_bytes
        self.incarnation = 0
        self.position: int | None = None
        # The position the first watch started after: where subscribers that
        # joined before it start.
        self.first_position: int | None = None
        self.floor = 0
        self._numbers: deque[int] = deque()
        self._messages: deque[bytes] = deque()
        self._window_bytes = 0
        # Why the feed ended (the model was deleted, the frontend drains...).
        self.error: RegistryError | None = None
        self.subscribers = 0
        # One future per subscriber waiting for a change.
        self._waiters: list[asyncio.Future[None]] = []
        self._call: WatchCall | None = None
        self.task = asyncio.get_running_loop().create_task(self._watch(), name=f"feed of {model_id}")

    # -- what subscribers read ---------------------------------------------

    async def changed(self) -> None:
        """Returns at the next new version, or when the feed ends."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter  # cancelling a subscriber cancels its own future only

    def _wake(self) -> None:
        """Wakes every waiting subscriber at once."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wake_in_slices(self) -> None:
        """Wakes every waiting subscriber, `WAKE_SLICE` per loop turn. One
        that waits again meanwhile waits for the next change."""
        waiters, self._waiters = self._waiters, []
        for start in range(0, len(waiters), WAKE_SLICE):
            for waiter in waiters[start : start + WAKE_SLICE]:
                if not waiter.done():
                    waiter.set_result(None)
            await asyncio.sleep(0)

    def start_cursor(self) -> int | None:
        """Where a new subscriber starts: just before the latest version
        the feed knows (so it is sent at once), or at the position when it
        knows none; None until the first watch started."""
        if self._numbers:
            return self._numbers[-1] - 1
        return self.position

    def after(self, cursor: int) -> tuple[int, bytes] | None:
        """The first version numbered above `cursor` in the window, None if
        there is none yet; LookupError if the window has moved past it.
        Once the feed has ended, what the window holds is still given, then
        the error that ended it is raised."""
        if self.position is None or cursor >= self.position:
            if self.error is not None:
                raise self.error
            return None
        if cursor < self.floor:
            if self.error is not None:
                raise self.error
            raise LookupError(cursor)
        index = bisect.bisect_right(self._numbers, cursor)
        return self._numbers[index], self._messages[index]

    # -- the internal watch ---------------------------------------------------

    def _append(self, info: api.ModelVersionInfo) -> None:
        message = _encoded(info)
        self._numbers.append(info.version_number)
        self._messages.append(message)
        self._window_bytes += len(message)
        while len(self._numbers) > 1 and (
            len(self._numbers) > self._window_max_versions or self._window_bytes > self._window_max_bytes
        ):
            self.floor = self._numbers.popleft()
            self._window_bytes -= len(self._messages.popleft())
        self.position = info.version_number

    def end(self, error: RegistryError) -> None:
        """Ends the feed: every subscriber raises `error`."""
        if self.error is None:
            self.error = error
        if self._call is not None:
            self._call.cancel()
        self.task.cancel()
        self._wake()

    async def _watch(self) -> None:
        backoff = _FIRST_BACKOFF_SECONDS
        while self.error is None:
            call = self._metadata.watch_versions(self.model_id, self.position, self.incarnation)
            self._call = call
            try:
                async for reply in call:
                    if reply.WhichOneof("event") == "started":
                        self.incarnation = reply.started.model_incarnation
                        backoff = _FIRST_BACKOFF_SECONDS
                        if self.position is None:
                            self.position = self.floor = reply.started.after_version
                            self.first_position = self.position
                            self._wake()
                    elif self.position is not None and reply.version_info.version_number > self.position:
                        self._append(reply.version_info)
                        await self._wake_in_slices()
            except grpc.aio.AioRpcError as exc:
                if not _renewable(exc):
                    self.end(upstream_error(METADATA, exc))
                    return
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # a planned renewal: resume at once
            finally:
                self._call = None
                call.cancel()
            # The watch broke (metadata restarting, replica gone): resume
            # after the last version received, backing off while it stays down.
            await self._sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)


@dataclass(eq=False)
class Followers:
    """The VersionUpdate subscribers of this frontend, grouped by model: one
    `ModelFeed` per model followed, alive while it has subscribers."""

    metadata: VersionWatches
    _: KW_ONLY
    limits: RequestLimits = RequestLimits()
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    window_max_versions: int = WINDOW_MAX_VERSIONS
    feeds: dict[str, ModelFeed] = field(default_factory=dict, init=False)
    _draining: bool = field(default=False, init=False)

    def _join(self, model_id: str) -> ModelFeed:
        feed = self.feeds.get(model_id)
        if feed is None or feed.error is not None:
            feed = ModelFeed(
                model_id, self.metadata, sleep=self.sleep, window_max_versions=self.window_max_versions
            )
            self.feeds[model_id] = feed
        feed.subscribers += 1
        return feed

    def _leave(self, feed: ModelFeed) -> None:
        feed.subscribers -= 1
        if feed.subscribers == 0:
            feed.end(Unavailable("nobody follows this model here any more"))
            if self.feeds.get(feed.model_id) is feed:
                del self.feeds[feed.model_id]

    async def follow_versions(self, model_id: str) -> AsyncIterator[bytes]:
        """The latest version, then every new one, for as long as the client
        listens: encoded VersionUpdateReply messages, none twice, none
        skipped, through renewals of the internal watch.

        Ends with NOT_FOUND when the model is deleted (or was deleted and
        re-created while metadata was unreachable), UNAVAILABLE when the
        frontend drains.
        """
        self.limits.check_model_id(model_id)
        if self._draining:
            raise _shutting_down()
        feed = self._join(model_id)
        try:
            cursor = feed.start_cursor()
            while cursor is None:  # the first watch has not started yet
                if feed.error is not None:
                    raise feed.error
                await feed.changed()
                cursor = feed.first_position
            while True:
                try:
                    found = feed.after(cursor)
                except LookupError:
                    async for number, message in self._catch_up(feed, cursor):
                        cursor = number
                        yield message
                    cursor = max(cursor, feed.floor)
                    continue
                if found is None:
                    await feed.changed()
                    continue
                cursor, message = found
                yield message
        finally:
            self._leave(feed)

    async def _catch_up(self, feed: ModelFeed, cursor: int) -> AsyncIterator[tuple[int, bytes]]:
        """The versions above `cursor` that the window no longer holds, from
        metadata, a page at a time, up to the window's floor."""
        while cursor < feed.floor:
            reply = await self.metadata.retrieve_version_infos(
                api.RetrieveVersionInfosRequest(
                    model_id=feed.model_id, versions_count=CATCH_UP_PAGE, version_handle=str(cursor + 1)
                )
            )
            if feed.error is not None:
                raise feed.error
            infos = [info for info in reply.version_infos if info.version_number > cursor]
            if not infos:
                return  # the rest is gone (evicted): the window is next
            for info in infos:
                if info.version_number > feed.floor:
                    return  # the window has it
                cursor = info.version_number
                yield cursor, _encoded(info)

    def stop_following(self) -> None:
        """Ends every VersionUpdate stream with UNAVAILABLE (the frontend is
        draining): subscribers reconnect at once, to another replica, instead
        of being cut when the grace period ends."""
        self._draining = True
        for feed in list(self.feeds.values()):
            feed.end(_shutting_down())
        self.feeds.clear()

    @property
    def subscriber_count(self) -> int:
        return sum(feed.subscribers for feed in self.feeds.values())


def _shutting_down() -> RegistryError:
    return Unavailable("this frontend is shutting down: subscribe again to continue")
