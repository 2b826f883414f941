"""The production shape: several blobstore and frontend replicas behind Envoy.
Runs when the suite runs on REGISTRY_TEST_SHAPE=replicated (`make test` does)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from prometheus_client.parser import text_string_to_metric_families

from services.common.service_names import BLOBSTORE

from conftest import REPLICATED, create_version, read_data
from metrics_scrape import targets

pytestmark = pytest.mark.skipif(not REPLICATED, reason="needs REGISTRY_TEST_SHAPE=replicated")


def processes(stack, kind: str) -> list[dict]:
    state = json.loads((stack.run_dir / "state.json").read_text())
    return [p for p in state["processes"] if p["kind"] == kind]


def frontends_placing_on(stack) -> set[float]:
    """How many blobstore replicas the frontends place new blobs on, each
    by its own view (one value when they agree)."""
    values = set()
    for service, url in targets(stack.run_dir):
        if service == "frontend":  # the frozen replica's own /metrics would not answer
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            values |= {
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "registry_blobstore_replicas_serving"
            }
    return values


def blobstore_log_counts(stack) -> dict[str, int]:
    return {
        p["name"]: open(p["log"]).read().count(f"rpc=/{BLOBSTORE}/PutBlob status=OK") for p in processes(stack, "blobstore")
    }


def test_transient_blobs_spread_and_are_read_from_their_replica(registry, stack, model_id):
    # Frontends place new blobs on the least busy replica, ties at random:
    # upload in rounds until keys spread.
    before = blobstore_log_counts(stack)
    versions, deadline = [], time.monotonic() + 20
    while True:
        for _ in range(6):
            versions.append(create_version(registry, model_id, f"payload {len(versions)}".encode()))
        after = blobstore_log_counts(stack)
        if sum(1 for name in after if after[name] > before[name]) >= 2:
            break
        assert time.monotonic() < deadline, f"uploads should spread over replicas: {before} -> {after}"
        time.sleep(1)
    for info in versions[-9:]:
        assert read_data(registry, model_id, info.version_number) == f"payload {info.version_number - 1}".encode()


def test_losing_a_blobstore_replica(registry, stack, model_id):
    archived = [create_version(registry, model_id, f"archived {i}".encode(), archived=True) for i in range(6)]
    before = blobstore_log_counts(stack)
    transient = [create_version(registry, model_id, f"transient {i}".encode()) for i in range(6)]
    after = blobstore_log_counts(stack)
    # Kill a replica that holds some of the transient versions.
    (victim,) = [p for p in processes(stack, "blobstore") if after[p["name"]] > before[p["name"]]][:1]
    os.kill(victim["pid"], signal.SIGKILL)
    try:
        # Archived data stays readable through the others, at once.
        for info in archived:
            assert read_data(registry, model_id, info.version_number) == f"archived {info.version_number - 1}".encode()
        # Transient versions answer their data or NOT_FOUND: never a hang or INTERNAL.
        lost = []
        for info in transient:
            started = time.monotonic()
            try:
                read_data(registry, model_id, info.version_number)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
                lost.append(info.version_number)
            assert time.monotonic() - started < 5
        assert lost, "the killed replica held transient versions"
        # Metadata stays consistent: the infos of lost versions go too.
        deadline = time.monotonic() + 5
        listed = {v.version_number for v in registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id)).version_infos}
        while set(lost) & listed:
            assert time.monotonic() < deadline, f"lost versions {lost} still listed: {sorted(listed)}"
            time.sleep(0.2)
            listed = {v.version_number for v in registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id)).version_infos}
        # New uploads succeed, numbering continues.
        for i in range(4):
            info = create_version(registry, model_id, b"after the loss")
            assert read_data(registry, model_id, info.version_number) == b"after the loss"
        assert create_version(registry, model_id, b"x", archived=True).version_number == len(archived) + len(transient) + 5
    finally:
        # The supervisor restarts the replica; `make up` returns once the
        # stack is back to full strength, for the tests that follow.
        stack.up()


def envoy_health(stack) -> dict[str, str]:
    """host -> health flags of the blobstore cluster, from Envoy's admin page."""
    import urllib.request

    state = json.loads((stack.run_dir / "state.json").read_text())
    text = urllib.request.urlopen(f"http://127.0.0.1:{state['admin_port']}/clusters", timeout=2).read().decode()
    return {
        line.split("::")[1]: line.rsplit("::", 1)[1]
        for line in text.splitlines()
        if line.startswith("blobstore::") and "::health_flags::" in line
    }


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_frozen_replica_leaves_rotation_and_comes_back(registry, stack, model_id):
    (victim, *_) = processes(stack, "blobstore")
    replicas = len(processes(stack, "blobstore"))
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        wait_until(lambda: sum(flags != "healthy" for flags in envoy_health(stack).values()) == 1, 15,
                   "Envoy did not take the frozen replica out of rotation")
        # The frontends place blobs by their own view of the replicas, not
        # Envoy's: under load either may notice first.
        wait_until(lambda: frontends_placing_on(stack) == {replicas - 1}, 15,
                   "a frontend did not take the frozen replica out of rotation")
        # Out of rotation: uploads and archived reads keep working on the others.
        for i in range(4):
            info = create_version(registry, model_id, f"while frozen {i}".encode(), archived=True)
            assert read_data(registry, model_id, info.version_number) == f"while frozen {i}".encode()
    finally:
        os.kill(victim["pid"], signal.SIGCONT)
    wait_until(lambda: all(flags == "healthy" for flags in envoy_health(stack).values()), 15,
               "the replica did not come back into rotation")
    info = create_version(registry, model_id, b"after thaw", archived=True)
    assert read_data(registry, model_id, info.version_number) == b"after thaw"
