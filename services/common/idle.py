"""Ending transfers whose other end went quiet.

A stalled upload holds a temp file or memory; a download whose reader
stopped reading holds a file handle or chunks of memory, and its handler
sits in gRPC flow control forever. Both are ended after an idle timeout
(README, "Limits"), with a status that says so:

- `receive_within`: each message of a received stream must arrive within
  the timeout;
- `SendWatchdog`: each message of a sent stream must be taken by gRPC (the
  reader made room for it) within the timeout; otherwise the handler's task
  is cancelled from outside, since the handler itself is stuck in the send.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from services.common.errors import DeadlineExceeded

T = TypeVar("T")


async def receive_within(
    messages: AsyncIterator[T], seconds: float, idle_error: Callable[[], DeadlineExceeded]
) -> AsyncIterator[T]:
    """`messages`, raising `idle_error()` when the next one takes longer
    than `seconds` to arrive."""
    iterator = aiter(messages)
    while True:
        try:
            async with asyncio.timeout(seconds):
                message = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise idle_error() from None
        yield message


class SendWatchdog:
    """Ends a server stream whose reader stopped reading: when one message
    waits longer than `seconds` to be taken by gRPC (flow control), the
    call is ended with `idle_error()` and the handler's task is cancelled,
    which closes the generators it iterates and so releases what they hold.

    The handler is stuck in gRPC's send at that point, so both happen from
    outside it: the status is queued behind the data the reader has not
    read (it sees the status when it reads again), and the cancellation
    unwinds the handler at once. Use `async for item in watchdog.guard(items):
    yield item`: only the time gRPC takes to accept each item is counted,
    not the time spent producing it.
    """

    def __init__(
        self, context: grpc.aio.ServicerContext, seconds: float, idle_error: Callable[[], DeadlineExceeded]
    ) -> None:
        self._context = context
        self._seconds = seconds
        self._idle_error = idle_error
        self._ending: asyncio.Task | None = None

    def _fire(self, task: asyncio.Task) -> None:
        self._ending = asyncio.ensure_future(self._end_call())
        # After the abort has started: a cancelled handler sends no status itself.
        asyncio.get_running_loop().call_soon(task.cancel)

    async def _end_call(self) -> None:
        error = self._idle_error()
        try:
            await self._context.abort(error.code, error.message)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            pass  # the call ended meanwhile, or this is its status: nothing to do

    async def guard(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        async for item in items:
            timer = loop.call_later(self._seconds, self._fire, task)
            try:
                yield item
            finally:
                timer.cancel()
