"""`BlobReplicas` against real blobstore servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.blobstore.tests.helpers import make_config, start_blobstore
from services.common.blob_keys import new_archived_key, new_transient_key
from services.common.errors import Unavailable
from services.common.ports import free_port
from services.frontend.blob_replicas import BlobReplicas, resolve_address, split_address

MESSAGE_LIMIT = 16 * 1024 * 1024


def replicas_of(addresses, resolver=resolve_address) -> BlobReplicas:
    return BlobReplicas(
        addresses,
        max_message_bytes=MESSAGE_LIMIT,
        refresh_interval_seconds=0.1,
        describe_timeout_seconds=0.5,
        resolver=resolver,
    )


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
        await replicas.refresh()
        serving = replicas.serving()
        assert len(serving) == 2
        ids = {r.replica_id for r in serving}
        assert len(ids) == 2 and all(len(i) == 16 for i in ids)
        for replica in serving:
            assert replicas.holding(new_transient_key(replica.replica_id)) is replica
        assert replicas.holding(new_transient_key("0" * 16)) is None
        assert replicas.holding(new_archived_key()) is None

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
        await replicas.refresh()
        before = {r.address: r.replica_id for r in replicas.serving()}
        old_key = new_transient_key(before[f"127.0.0.1:{config.port}"])
        await stop()
        await replicas.refresh()
        assert [r.address for r in replicas.serving()] == [f"127.0.0.1:{other_config.port}"]
        assert replicas.holding(old_key) is None
        with pytest.raises(Unavailable):
            replicas.least_busy(exclude=frozenset({f"127.0.0.1:{other_config.port}"}))

        # Same address, new process: a new id, and the old keys stay lost.
        _, stop = await start_blobstore(config)
        for _ in range(50):
            await replicas.refresh()
            if len(replicas.serving()) == 2:
                break
            await asyncio.sleep(0.05)
        after = {r.address: r.replica_id for r in replicas.serving()}
        assert after.keys() == before.keys()
        assert after[f"127.0.0.1:{config.port}"] != before[f"127.0.0.1:{config.port}"]
        assert replicas.holding(old_key) is None
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
        await replicas.refresh()
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
