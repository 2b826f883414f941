"""The Cogment Directory registration (services/frontend/directory.py)
against the in-process fake DirectorySP (tests/integration/fake_directory.py),
over real gRPC on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY
from cogmentAPI import directory_pb2

from fake_directory import FakeDirectory
from services.frontend.config import DirectorySettings
from services.frontend.directory import (
    DirectoryClient,
    DirectoryRegistration,
    outbound_ipv4,
    public_endpoint_serving,
    registration_request,
)

SETTINGS = DirectorySettings(
    address="unused", token="t0k", registration_host=None, public_port=9000, public_tls=False, properties={"a": "b"}
)


def test_the_register_request_carries_what_cogment_expects():
    request = registration_request(SETTINGS, "10.1.2.3")
    assert request.endpoint == directory_pb2.ServiceEndpoint(protocol=directory_pb2.ServiceEndpoint.GRPC, host="10.1.2.3", port=9000)
    assert request.details.type == directory_pb2.MODEL_REGISTRY_SERVICE
    assert dict(request.details.properties) == {"a": "b", "__registration_source": "Self-Implicit", "__version": "0.1.0"}
    assert request.permanent is False
    tls = DirectorySettings(**{**SETTINGS.__dict__, "public_tls": True})
    assert registration_request(tls, "h").endpoint.protocol == directory_pb2.ServiceEndpoint.GRPC_SSL


async def test_the_public_endpoint_serves_once_the_stack_serves_and_envoy_routes_to_a_frontend():
    stack = asyncio.Event()
    answers = [False, False, True]  # Envoy's answers: no healthy upstream, twice
    asked, slept = [], []

    async def routed() -> bool:
        asked.append(stack.is_set())
        return answers.pop(0)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    waiting = asyncio.ensure_future(public_endpoint_serving(stack.wait(), routed, 0.5, sleep=sleep))
    await asyncio.sleep(0.05)
    assert not waiting.done() and asked == []  # Envoy is not asked before the stack serves
    stack.set()
    await asyncio.wait_for(waiting, 1)
    assert asked == [True, True, True] and slept == [0.5, 0.5]


def test_the_outbound_address_is_not_loopback_when_the_host_has_another():
    address = outbound_ipv4()
    socket.inet_aton(address)
    assert not address.startswith("127.") or not any(
        not info[4][0].startswith("127.") for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeDirectory]:
    directory = FakeDirectory(health_check=False)
    await directory.start()
    yield directory
    await directory.stop()


def registration_to(address: str, *, interval: float = 0.2, timeout: float = 1.0) -> tuple[DirectoryRegistration, grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(address)
    client = DirectoryClient(channel, token="t0k", call_timeout_seconds=timeout)
    registration = DirectoryRegistration(
        client,
        registration_request(SETTINGS, "127.0.0.1"),
        directory=address,
        check_interval_seconds=interval,
        deregister_timeout_seconds=timeout,
    )
    return registration, channel


async def serving_now() -> None:
    pass


async def listed_registration(fake, **options) -> tuple[DirectoryRegistration, grpc.aio.Channel]:
    """A registration started with the stack serving, once the directory lists it."""
    registration, channel = registration_to(fake.address, **options)
    registration.start(serving_now())
    await fake.wait_for(lambda f: f.listed(), 5)
    return registration, channel


def registered_gauge() -> float:
    return REGISTRY.get_sample_value("registry_directory_registered")


async def test_registers_once_serving_and_deregisters_at_stop(fake):
    serving = asyncio.Event()
    registration, channel = registration_to(fake.address)
    registration.start(serving.wait())
    await asyncio.sleep(0.3)
    assert fake.calls_of("Register") == []  # not before the stack serves
    serving.set()
    await fake.wait_for(lambda f: f.listed(), 5)
    (entry,) = fake.listed()
    assert entry.token == "t0k" and entry.request == registration_request(SETTINGS, "127.0.0.1")
    for _ in range(100):  # the fake lists the entry before our side has its reply
        if registration.registration is not None:
            break
        await asyncio.sleep(0.02)
    assert registered_gauge() == 1
    await registration.stop()
    assert fake.entries == {}
    assert registered_gauge() == 0
    (deregister,) = fake.calls_of("Deregister")
    assert deregister["request"] == {"service_id": str(entry.service_id), "secret": entry.secret}
    await channel.close()


async def test_registers_again_when_forgotten_or_hidden(fake):
    registration, channel = await listed_registration(fake)
    (first,) = fake.listed()
    fake.forget()
    await fake.wait_for(lambda f: f.listed(), 5)
    (second,) = fake.listed()
    assert second.service_id != first.service_id
    # Hidden (its health check failed): deregistered, then registered anew.
    second.healthy = False
    await fake.wait_for(lambda f: f.listed() and f.listed()[0].service_id != second.service_id, 5)
    assert fake.calls_of("Deregister")[-1]["request"]["service_id"] == str(second.service_id)
    assert len(fake.entries) == 1
    await registration.stop()
    await channel.close()


async def test_retries_a_directory_that_is_down_at_start_and_then_restarts(fake):
    port = fake.port
    await fake.stop()
    registration, channel = registration_to(f"127.0.0.1:{port}")
    registration.start(serving_now())
    await asyncio.sleep(1.0)  # a few refused attempts
    await fake.start(port)
    await fake.wait_for(lambda f: f.listed(), 15)
    await fake.restart()  # forgets everything
    await fake.wait_for(lambda f: f.listed(), 15)
    await registration.stop()
    await channel.close()


async def test_stopping_is_bounded_when_the_directory_does_not_answer(fake):
    registration, channel = await listed_registration(fake, timeout=1.0)
    # The directory's port now accepts connections and never answers.
    await fake.stop()
    silent = socket.create_server(("127.0.0.1", fake.port))
    try:
        started = time.monotonic()
        await registration.stop()
        assert time.monotonic() - started < 1.8
    finally:
        silent.close()
        await channel.close()


async def test_stopping_is_immediate_when_the_directory_is_gone(fake):
    registration, channel = await listed_registration(fake, timeout=1.0)
    await fake.stop()
    started = time.monotonic()
    await registration.stop()
    assert time.monotonic() - started < 1.2
    await channel.close()


def test_settings_use_cogment_2_names_and_refuse_what_cannot_work():
    from services.common.config import ConfigError
    from services.frontend.config import parse_directory_endpoint

    assert DirectorySettings.from_env({}) is None
    settings = DirectorySettings.from_env(
        {
            "COGMENT_DIRECTORY_ENDPOINT": "grpc://directory:9005",
            "COGMENT_DIRECTORY_AUTHENTICATION_TOKEN": "tok",
            "COGMENT_MODEL_REGISTRY_DIRECTORY_REGISTRATION_HOST": "registry.example",
            "COGMENT_MODEL_REGISTRY_DIRECTORY_REGISTRATION_PROPERTIES": "team=rl, stage=prod,",
            "COGMENT_MODEL_REGISTRY_PORT": "9100",
            "COGMENT_MODEL_REGISTRY_TLS_CERT_FILE": "/etc/registry/cert.pem",
        }
    )
    assert settings is not None
    assert (settings.address, settings.token, settings.registration_host, settings.public_port, settings.public_tls) == (
        "directory:9005", "tok", "registry.example", 9100, True,
    )
    assert settings.properties == {"team": "rl", "stage": "prod"}
    assert parse_directory_endpoint("10.0.0.5:9005") == "10.0.0.5:9005"
    for bad in ("http://directory:9005", "grpc://directory", "grpc://directory:70000", "grpc://directory:9005/x"):
        with pytest.raises(ConfigError, match="COGMENT_DIRECTORY_ENDPOINT"):
            parse_directory_endpoint(bad)
    with pytest.raises(ConfigError, match="REGISTRATION_PROPERTIES: 'oops' is not key=value"):
        DirectorySettings.from_env({"COGMENT_DIRECTORY_ENDPOINT": "d:1", "COGMENT_MODEL_REGISTRY_DIRECTORY_REGISTRATION_PROPERTIES": "a=b,oops"})
