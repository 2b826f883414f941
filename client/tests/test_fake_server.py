"""Behaviour a real stack cannot be made to show on demand, against a scripted
fake server: subscriptions that end or fail, corrupt data, call metadata."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from contextlib import aclosing

import grpc
import pytest

from model_registry_client import AsyncRegistryClient, DataIntegrityError, NotFoundError, RegistryClient, UnavailableError
from model_registry_client._proto import pb

DATA = os.urandom(10_000)
INFO = pb.ModelVersionInfo(
    model_id="m",
    version_number=4,
    archived=True,
    data_size=len(DATA),
    data_hash=base64.b64encode(hashlib.sha256(DATA).digest()).decode(),
)

# Stream ends, UNAVAILABLE, INTERNAL: all resumed; repeated and older numbers
# are skipped; NOT_FOUND (the model was deleted) ends the iteration.
SUBSCRIPTIONS = [
    ([1, 2], None),
    ([2, 3], grpc.StatusCode.UNAVAILABLE),
    ([1, 3], grpc.StatusCode.INTERNAL),
    ([3, 2, 5, 4, 6], None),
    ([6], grpc.StatusCode.NOT_FOUND),
]


def test_follow_resumes_and_never_repeats(fake):
    servicer, address = fake
    servicer.subscriptions = list(SUBSCRIPTIONS)
    with RegistryClient(address) as client:
        numbers = []
        with pytest.raises(NotFoundError):
            for info in client.follow("m", initial_backoff=0.01, max_backoff=0.05):
                numbers.append(info.version_number)
    assert numbers == [1, 2, 3, 5, 6]
    assert [name for name, _ in servicer.calls] == ["VersionUpdate"] * 5


async def test_async_follow_resumes_and_never_repeats(fake):
    servicer, address = fake
    servicer.subscriptions = list(SUBSCRIPTIONS)
    async with AsyncRegistryClient(address) as client:
        numbers = []
        with pytest.raises(NotFoundError):
            async for info in client.follow("m", initial_backoff=0.01, max_backoff=0.05):
                numbers.append(info.version_number)
    assert numbers == [1, 2, 3, 5, 6]


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT])
def test_follow_gives_up_on_other_errors(fake, code):
    servicer, address = fake
    servicer.subscriptions = [([1], code)]
    with RegistryClient(address) as client, pytest.raises(Exception) as error:
        list(client.follow("m", initial_backoff=0.01))
    assert error.value.code == code


def test_closing_follow_unsubscribes(fake):
    servicer, address = fake
    servicer.subscriptions = [([1, 2, 3], None)]
    with RegistryClient(address) as client:
        follow = client.follow("m")
        assert next(follow).version_number == 1
        follow.close()
    assert len(servicer.calls) == 1


async def test_async_follow_closed_with_aclosing(fake):
    servicer, address = fake
    servicer.subscriptions = [([1, 2, 3], None)]
    async with AsyncRegistryClient(address) as client:
        async with aclosing(client.follow("m")) as follow:
            async for info in follow:
                assert info.version_number == 1
                break


def corrupt_cases():
    flipped = bytearray(DATA)
    flipped[5000] ^= 1
    return [
        pytest.param(bytes(flipped), None, "SHA-256", id="flipped-bit"),
        pytest.param(DATA[:-10], None, "received 9990 bytes", id="short"),
        pytest.param(DATA + b"x", None, "more than", id="long"),
        pytest.param(DATA, grpc.StatusCode.DATA_LOSS, "scripted", id="data-loss"),
    ]


@pytest.mark.parametrize(("data", "error", "message"), corrupt_cases())
def test_pull_refuses_bad_data_and_leaves_no_file(fake, tmp_path, data, error, message):
    servicer, address = fake
    servicer.version, servicer.data, servicer.data_error = INFO, data, error
    with RegistryClient(address) as client:
        with pytest.raises(DataIntegrityError, match=message):
            client.pull("m", -1)
        with pytest.raises(DataIntegrityError, match=message):
            client.pull("m", -1, dest=tmp_path / "out.bin")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("data", "error", "message"), corrupt_cases())
async def test_async_pull_refuses_bad_data_and_leaves_no_file(fake, tmp_path, data, error, message):
    servicer, address = fake
    servicer.version, servicer.data, servicer.data_error = INFO, data, error
    async with AsyncRegistryClient(address) as client:
        with pytest.raises(DataIntegrityError, match=message):
            await client.pull("m", -1)
        with pytest.raises(DataIntegrityError, match=message):
            await client.pull("m", -1, dest=tmp_path / "out.bin")
    assert os.listdir(tmp_path) == []


def test_pull_asks_for_the_resolved_number_and_shows_progress(fake):
    servicer, address = fake
    servicer.version, servicer.data = INFO, DATA
    progress = []
    with RegistryClient(address) as client:
        assert client.pull("m", -1, progress=lambda done, total: progress.append((done, total))) == DATA
    assert servicer.data_requests == [4]  # not -1: a version created meanwhile cannot slip in
    assert progress[0] == (0, len(DATA)) and progress[-1] == (len(DATA), len(DATA))
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


def test_bearer_token_from_the_environment_is_sent(fake, monkeypatch):
    servicer, address = fake
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", "t0k3n")
    with RegistryClient(address) as client:
        client.get_model("m")
    assert servicer.calls[-1][1]["authorization"] == "Bearer t0k3n"


async def test_async_client_sends_its_token(fake):
    servicer, address = fake
    async with AsyncRegistryClient(address, token="other") as client:
        await client.get_model("m")
    assert servicer.calls[-1][1]["authorization"] == "Bearer other"


def test_no_token_no_authorization_header(fake, monkeypatch):
    servicer, address = fake
    monkeypatch.delenv("MODEL_REGISTRY_TOKEN", raising=False)
    with RegistryClient(address) as client:
        client.get_model("m")
    assert "authorization" not in servicer.calls[-1][1]


def test_a_client_is_usable_within_a_second_of_the_registry_coming_back(served_fake):
    """gRPC's default reconnect backoff grows to minutes while the server is
    away and fails every call at once in between; the SDK's channel tries
    again every second at most (`CHANNEL_OPTIONS`)."""
    with RegistryClient(served_fake.address, timeout=1.0) as client:
        assert client.get_model("m").model_id == "m"
        served_fake.stop()
        # Away for long enough that the default backoff would next try ~4 s
        # after the server is back (attempts ~1, 2.6, 5.2, 9.3, 15.9 s).
        away_until = time.monotonic() + 12
        while time.monotonic() < away_until:
            with pytest.raises(UnavailableError):
                client.get_model("m")
            time.sleep(0.2)
        served_fake.start()
        back = time.monotonic()
        while True:
            try:
                client.get_model("m")
                break
            except UnavailableError:
                assert time.monotonic() - back < 1.5, "the client did not reconnect within 1.5 s"
                time.sleep(0.05)
