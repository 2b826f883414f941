"""The synchronous SDK against a whole registry (launcher, Envoy, services)."""

from __future__ import annotations

import base64
import hashlib
import io
import queue
import threading
import uuid

import pytest

from model_registry_client import (
    DataIntegrityError,
    InvalidArgumentError,
    NotFoundError,
    RegistryClient,
)


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("archived", [True, False], ids=["archived", "transient"])
def test_32_mib_file_round_trip_is_byte_exact(client, model_id, big_file, tmp_path, archived):
    pushed_progress: list[tuple[int, int]] = []
    info = client.push(
        model_id, big_file, archived=archived, user_data={"step": "1"}, progress=lambda d, t: pushed_progress.append((d, t))
    )
    expected = big_file.read_bytes()
    assert (info.model_id, info.version_number, info.archived) == (model_id, 1, archived)
    assert (info.data_size, info.data_hash, info.user_data) == (len(expected), sha256_b64(expected), {"step": "1"})
    assert pushed_progress[0] == (0, len(expected)) and pushed_progress[-1] == (len(expected), len(expected))
    assert len(pushed_progress) == 33  # 0, then one per 1 MiB chunk

    dest = tmp_path / "pulled.bin"
    assert client.pull(model_id, 1, dest=dest) == info
    assert dest.read_bytes() == expected
    assert client.pull(model_id) == expected


def test_negative_numbers_address_from_the_latest(client, model_id):
    for i in range(1, 4):
        client.push(model_id, f"v{i}".encode())
    assert client.get_version(model_id, -1).version_number == 3
    assert client.get_version(model_id, -3).version_number == 1
    assert client.get_version(model_id).version_number == 3
    assert client.pull(model_id, -1) == b"v3"
    assert client.pull(model_id, -2) == b"v2"
    assert client.pull(model_id, 1) == b"v1"
    with pytest.raises(NotFoundError):
        client.get_version(model_id, -4)
    with pytest.raises(NotFoundError):
        client.pull(model_id, 9)


def test_push_from_streams_and_iterables(client, model_id):
    data = bytes(range(256)) * 5000
    stream = io.BytesIO(b"header" + data)
    stream.seek(6)
    assert client.push(model_id, stream, chunk_size=4096).data_hash == sha256_b64(data)
    assert client.push(model_id, (data[i : i + 1000] for i in range(0, len(data), 1000))).data_size == len(data)
    assert client.push(model_id, b"").data_size == 0
    assert client.pull(model_id, 1) == data
    assert client.pull(model_id, 2) == data
    assert client.pull(model_id, 3) == b""


def test_data_changing_during_a_push_creates_no_version(client, model_id):
    class Shifty(io.BytesIO):
        """Reads differently the second time (the hash pass, then the send pass)."""

        reads = 0

        def seek(self, *args):  # type: ignore[override]
            self.reads += 1
            if self.reads == 3:  # start, end, then back to start for sending
                self.getbuffer()[0] ^= 0xFF
            return super().seek(*args)

    with pytest.raises(DataIntegrityError, match="changed"):
        client.push(model_id, Shifty(b"some model bytes" * 1000), archived=True)
    assert list(client.list_versions(model_id)) == []


def test_listings_walk_every_page(client):
    names = [f"page-{uuid.uuid4().hex[:8]}-{i}" for i in range(5)]
    for name in names:
        client.create_model(name)
    listed = [m.model_id for m in client.list_models(page_size=2)]
    assert [n for n in listed if n in names] == names
    for i in range(5):
        client.push(names[0], str(i).encode())
    assert [v.version_number for v in client.list_versions(names[0], page_size=2)] == [1, 2, 3, 4, 5]
    for name in names:
        client.delete_model(name)


def test_models_create_update_get_delete(client):
    name = f"m-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotFoundError):
        client.update_model(name, {"a": "1"})
    assert client.create_model(name, {"a": "1"}).user_data == {"a": "1"}
    client.update_model(name, {"b": "2"})
    assert client.get_model(name).user_data == {"b": "2"}
    client.delete_model(name)
    with pytest.raises(NotFoundError, match=f"model '{name}' not found"):
        client.get_model(name)
    with pytest.raises(InvalidArgumentError):
        client.create_model("")


def test_errors_of_the_registry(client, model_id):
    with pytest.raises(NotFoundError):
        client.push("no-such-model", b"x")
    with pytest.raises(NotFoundError):
        list(client.list_versions("no-such-model"))
    with pytest.raises(NotFoundError):
        client.delete_model("no-such-model")


def test_follow_sees_the_latest_then_new_versions(client, model_id):
    client.push(model_id, b"1")
    client.push(model_id, b"2")
    received: queue.Queue = queue.Queue()
    follow = client.follow(model_id)

    def pump() -> None:
        for info in follow:
            received.put(info.version_number)
            if info.version_number == 4:
                return

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    assert received.get(timeout=10) == 2
    client.push(model_id, b"3")
    client.push(model_id, b"4")
    assert [received.get(timeout=10), received.get(timeout=10)] == [3, 4]
    thread.join(timeout=10)


def test_follow_survives_a_restart_of_the_registry(stack, model_id):
    """The stack goes down under a subscriber (UNAVAILABLE while it is down):
    the subscription resumes without repeating the version it already saw."""
    with RegistryClient(stack.address) as client:
        client.push(model_id, b"durable", archived=True)
        received: queue.Queue = queue.Queue()

        def pump() -> None:
            for info in client.follow(model_id, max_backoff=0.5):
                received.put(info.version_number)
                if info.version_number == 2:
                    return

        threading.Thread(target=pump, daemon=True).start()
        assert received.get(timeout=10) == 1
        stack.launcher("down")
        stack.launcher("up")
        client.push(model_id, b"after restart", archived=True)
        assert received.get(timeout=30) == 2
        assert received.empty()
