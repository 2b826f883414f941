"""A blobstore replica gone for good takes its transient versions with it,
and metadata forgets them at once, without waiting for anyone to read them:
infos vanish as data vanishes, and -1 never names a version whose data is
gone. (On the replicated shape one of three replicas restarts; on the
single shape the only one does.)"""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from registry import blobstore_pb2, blobstore_pb2_grpc

from conftest import Stack, create_version, read_data, stack_under


def replica_id_at(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = blobstore_pb2_grpc.BlobStoreStub(channel)
        return stub.DescribeReplica(blobstore_pb2.DescribeReplicaRequest(), timeout=2).replica_id


def blob_keys(stack: Stack, model_id: str) -> dict[int, str]:
    """version number -> blob key, from the metadata database itself (the
    test's oracle: the public API does not show keys)."""
    statement = (
        "SELECT v.number, v.blob_key FROM versions v JOIN models m ON m.seq = v.model_seq WHERE m.model_id = "
    )
    url = stack.env.get("COGMENT_MODEL_REGISTRY_METADATA_URL")
    if url and url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            return dict(connection.execute(statement + "%s", (model_id,)).fetchall())
    import sqlite3

    path = stack.archive_dir / "metadata.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return dict(connection.execute(statement + "?", (model_id,)).fetchall())


def listed(registry, model_id: str) -> set[int]:
    reply = registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id))
    return {info.version_number for info in reply.version_infos}


def test_a_restarted_replica_s_transient_versions_vanish_from_infos_at_once(registry, stack, model_id):
    archived = create_version(registry, model_id, b"archived", archived=True)
    transient = [create_version(registry, model_id, f"transient {n}".encode()) for n in range(9)]
    replicas = {p["name"]: replica_id_at(p["port"]) for p in stack.processes("blobstore")}
    keys = blob_keys(stack, model_id)
    held = {
        name: {number for number, key in keys.items() if key.endswith("-" + replica_id)}
        for name, replica_id in replicas.items()
    }
    victim = max(held, key=lambda name: len(held[name]))
    lost = held[victim]
    assert lost, f"no replica holds a transient version: {held}"
    kept = {info.version_number for info in transient} - lost

    started = time.monotonic()
    stack.kill(victim, signal.SIGKILL)
    # Nobody reads: the new process's first lease renewal, before it
    # serves, makes metadata forget the old one's versions.
    while listed(registry, model_id) & lost:
        assert time.monotonic() - started < 15, f"versions {sorted(lost)} of the restarted {victim} still listed"
        time.sleep(0.05)
    vanished_after = time.monotonic() - started
    print(f"\n{len(lost)} transient versions of {victim} vanished from infos {vanished_after:.2f} s after its kill -9")
    assert listed(registry, model_id) == kept | {archived.version_number}
    assert replica_id_at(next(p["port"] for p in stack.processes("blobstore") if p["name"] == victim)) != replicas[victim]
    # Reads need the frontends to see the new process serving (on the
    # single shape it is the only replica): `up` returns once they do.
    stack.up()

    # -1 is a version whose data exists (infos and data agree).
    (latest,) = registry.RetrieveVersionInfos(
        api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[-1])
    ).version_infos
    expected_latest = max(kept | {archived.version_number})
    assert latest.version_number == expected_latest
    assert read_data(registry, model_id, -1) == read_data(registry, model_id, expected_latest)
    for number in kept:
        assert read_data(registry, model_id, number) == f"transient {number - 2}".encode()
    for number in lost:
        try:
            read_data(registry, model_id, number)
            raise AssertionError(f"version {number} of the restarted replica answered data")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
    # The stack serves on: new transient versions, on any replica.
    for n in range(3):
        info = create_version(registry, model_id, b"after the restart")
        assert read_data(registry, model_id, info.version_number) == b"after the restart"


# -- leases: frozen is not gone, until the lease expires -----------------------------

LEASE_SECONDS = 4.0


@pytest.fixture
def leased_stack(tmp_path):
    """A stack of its own whose blobstores hold 4 s leases."""
    stack = stack_under(tmp_path, COGMENT_MODEL_REGISTRY_BLOBSTORE_LEASE_SECONDS=str(LEASE_SECONDS))
    stack.up()
    try:
        yield stack
    finally:
        for proc in stack.processes("blobstore"):
            try:
                os.kill(proc["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
        for channel in stack.channels:
            channel.close()
        stack.down()


def holders(stack: Stack, model_id: str) -> dict[str, set[int]]:
    replicas = {p["name"]: replica_id_at(p["port"]) for p in stack.processes("blobstore")}
    keys = blob_keys(stack, model_id)
    return {
        name: {number for number, key in keys.items() if key.endswith("-" + replica_id)}
        for name, replica_id in replicas.items()
    }


@pytest.mark.faults  # a stack of its own, and waits for leases: ~20 s
def test_a_frozen_replica_keeps_its_versions_until_its_lease_expires(leased_stack: Stack):
    from cogmentAPI import model_registry_pb2_grpc as api_grpc

    registry = api_grpc.ModelRegistrySPStub(leased_stack.channel())
    model_id = "frozen"
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id)))
    for n in range(6):
        create_version(registry, model_id, f"transient {n}".encode())
    held = holders(leased_stack, model_id)
    victim = max(held, key=lambda name: len(held[name]))
    (proc,) = [p for p in leased_stack.processes("blobstore") if p["name"] == victim]
    os.kill(proc["pid"], signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        # Frozen, within its lease: listed still, and its data is UNAVAILABLE, not NOT_FOUND.
        time.sleep(LEASE_SECONDS / 2)
        assert held[victim] <= listed(registry, model_id)
        number = min(held[victim])
        try:
            read_data(registry, model_id, number)
            raise AssertionError("a frozen replica's version answered data")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert number in listed(registry, model_id)  # a read of a frozen replica forgets nothing
        # Past its lease: gone for good, without anyone reading.
        while listed(registry, model_id) & held[victim]:
            assert time.monotonic() - frozen_at < LEASE_SECONDS + 10, "the expired lease should forget its versions"
            time.sleep(0.1)
        gone_after = time.monotonic() - frozen_at
        print(f"\n{victim} frozen: its {len(held[victim])} transient versions listed until its lease "
              f"expired, forgotten {gone_after:.1f} s after SIGSTOP (lease {LEASE_SECONDS:.0f} s)")
        # The lease runs from its last renewal, at most a third of it before the freeze.
        assert gone_after >= LEASE_SECONDS * 2 / 3 - 0.2
    finally:
        os.kill(proc["pid"], signal.SIGCONT)
    # Thawed: it renews its lease and serves again; the stack goes on.
    deadline = time.monotonic() + 15
    while True:
        try:
            info = create_version(registry, model_id, b"after thaw")
            assert read_data(registry, model_id, info.version_number) == b"after thaw"
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert listed(registry, model_id) & held[victim] == set()
