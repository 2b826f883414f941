"""Work a call leaves behind after its reply.

Some clean-up does not concern the client and must not delay its answer:
deleting evicted blobs, deleting the blob of a refused commit, forgetting a
transient version whose data was lost. It runs as tasks spawned when the
reply is ready, and the frontend waits for them when it stops, so none is
cut half-way by the shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class BackgroundTasks:
    """The tasks spawned after replies, kept referenced until they end (the
    event loop holds only weak references to tasks) and drained at stop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Runs `coroutine` on its own, without waiting for it."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Returns once every task spawned so far has ended (their errors are
        theirs to log: none is raised here)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
