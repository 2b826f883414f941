"""VersionUpdate (`Followers`) over scripted internal watches."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.errors import InvalidArgument, RegistryError, Unavailable
from services.frontend.following import Followers
from services.frontend.tests.fakes import END, FakeMetadata, FakeWatch, version

DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Subscriptions:
    def __init__(self) -> None:
        self.metadata = FakeMetadata("model")
        self.pauses: list[float] = []
        self.followers = Followers(self.metadata, sleep=self._sleep)

    async def _sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await asyncio.sleep(0)

    async def take(self, count: int) -> list[int]:
        """The first `count` version numbers a new subscriber receives."""
        stream = self.followers.follow_versions("model")
        try:
            return [(await asyncio.wait_for(anext(stream), timeout=5)).version_number for _ in range(count)]
        finally:
            await stream.aclose()


@pytest.fixture
def subscriptions() -> Subscriptions:
    return Subscriptions()


async def wait_until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "never happened"
        await asyncio.sleep(0.001)


async def test_the_versions_of_one_watch_are_sent_in_order(subscriptions):
    subscriptions.metadata.script_watches(FakeWatch(version(1), version(2), version(3)))
    assert await subscriptions.take(3) == [1, 2, 3]
    assert subscriptions.metadata.watches == [("model", 0)]


async def test_a_watch_at_its_deadline_is_renewed_at_once_from_the_last_version_sent(subscriptions):
    subscriptions.metadata.script_watches(
        FakeWatch(version(1), version(2), DEADLINE),
        # The renewed watch starts with what was already sent: not sent twice.
        FakeWatch(version(2), version(3)),
    )
    assert await subscriptions.take(3) == [1, 2, 3]
    assert subscriptions.metadata.watches == [("model", 0), ("model", 2)]
    assert subscriptions.pauses == []


async def test_an_unavailable_watch_is_renewed_after_a_growing_pause(subscriptions):
    subscriptions.metadata.script_watches(
        FakeWatch(version(1), UNAVAILABLE),
        *(FakeWatch(UNAVAILABLE) for _ in range(7)),
        FakeWatch(version(2), UNAVAILABLE),
        FakeWatch(version(3)),
    )
    assert await subscriptions.take(3) == [1, 2, 3]
    assert subscriptions.pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 0.05]
    assert subscriptions.metadata.watches == [("model", 0)] + [("model", 1)] * 8 + [("model", 2)]


@pytest.mark.parametrize("end", [grpc.StatusCode.CANCELLED, END])
async def test_a_watch_metadata_cancelled_or_ended_is_renewed_after_a_pause(subscriptions, end):
    subscriptions.metadata.script_watches(FakeWatch(version(1), end), FakeWatch(version(2)))
    assert await subscriptions.take(2) == [1, 2]
    assert subscriptions.pauses == [0.05]
    assert subscriptions.metadata.watches == [("model", 0), ("model", 1)]


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL, grpc.StatusCode.PERMISSION_DENIED])
async def test_other_ends_of_the_watch_surface(subscriptions, code):
    watch = FakeWatch(version(1), code)
    subscriptions.metadata.script_watches(watch)
    stream = subscriptions.followers.follow_versions("model")
    assert (await anext(stream)).version_number == 1
    with pytest.raises(RegistryError) as error:
        await anext(stream)
    assert error.value.code == (code if code == grpc.StatusCode.NOT_FOUND else grpc.StatusCode.INTERNAL)
    assert watch.cancelled and len(subscriptions.metadata.watches) == 1


async def test_an_empty_model_id_is_refused(subscriptions):
    with pytest.raises(InvalidArgument, match="model_id must not be empty"):
        await anext(subscriptions.followers.follow_versions(""))
    assert subscriptions.metadata.watches == []


# -- leaving and draining ----------------------------------------------------


def subscribe(subscriptions: Subscriptions) -> tuple[asyncio.Task, list[int]]:
    received: list[int] = []

    async def listen() -> None:
        async for info in subscriptions.followers.follow_versions("model"):
            received.append(info.version_number)

    return asyncio.create_task(listen()), received


async def test_draining_ends_every_stream_with_unavailable(subscriptions):
    watches = [FakeWatch(version(1)), FakeWatch(version(1))]
    subscriptions.metadata.script_watches(*watches)
    listeners = [subscribe(subscriptions) for _ in watches]
    await wait_until(lambda: all(received == [1] for _, received in listeners))
    subscriptions.followers.stop_following()
    for task, _ in listeners:
        with pytest.raises(Unavailable, match="shutting down: subscribe again"):
            await asyncio.wait_for(task, timeout=5)
    assert all(watch.cancelled for watch in watches)


async def test_a_subscription_after_draining_is_unavailable_at_once(subscriptions):
    subscriptions.followers.stop_following()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(anext(subscriptions.followers.follow_versions("model")), timeout=5)
    assert subscriptions.metadata.watches == []


async def test_a_client_that_leaves_ends_its_watch(subscriptions):
    watch = FakeWatch(version(1))
    subscriptions.metadata.script_watches(watch)
    task, received = subscribe(subscriptions)
    await wait_until(lambda: received == [1])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watch.cancelled


async def test_a_client_that_leaves_while_the_frontend_drains_is_not_told_unavailable(subscriptions):
    watch = FakeWatch(version(1))
    subscriptions.metadata.script_watches(watch)
    task, received = subscribe(subscriptions)
    await wait_until(lambda: received == [1])
    subscriptions.followers.stop_following()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watch.cancelled
