"""Wake-ups for version watchers.

The hub holds, per subscriber, one flag (an `asyncio.Event`) and no queue:
a woken watcher reads "versions after the last one I sent" from the store
itself. However far behind a subscriber falls, the hub's memory for it stays
constant and writers never wait for it (docs/design.md, section 4).

Everything here runs on the event loop's thread; the registry hands
notifications over from the store thread with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from services.common import metrics
from services.common.errors import RegistryError
from services.metadata.errors import model_deleted


class Subscription:
    """One watcher of one model: a wake-up flag, and why it must end (if it must)."""

    __slots__ = ("model_id", "_event", "_ended")

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self._event = asyncio.Event()
        self._ended: RegistryError | None = None

    def clear(self) -> None:
        """Forgets past wake-ups; call right before reading the store, so a
        commit after the read still wakes the next `wait`."""
        self._event.clear()

    async def wait(self) -> None:
        """Returns once something was committed since the last `clear`;
        raises the error that ended the subscription (model deleted,
        shutdown)."""
        await self._event.wait()
        self.raise_if_ended()

    def raise_if_ended(self) -> None:
        if self._ended is not None:
            raise self._ended

    def _wake(self) -> None:
        self._event.set()

    def _end(self, error: RegistryError) -> None:
        self._ended = error
        self._event.set()


class VersionHub:
    """Subscribers per model, woken on each commit, ended on deletion."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}
        self._closed: RegistryError | None = None

    @contextmanager
    def subscribe(self, model_id: str) -> Iterator[Subscription]:
        """Registers a subscriber for the duration of the `with` block; it is
        removed on exit, including when the watcher's task is cancelled."""
        subscription = Subscription(model_id)
        if self._closed is not None:
            subscription._end(self._closed)
        self._subscribers.setdefault(model_id, set()).add(subscription)
        watches = metrics.metadata().watches
        watches.inc()
        try:
            yield subscription
        finally:
            watches.dec()
            subscribers = self._subscribers.get(model_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[model_id]

    def version_committed(self, model_id: str) -> None:
        """Wakes the watchers of `model_id`: a version was committed (call
        after the transaction committed, in commit order)."""
        for subscription in self._subscribers.get(model_id, ()):
            subscription._wake()

    def wake_all(self) -> None:
        """Wakes every watcher of every model: changes may have been missed
        (another replica's notifications were lost), so all re-read."""
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription._wake()

    def model_deleted(self, model_id: str) -> None:
        """Ends every current watcher of `model_id` with NOT_FOUND; watchers
        of a model re-created later under the same id are not affected."""
        for subscription in self._subscribers.pop(model_id, ()):
            subscription._end(model_deleted(model_id))

    def close(self, error: RegistryError) -> None:
        """Ends every watcher, now and later, with `error`."""
        self._closed = error
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription._end(error)

    def subscriber_count(self, model_id: str | None = None) -> int:
        """Current subscribers of `model_id`, or of every model."""
        if model_id is not None:
            return len(self._subscribers.get(model_id, ()))
        return sum(len(subscribers) for subscribers in self._subscribers.values())
