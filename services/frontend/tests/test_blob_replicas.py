"""`BlobReplicas` against real blobstore servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.blobstore.server import create_server
from services.blobstore.tests.helpers import make_config, start_blobstore
from services.common.blob_keys import new_archived_key, new_transient_key
from services.common.config import MIB
from services.common.errors import Unavailable
from services.frontend.blob_replicas import BlobReplicas, resolve_address, split_address
from services.launcher.ports import free_port

MESSAGE_LIMIT = 16 * MIB


def replicas_of(addresses, resolver=resolve_address) -> BlobReplicas:
    return BlobReplicas(
        addresses,
        max_message_bytes=MESSAGE_LIMIT,
        refresh_interval_seconds=0.1,
        describe_timeout_seconds=0.5,
        resolver=resolver,
    )


async def refresh_until_serving(replicas: BlobReplicas, count: int) -> None:
    """Refreshes until `count` replicas serve (or about 5 s went by): a
    replica's first answer waits for its connection, which can take longer
    than one describe timeout on a loaded machine."""
    for _ in range(50):
        await replicas.refresh()
        if len(replicas.serving()) == count:
            return
        await asyncio.sleep(0.1)


async def start_replicas(tmp_path: Path, count: int):
    started = []
    for index in range(count):
        config = make_config(tmp_path / f"r{index}", port=free_port())
        started.append((config, *await start_blobstore(config)))
    return started


def test_addresses_split_into_host_and_port():
    assert split_address("blobstore:9030") == ("blobstore", 9030)
    assert split_address("[::1]:9030") == ("::1", 9030)
    for bad in ("blobstore", ":9030", "blobstore:port"):
        with pytest.raises(ValueError):
            split_address(bad)


async def test_replicas_are_described_and_keys_find_their_holder(tmp_path: Path):
    started = await start_replicas(tmp_path, 2)
    replicas = replicas_of([f"127.0.0.1:{config.port}" for config, *_ in started])
    try:
        await refresh_until_serving(replicas, 2)
        serving = replicas.serving()
        assert len(serving) == 2
        ids = {r.replica_id for r in serving}
        assert len(ids) == 2 and all(len(i) == 16 for i in ids)
        for replica in serving:
            assert replicas.locate(new_transient_key(replica.replica_id)) is replica
        assert replicas.locate(new_transient_key("0" * 16)) is None
        assert replicas.locate(new_archived_key()) is None

        # New blobs go to the replica with the fewest calls in flight.
        busy = serving[0]
        with replicas.call(busy):
            assert {replicas.least_busy().address for _ in range(20)} == {serving[1].address}
        assert {replicas.least_busy().address for _ in range(50)} == {r.address for r in serving}
    finally:
        await replicas.close()
        for _, _, stop in started:
            await stop()


async def test_a_stopped_replica_leaves_rotation_and_a_restarted_one_is_new(tmp_path: Path):
    (config, _, stop), (other_config, _, other_stop) = await start_replicas(tmp_path, 2)
    replicas = replicas_of([f"127.0.0.1:{config.port}", f"127.0.0.1:{other_config.port}"])
    try:
        await refresh_until_serving(replicas, 2)
        before = {r.address: r.replica_id for r in replicas.serving()}
        old_key = new_transient_key(before[f"127.0.0.1:{config.port}"])
        await stop()
        await replicas.refresh()
        assert [r.address for r in replicas.serving()] == [f"127.0.0.1:{other_config.port}"]
        assert replicas.locate(old_key) is None
        with pytest.raises(Unavailable):
            replicas.least_busy(exclude=frozenset({f"127.0.0.1:{other_config.port}"}))

        # Same address, new process: a new id, and the old keys stay lost.
        _, stop = await start_blobstore(config)
        await refresh_until_serving(replicas, 2)
        after = {r.address: r.replica_id for r in replicas.serving()}
        assert after.keys() == before.keys()
        assert after[f"127.0.0.1:{config.port}"] != before[f"127.0.0.1:{config.port}"]
        assert replicas.locate(old_key) is None
    finally:
        await replicas.close()
        await stop()
        await other_stop()


async def test_one_name_may_stand_for_several_replicas_and_survives_a_dns_failure(tmp_path: Path):
    started = await start_replicas(tmp_path, 2)
    answers: list[list[str] | OSError] = [[f"127.0.0.1:{config.port}" for config, *_ in started]]

    def resolver(host: str, port: int) -> list[str]:
        answer = answers[-1]
        if isinstance(answer, OSError):
            raise answer
        return answer

    replicas = replicas_of(["blobstore:9030"], resolver)
    try:
        await refresh_until_serving(replicas, 2)
        assert len(replicas.serving()) == 2
        answers.append(OSError("temporary failure in name resolution"))
        await replicas.refresh()
        assert len(replicas.serving()) == 2  # the last answer is kept
        answers.append([f"127.0.0.1:{started[0][0].port}"])  # scaled down
        await replicas.refresh()
        assert [r.address for r in replicas.replicas] == [f"127.0.0.1:{started[0][0].port}"]
    finally:
        await replicas.close()
        for _, _, stop in started:
            await stop()


async def test_no_replica_at_all_is_unavailable_with_what_is_known():
    replicas = replicas_of([f"127.0.0.1:{free_port()}"])
    try:
        await replicas.refresh()
        with pytest.raises(Unavailable) as error:
            replicas.least_busy()
        assert "not serving" in error.value.message
    finally:
        await replicas.close()


async def test_the_refresh_loop_keeps_the_view_current(tmp_path: Path):
    ((config, _, stop),) = await start_replicas(tmp_path, 1)
    replicas = replicas_of([f"127.0.0.1:{config.port}"])
    replicas.start()
    try:
        await asyncio.wait_for(replicas.wait_refreshed(), 5)
        assert len(replicas.serving()) == 1
        await stop()
        for _ in range(50):
            if not replicas.serving():
                break
            await asyncio.sleep(0.05)
        assert not replicas.serving()
    finally:
        await replicas.close()


async def test_a_draining_replica_takes_no_new_blob_but_still_serves_its_own(tmp_path: Path):
    config = make_config(tmp_path / "draining", port=free_port())
    app = await create_server(config)
    await app.server.start()
    await app.ready
    replicas = replicas_of([f"127.0.0.1:{config.port}"])
    try:
        await refresh_until_serving(replicas, 1)
        (replica,) = replicas.serving()
        key = new_transient_key(replica.replica_id)
        app.on_draining()
        await replicas.refresh()
        assert replicas.serving() == []
        assert replicas.locate(key) is replica
        with pytest.raises(Unavailable):
            await replicas.choose()
    finally:
        await replicas.close()
        await app.server.stop(0)
        await app.on_stop()


def start_blobstore_process(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "COGMENT_MODEL_REGISTRY_BLOBSTORE_PORT": str(port),
        "COGMENT_MODEL_REGISTRY_BIND_HOST": "127.0.0.1",
        "COGMENT_MODEL_REGISTRY_ARCHIVE_DIR": str(tmp_path),
        "COGMENT_MODEL_REGISTRY_INTERNAL_ADDRESS": "",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.blobstore"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return process, port


async def refreshed_until(replicas: BlobReplicas, condition, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await replicas.refresh()
        if condition():
            return
        assert asyncio.get_running_loop().time() < deadline, "the view never got there"
        await asyncio.sleep(0.1)


async def test_a_frozen_holder_is_unavailable_and_a_dead_one_is_gone(tmp_path: Path):
    process, port = start_blobstore_process(tmp_path)
    replicas = replicas_of([f"127.0.0.1:{port}"])
    try:
        await refreshed_until(replicas, lambda: len(replicas.serving()) == 1)
        (replica,) = replicas.serving()
        key = new_transient_key(replica.replica_id)

        # Frozen: the kernel still accepts its connections; its blobs may come back.
        process.send_signal(signal.SIGSTOP)
        await refreshed_until(replicas, lambda: not replica.answering)
        assert not replica.down
        with pytest.raises(Unavailable, match="does not answer"):
            replicas.locate(key)

        process.send_signal(signal.SIGCONT)
        await refreshed_until(replicas, lambda: replica.answering)
        assert replicas.locate(key) is replica

        # Dead: connections are refused; what it held is gone.
        process.kill()
        process.wait()
        await refreshed_until(replicas, lambda: replica.down)
        assert replicas.locate(key) is None
        assert await replicas.find_holder(key) is None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()
        await replicas.close()


async def test_a_replica_that_died_since_the_last_look_gets_no_new_blob(tmp_path: Path):
    process, port = start_blobstore_process(tmp_path / "dying")
    ((config, _, stop),) = await start_replicas(tmp_path, 1)
    replicas = replicas_of([f"127.0.0.1:{port}", f"127.0.0.1:{config.port}"])
    try:
        await refreshed_until(replicas, lambda: len(replicas.serving()) == 2)
        process.kill()
        process.wait()
        await asyncio.sleep(0.2)  # its connection closes; no refresh runs meanwhile
        # The view still says both serve.
        assert len(replicas.serving()) == 2
        chosen = {(await replicas.choose()).address for _ in range(10)}
        assert chosen == {f"127.0.0.1:{config.port}"}
    finally:
        await replicas.close()
        await stop()
