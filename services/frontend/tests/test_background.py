"""`BackgroundTasks`: work spawned after a reply, drained at stop."""

from __future__ import annotations

import asyncio

from services.frontend.background import BackgroundTasks


async def test_drain_waits_for_every_spawned_task_and_raises_none_of_their_errors():
    background = BackgroundTasks()
    release = asyncio.Event()
    done: list[str] = []

    async def slow() -> None:
        await release.wait()
        done.append("slow")

    async def failing() -> None:
        raise RuntimeError("lost")

    background.spawn(slow())
    background.spawn(failing())
    drained = asyncio.create_task(background.drain())
    await asyncio.sleep(0.01)
    assert not drained.done()
    release.set()
    await asyncio.wait_for(drained, timeout=5)
    assert done == ["slow"]


async def test_drain_with_nothing_spawned_returns_at_once():
    await asyncio.wait_for(BackgroundTasks().drain(), timeout=1)
