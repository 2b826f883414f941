"""VersionUpdate through Envoy: the latest version at once, then every new one."""

from __future__ import annotations

import queue
import threading
import time

import grpc
from cogmentAPI import model_registry_pb2 as api

from conftest import create_version, single_shape_only


def subscribe(registry, model_id):
    """Starts a subscription; returns (call, queue of version numbers)."""
    call = registry.VersionUpdate(api.VersionUpdateRequest(model_id=model_id))
    received: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            for reply in call:
                received.put(reply.version_info.version_number)
        except grpc.RpcError as error:
            received.put(error)

    threading.Thread(target=pump, daemon=True).start()
    return call, received


def take(received: queue.Queue, count: int, timeout: float = 10.0) -> list:
    return [received.get(timeout=timeout) for _ in range(count)]


def test_latest_at_once_then_every_new_version_in_order(registry, model_id):
    create_version(registry, model_id, b"1")
    create_version(registry, model_id, b"2")
    call, received = subscribe(registry, model_id)
    assert take(received, 1) == [2]
    for i in range(3, 23):
        create_version(registry, model_id, str(i).encode())
    assert take(received, 20) == list(range(3, 23))
    call.cancel()


def test_subscription_before_any_version_waits(registry, model_id):
    call, received = subscribe(registry, model_id)
    time.sleep(0.5)
    assert received.empty()
    create_version(registry, model_id, b"first", archived=True)
    assert take(received, 1) == [1]
    call.cancel()


def test_many_subscribers_all_see_a_burst(registry, model_id):
    subscribers = [subscribe(registry, model_id) for _ in range(5)]
    time.sleep(1.0)  # let every subscription reach the metadata service
    for i in range(1, 11):
        create_version(registry, model_id, str(i).encode())
    for call, received in subscribers:
        assert take(received, 10) == list(range(1, 11))
        call.cancel()


@single_shape_only
def test_idle_subscription_survives_a_pause(registry, model_id):
    """Envoy must not cut an idle stream (the original's default 15 s route
    timeout would): stay idle for 20 s, then receive."""
    call, received = subscribe(registry, model_id)
    time.sleep(20)
    create_version(registry, model_id, b"late")
    assert take(received, 1) == [1]
    call.cancel()


def test_unknown_model_is_not_found(registry):
    call, received = subscribe(registry, "no-such-model")
    (error,) = take(received, 1)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_deleted_model_ends_the_subscription(registry, model_id):
    call, received = subscribe(registry, model_id)
    time.sleep(0.5)
    registry.DeleteModel(api.DeleteModelRequest(model_id=model_id))
    (error,) = take(received, 1)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.NOT_FOUND
