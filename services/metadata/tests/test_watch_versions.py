"""WatchVersions through a real gRPC server: order, catch-up, no missed
wake-ups, cancellation and deletion."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from registry import metadata_pb2 as pb

from services.metadata.tests.helpers import new_blob_key


class Watch:
    """A WatchVersions call whose messages are pumped into a queue."""

    def __init__(self, service, model_id: str = "m", after_version: int | None = None, incarnation: int = 0) -> None:
        request = pb.WatchVersionsRequest(model_id=model_id, after_version=after_version, model_incarnation=incarnation)
        self.call = service.stub.WatchVersions(request)
        self.received: asyncio.Queue = asyncio.Queue()
        # The incarnations announced by `started` (the first message, once).
        self.started: list[int] = []
        self.started_after: list[int] = []
        self._pump = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for reply in self.call:
                if reply.WhichOneof("event") == "started":
                    assert not self.started, "started twice"
                    self.started.append(reply.started.model_incarnation)
                    self.started_after.append(reply.started.after_version)
                else:
                    assert self.started, "a version before started"
                    await self.received.put(reply.version_info)
        except grpc.aio.AioRpcError as error:
            await self.received.put(error)
        except asyncio.CancelledError:
            pass

    async def take_messages(self, count: int, timeout: float = 5.0) -> list:
        return [await asyncio.wait_for(self.received.get(), timeout) for _ in range(count)]

    async def take(self, count: int, timeout: float = 5.0) -> list:
        """The next `count` version numbers (or the error that ended the stream)."""
        messages = await self.take_messages(count, timeout)
        return [m if isinstance(m, grpc.aio.AioRpcError) else m.version_number for m in messages]

    async def error(self, timeout: float = 5.0) -> grpc.aio.AioRpcError:
        (item,) = await self.take(1, timeout)
        assert isinstance(item, grpc.aio.AioRpcError), f"expected the stream to fail, got version {item}"
        return item

    async def nothing_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.received.empty(), f"unexpected message {self.received.get_nowait()}"

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)


async def create_model(service, model_id: str = "m") -> None:
    await service.stub.UpsertModel(api.ModelInfo(model_id=model_id))


async def commit(service, model_id: str = "m", **fields) -> int:
    request = pb.CommitVersionRequest(
        version_info=api.ModelVersionInfo(model_id=model_id, data_hash="aGFzaA==", data_size=1, **fields),
        blob_key=new_blob_key(),
    )
    return (await service.stub.CommitVersion(request)).version_info.version_number


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_the_latest_version_first_then_every_new_one_in_order(service):
    await create_model(service)
    await commit(service)
    await commit(service)
    watch = Watch(service)
    assert await watch.take(1) == [2]
    for _ in range(10):
        await commit(service)
    assert await watch.take(10) == list(range(3, 13))
    await watch.nothing_for(0.1)
    await watch.close()


async def test_full_version_infos_are_sent(service):
    await create_model(service)
    watch = Watch(service)
    await wait_until(lambda: service.registry.hub.subscriber_count("m") == 1)
    await commit(service, archived=True, user_data={"k": "v"})
    (message,) = await watch.take_messages(1)
    assert (message.model_id, message.version_number, message.archived) == ("m", 1, True)
    assert dict(message.user_data) == {"k": "v"} and message.data_hash == "aGFzaA=="
    await watch.close()


async def test_a_model_without_versions_waits_for_the_first(service):
    await create_model(service)
    watch = Watch(service)
    await watch.nothing_for(0.3)
    await commit(service)
    assert await watch.take(1) == [1]
    await watch.close()


async def test_after_version_catches_up_then_follows(service):
    await create_model(service)
    for _ in range(5):
        await commit(service, archived=True)
    watch = Watch(service, after_version=2)
    assert await watch.take(3) == [3, 4, 5]
    await commit(service)
    assert await watch.take(1) == [6]
    await watch.close()


async def test_after_version_zero_is_every_version_not_the_latest(service):
    """A follower resuming having been sent nothing (a model with no version
    when it subscribed) must get every version committed since: 0 set is
    not 0 unset."""
    await create_model(service)
    for _ in range(3):
        await commit(service)
    watch = Watch(service, after_version=0)
    assert await watch.take(3) == [1, 2, 3]
    await watch.close()
    latest = Watch(service)
    assert await latest.take(1) == [3]
    assert latest.started_after == [2]
    await latest.nothing_for(0.1)
    await latest.close()


async def test_a_watch_announces_the_incarnation_it_follows_first(service):
    await create_model(service)
    watch = Watch(service)
    await wait_until(lambda: watch.started)
    incarnation = watch.started[0]
    await watch.close()
    resumed = Watch(service, after_version=0, incarnation=incarnation)
    await commit(service)
    assert await resumed.take(1) == [1]
    assert resumed.started == [incarnation]
    await resumed.close()


async def test_resuming_a_model_deleted_and_recreated_meanwhile_is_not_found(service):
    await create_model(service)
    await commit(service)
    watch = Watch(service)
    assert await watch.take(1) == [1]
    incarnation = watch.started[0]
    await watch.close()
    await service.stub.DeleteModel(pb.DeleteModelRequest(model_id="m"))
    await create_model(service)
    await commit(service)
    await commit(service)
    resumed = Watch(service, after_version=1, incarnation=incarnation)
    error = await resumed.error()
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "model 'm' was deleted")
    await service.stub.DeleteModel(pb.DeleteModelRequest(model_id="m"))
    gone = Watch(service, after_version=1, incarnation=incarnation)
    assert (await gone.error()).code() == grpc.StatusCode.NOT_FOUND


async def test_after_the_latest_version_only_new_ones_come(service):
    await create_model(service)
    await commit(service)
    watch = Watch(service, after_version=1)
    await watch.nothing_for(0.2)
    await commit(service)
    assert await watch.take(1) == [2]
    await watch.close()


async def test_subscribers_joining_during_a_burst_miss_nothing(service):
    """50 rapid commits while subscribers connect at random moments: each
    receives one unbroken run of numbers up to the last."""
    await create_model(service)
    total = 50
    rng = random.Random(7)

    async def committer() -> None:
        for _ in range(total):
            await commit(service)

    async def subscriber() -> list[int]:
        await asyncio.sleep(rng.uniform(0, 0.05))
        watch = Watch(service)
        received: list[int] = []
        try:
            while not received or received[-1] < total:
                received += await watch.take(1)
        finally:
            await watch.close()
        return received

    results = await asyncio.gather(committer(), *(subscriber() for _ in range(8)))
    for received in results[1:]:
        assert received == list(range(received[0], total + 1)), received


async def test_a_subscriber_that_does_not_read_neither_slows_writers_nor_loses_versions(service):
    await create_model(service)
    call = service.stub.WatchVersions(pb.WatchVersionsRequest(model_id="m"))
    await wait_until(lambda: service.registry.hub.subscriber_count("m") == 1)
    started = asyncio.get_running_loop().time()
    for _ in range(200):  # nobody reads the stream meanwhile
        await commit(service, archived=True)
    assert asyncio.get_running_loop().time() - started < 20
    assert (await asyncio.wait_for(call.read(), 5)).WhichOneof("event") == "started"
    received = [(await asyncio.wait_for(call.read(), 5)).version_info.version_number for _ in range(200)]
    assert received == list(range(1, 201))
    call.cancel()


async def test_a_cancelled_subscriber_is_removed_at_once(service):
    await create_model(service)
    await commit(service)
    watches = [Watch(service) for _ in range(3)]
    for watch in watches:
        assert await watch.take(1) == [1]
    assert service.registry.hub.subscriber_count("m") == 3
    await watches[0].close()
    await wait_until(lambda: service.registry.hub.subscriber_count("m") == 2, timeout=2)
    for watch in watches[1:]:
        await watch.close()
    await wait_until(lambda: service.registry.hub.subscriber_count() == 0, timeout=2)


async def test_deleting_the_model_ends_the_stream_with_not_found(service):
    await create_model(service)
    await commit(service)
    watch = Watch(service)
    assert await watch.take(1) == [1]
    await service.stub.DeleteModel(pb.DeleteModelRequest(model_id="m"))
    error = await watch.error()
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "model 'm' was deleted")
    await wait_until(lambda: service.registry.hub.subscriber_count() == 0)


@pytest.mark.parametrize(
    "model_id,code,message",
    [
        ("ghost", grpc.StatusCode.NOT_FOUND, "model 'ghost' not found"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "model_id must not be empty"),
    ],
)
async def test_watching_what_cannot_be_watched_fails(service, model_id, code, message):
    watch = Watch(service, model_id)
    error = await watch.error()
    assert (error.code(), error.details()) == (code, message)
    await wait_until(lambda: service.registry.hub.subscriber_count() == 0)
