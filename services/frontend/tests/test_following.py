"""VersionUpdate (`Followers`) over scripted internal watches: one watch per
model shared by its subscribers, renewed without gaps, bounded memory, and
slow subscribers that catch up from metadata."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api

from services.common.errors import InvalidArgument, RegistryError, Unavailable
from services.frontend.following import Followers
from services.frontend.tests.fakes import END, FakeMetadata, FakeWatch, rpc_error, started, version

DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Subscriptions:
    def __init__(self, window: int = 64) -> None:
        self.metadata = FakeMetadata("model")
        self.pauses: list[float] = []
        self.followers = Followers(self.metadata, sleep=self._sleep, window_max_versions=window)

    async def _sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await asyncio.sleep(0)

    async def take(self, count: int) -> list[int]:
        """The first `count` version numbers a new subscriber receives."""
        stream = self.followers.follow_versions("model")
        try:
            return [number(await asyncio.wait_for(anext(stream), timeout=5)) for _ in range(count)]
        finally:
            await stream.aclose()


def number(message: bytes) -> int:
    return api.VersionUpdateReply.FromString(message).version_info.version_number


@pytest.fixture
def subscriptions() -> Subscriptions:
    return Subscriptions()


async def wait_until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "never happened"
        await asyncio.sleep(0.001)


def subscribe(subscriptions: Subscriptions, model_id: str = "model") -> tuple[asyncio.Task, list[int]]:
    received: list[int] = []

    async def listen() -> None:
        async for message in subscriptions.followers.follow_versions(model_id):
            received.append(number(message))

    return asyncio.create_task(listen()), received


async def test_the_versions_of_one_watch_are_sent_in_order(subscriptions):
    subscriptions.metadata.script_watches(FakeWatch(started(0), version(1), version(2), version(3)))
    assert await subscriptions.take(3) == [1, 2, 3]
    assert subscriptions.metadata.watches == [("model", None, 0)]


async def test_a_watch_at_its_deadline_is_renewed_at_once_after_the_last_version_received(subscriptions):
    subscriptions.metadata.script_watches(
        FakeWatch(started(0), version(1), version(2), DEADLINE),
        # The renewed watch starts with what was already sent: not sent twice.
        FakeWatch(started(2), version(2), version(3)),
    )
    assert await subscriptions.take(3) == [1, 2, 3]
    assert subscriptions.metadata.watches == [("model", None, 0), ("model", 2, 7)]
    assert subscriptions.pauses == []


async def test_a_renewal_of_a_model_that_had_no_version_asks_for_everything_after_0(subscriptions):
    """Issue 16: "nothing sent yet" (after_version unset) is not "the model
    had no version" (after_version 0): versions 1, 2, 3 committed while the
    watch was down all arrive, not only 3."""
    subscriptions.metadata.script_watches(
        FakeWatch(started(0), UNAVAILABLE),
        FakeWatch(started(0), version(1), version(2), version(3)),
    )
    assert await subscriptions.take(3) == [1, 2, 3]
    assert subscriptions.metadata.watches == [("model", None, 0), ("model", 0, 7)]


async def test_a_watch_broken_before_it_started_is_renewed_from_the_latest(subscriptions):
    subscriptions.metadata.script_watches(FakeWatch(UNAVAILABLE), FakeWatch(started(4), version(5)))
    assert await subscriptions.take(1) == [5]
    assert subscriptions.metadata.watches == [("model", None, 0), ("model", None, 0)]


async def test_an_unavailable_watch_is_renewed_after_a_growing_pause(subscriptions):
    subscriptions.metadata.script_watches(
        FakeWatch(started(0), version(1), UNAVAILABLE),
        *(FakeWatch(UNAVAILABLE) for _ in range(7)),
        FakeWatch(started(1), version(2), UNAVAILABLE),
        FakeWatch(started(2), version(3)),
    )
    assert await subscriptions.take(3) == [1, 2, 3]
    assert subscriptions.pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 0.05]
    assert subscriptions.metadata.watches == [("model", None, 0)] + [("model", 1, 7)] * 8 + [("model", 2, 7)]


@pytest.mark.parametrize("end", [grpc.StatusCode.CANCELLED, END])
async def test_a_watch_metadata_cancelled_or_ended_is_renewed_after_a_pause(subscriptions, end):
    subscriptions.metadata.script_watches(FakeWatch(started(0), version(1), end), FakeWatch(started(1), version(2)))
    assert await subscriptions.take(2) == [1, 2]
    assert subscriptions.pauses == [0.05]
    assert subscriptions.metadata.watches == [("model", None, 0), ("model", 1, 7)]


async def test_a_watch_reset_under_it_is_renewed(subscriptions):
    """kill -9 of metadata: Envoy resets the stream, gRPC says INTERNAL RST_STREAM."""
    reset = rpc_error(grpc.StatusCode.INTERNAL, "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))")
    subscriptions.metadata.script_watches(FakeWatch(started(0), version(1), reset), FakeWatch(started(1), version(2)))
    assert await subscriptions.take(2) == [1, 2]
    assert subscriptions.metadata.watches == [("model", None, 0), ("model", 1, 7)]


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL, grpc.StatusCode.PERMISSION_DENIED])
async def test_other_ends_of_the_watch_surface(subscriptions, code):
    watch = FakeWatch(started(0), version(1), code)
    subscriptions.metadata.script_watches(watch)
    stream = subscriptions.followers.follow_versions("model")
    assert number(await anext(stream)) == 1
    with pytest.raises(RegistryError) as error:
        await anext(stream)
    assert error.value.code == (code if code == grpc.StatusCode.NOT_FOUND else grpc.StatusCode.INTERNAL)
    assert watch.cancelled and len(subscriptions.metadata.watches) == 1
    await stream.aclose()
    assert subscriptions.followers.feeds == {}


async def test_an_empty_or_oversized_model_id_is_refused(subscriptions):
    with pytest.raises(InvalidArgument, match="model_id must not be empty"):
        await anext(subscriptions.followers.follow_versions(""))
    with pytest.raises(InvalidArgument, match="COGMENT_MODEL_REGISTRY_MODEL_ID_MAX_BYTES"):
        await anext(subscriptions.followers.follow_versions("m" * 1000))
    assert subscriptions.metadata.watches == []


# -- sharing ------------------------------------------------------------------


async def test_subscribers_of_one_model_share_one_watch(subscriptions):
    watch = FakeWatch(started(2), version(3))
    subscriptions.metadata.script_watches(watch)
    listeners = [subscribe(subscriptions) for _ in range(50)]
    await wait_until(lambda: all(received == [3] for _, received in listeners))
    # A subscriber joining later gets the latest at once, then what follows.
    late = subscribe(subscriptions)
    await wait_until(lambda: late[1] == [3])
    watch.feed(version(4))
    await wait_until(lambda: all(received == [3, 4] for _, received in [*listeners, late]))
    assert len(subscriptions.metadata.watches) == 1
    for task, _ in [*listeners, late]:
        task.cancel()
    await asyncio.gather(*(task for task, _ in [*listeners, late]), return_exceptions=True)
    # The last one to leave ends the watch.
    assert watch.cancelled and subscriptions.followers.feeds == {}


async def test_each_model_has_its_own_watch(subscriptions):
    subscriptions.metadata.models["other"] = api.ModelInfo(model_id="other")
    first, second = subscribe(subscriptions), subscribe(subscriptions, "other")
    await wait_until(lambda: len(subscriptions.metadata.watches) == 2)
    assert {w[0] for w in subscriptions.metadata.watches} == {"model", "other"}
    for task, _ in (first, second):
        task.cancel()
    await asyncio.gather(first[0], second[0], return_exceptions=True)


async def test_a_subscriber_behind_the_window_catches_up_from_metadata():
    """A subscriber that did not read while more versions than the window
    holds were committed gets every one of them, in order: those the window
    dropped from metadata, the rest from the window."""
    subscriptions = Subscriptions(window=4)
    for n in range(1, 21):
        subscriptions.metadata.add_version(f"key-{n}", b"x", archived=True)
    watch = FakeWatch(started(0), version(1))
    subscriptions.metadata.script_watches(watch)
    slow = subscriptions.followers.follow_versions("model")
    assert number(await anext(slow)) == 1  # then it stops reading
    for n in range(2, 21):
        watch.feed(version(n))
    fast = subscribe(subscriptions)
    await wait_until(lambda: fast[1] and fast[1][-1] == 20)
    feed = subscriptions.followers.feeds["model"]
    assert feed.floor == 16 and len(feed._numbers) == 4
    assert [number(await anext(slow)) for _ in range(19)] == list(range(2, 21))
    assert subscriptions.metadata.version_info_requests[0].version_handle == "2"
    await slow.aclose()
    fast[0].cancel()
    await asyncio.gather(fast[0], return_exceptions=True)


# -- leaving and draining ----------------------------------------------------


async def test_draining_ends_every_stream_with_unavailable(subscriptions):
    watch = FakeWatch(started(0), version(1))
    subscriptions.metadata.script_watches(watch)
    listeners = [subscribe(subscriptions) for _ in range(2)]
    await wait_until(lambda: all(received == [1] for _, received in listeners))
    subscriptions.followers.stop_following()
    for task, _ in listeners:
        with pytest.raises(Unavailable, match="shutting down: subscribe again"):
            await asyncio.wait_for(task, timeout=5)
    assert watch.cancelled


async def test_a_subscription_after_draining_is_unavailable_at_once(subscriptions):
    subscriptions.followers.stop_following()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(anext(subscriptions.followers.follow_versions("model")), timeout=5)
    assert subscriptions.metadata.watches == []


async def test_a_client_that_leaves_ends_its_watch(subscriptions):
    watch = FakeWatch(started(0), version(1))
    subscriptions.metadata.script_watches(watch)
    task, received = subscribe(subscriptions)
    await wait_until(lambda: received == [1])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watch.cancelled


async def test_a_client_that_leaves_while_the_frontend_drains_is_not_told_unavailable(subscriptions):
    watch = FakeWatch(started(0), version(1))
    subscriptions.metadata.script_watches(watch)
    task, received = subscribe(subscriptions)
    await wait_until(lambda: received == [1])
    subscriptions.followers.stop_following()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watch.cancelled
