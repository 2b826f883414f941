"""Keeping a server's health statuses in step with a periodic check."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health

from services.common.grpc_server import NOT_SERVING, SERVING

log = logging.getLogger("registry.health")

# A check answers None when all is well, else why not (for the log).
Check = Callable[[], Awaitable[str | None]]


class HealthFollower:
    """Runs `check` every `interval` seconds and publishes SERVING or
    NOT_SERVING under `services` whenever the answer changes, logging each
    change with `what` was checked. Starts from `serving`; after
    `enter_graceful_shutdown` the servicer ignores what it publishes."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        services: Sequence[str],
        check: Check,
        interval: float,
        *,
        what: str,
        serving: bool,
    ) -> None:
        self._servicer = servicer
        self._services = tuple(services)
        self._check = check
        self._interval = interval
        self._what = what
        self._serving = serving
        self._task: asyncio.Task[None] | None = None
        self._became_serving = asyncio.Event()
        if serving:
            self._became_serving.set()

    async def _follow(self) -> None:
        while True:
            try:
                problem = await self._check()
            except Exception as exc:  # noqa: BLE001 - a failing check means "not serving"
                problem = str(exc) or type(exc).__name__
            if (problem is None) != self._serving:
                self._serving = problem is None
                if self._serving:
                    self._became_serving.set()
                if self._serving:
                    log.info("%s: SERVING again", self._what)
                else:
                    log.error("%s: NOT_SERVING (%s)", self._what, problem)
                for service in self._services:
                    await self._servicer.set(service, SERVING if self._serving else NOT_SERVING)
            await asyncio.sleep(self._interval)

    @property
    def serving(self) -> bool:
        """What it last published: whether the check passed."""
        return self._serving

    async def wait_serving(self) -> None:
        """Returns once the check has passed (at least once)."""
        await self._became_serving.wait()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name=f"health of {self._what}")

    def cancel(self) -> None:
        """Stops following at once (it publishes nothing more)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """`cancel`, then waits until the follower has ended."""
        self.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
