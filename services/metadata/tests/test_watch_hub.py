"""The wake-up hub on its own."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import NotFound, Unavailable
from services.metadata.watch import Subscription, VersionHub


async def assert_not_woken(subscription: Subscription) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(subscription.wait(), 0.05)


async def test_a_commit_wakes_only_that_models_subscribers():
    hub = VersionHub()
    with hub.subscribe("a") as a, hub.subscribe("b") as b:
        hub.version_committed("a")
        await asyncio.wait_for(a.wait(), 1)
        await assert_not_woken(b)


async def test_a_wake_up_before_wait_is_not_lost_but_clear_forgets_it():
    hub = VersionHub()
    with hub.subscribe("a") as subscription:
        hub.version_committed("a")
        hub.version_committed("a")  # coalesced: O(1) state, not a queue
        await asyncio.wait_for(subscription.wait(), 1)
        subscription.clear()
        await assert_not_woken(subscription)


async def test_deletion_ends_current_subscribers_only():
    hub = VersionHub()
    with hub.subscribe("a") as old:
        hub.model_deleted("a")
        with pytest.raises(NotFound, match="model 'a' was deleted"):
            await asyncio.wait_for(old.wait(), 1)
        with hub.subscribe("a") as new:  # the model re-created
            await assert_not_woken(new)
            assert hub.subscriber_count("a") == 1
    assert hub.subscriber_count() == 0


async def test_subscribers_are_removed_when_their_task_is_cancelled():
    hub = VersionHub()

    async def watcher() -> None:
        with hub.subscribe("a") as subscription:
            await subscription.wait()

    task = asyncio.create_task(watcher())
    await asyncio.sleep(0)
    assert hub.subscriber_count("a") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.subscriber_count() == 0


async def test_close_ends_present_and_future_subscribers():
    hub = VersionHub()
    with hub.subscribe("a") as present:
        hub.close(Unavailable("bye"))
        with pytest.raises(Unavailable):
            await present.wait()
    with hub.subscribe("b") as future:
        with pytest.raises(Unavailable):
            await future.wait()


async def test_wake_all_wakes_every_subscriber_of_every_model():
    hub = VersionHub()
    with hub.subscribe("a") as a, hub.subscribe("b") as b, hub.subscribe("b") as b2:
        hub.wake_all()
        for subscription in (a, b, b2):
            await asyncio.wait_for(subscription.wait(), 1)
