"""Metrics of a running stack, scraped from every target of the file `make
up` writes: counters move by exactly the traffic sent, and no label value
ever names a model, a version or a blob."""

from __future__ import annotations

import re
import time
import uuid

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api

from conftest import CACHE_MAX_ITEMS, REPLICATED, create_version, read_data, version_chunks
from metrics_scrape import Scrape
from test_version_update import subscribe, take

PUBLIC = "cogmentAPI.ModelRegistrySP"
METADATA = "registry.MetadataService"
BLOBSTORE = "registry.BlobStore"
MIB = 1024 * 1024
SERVICES = ("frontend", "metadata", "blobstore")


def scrape_until(stack, condition, timeout: float = 15.0) -> Scrape:  # type: ignore[no-untyped-def]
    """Scrapes until `condition(scrape)` holds (gauges are refreshed on a
    beat, streams recorded once gRPC reports them done); returns that scrape."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = Scrape(stack.run_dir)
        if condition(scrape):
            return scrape
        assert time.monotonic() < deadline, "the metrics never showed the expected values"
        time.sleep(0.2)


def test_every_target_answers_and_every_service_is_listed(stack):
    scrape = Scrape(stack.run_dir)
    services = [service for service, _ in scrape.targets]
    expected = {"frontend": 2, "metadata": 2, "blobstore": 3} if REPLICATED else {kind: 1 for kind in SERVICES}
    assert {kind: services.count(kind) for kind in SERVICES} == expected
    assert services.count("envoy") == 1
    for kind in SERVICES:
        # Each process reports its own health, SERVING everywhere.
        assert scrape.values("registry_health_serving", kind, health_service="overall") == [1.0] * expected[kind]
    assert scrape.values("envoy_cluster_membership_healthy", "envoy", envoy_cluster_name="blobstore") == [
        float(expected["blobstore"])
    ]


def test_counters_move_by_exactly_the_traffic_sent(stack, registry, model_id):
    transient, archived = [3 * MIB + 1, 1000], [2 * MIB]
    before = Scrape(stack.run_dir)
    infos = [create_version(registry, model_id, bytes(size)) for size in transient]
    infos += [create_version(registry, model_id, bytes(size), archived=True) for size in archived]
    with pytest.raises(grpc.RpcError) as missing:
        registry.CreateVersion(version_chunks(f"no-such-model-{uuid.uuid4().hex[:8]}", b"abc"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(read_data(registry, model_id, infos[0].version_number)) == transient[0]
    assert len(read_data(registry, model_id, infos[2].version_number)) == archived[0]
    # GetBlob streams are recorded by the frontend once gRPC reports them done.
    after = scrape_until(
        stack,
        lambda s: s.total("grpc_client_handled_total", "frontend", grpc_method="GetBlob")
        - before.total("grpc_client_handled_total", "frontend", grpc_method="GetBlob")
        >= 2,
    )

    def delta(name: str, service: str, **labels: str) -> float:
        return after.total(name, service, **labels) - before.total(name, service, **labels)

    created = len(transient) + len(archived)
    handled = "grpc_server_handled_total"
    create = dict(grpc_service=PUBLIC, grpc_method="CreateVersion")
    assert delta(handled, "frontend", **create, grpc_code="OK") == created
    assert delta(handled, "frontend", **create, grpc_code="NOT_FOUND") == 1
    assert delta("grpc_server_started_total", "frontend", **create) == created + 1
    assert delta("grpc_server_handling_seconds_count", "frontend", **create) == created + 1
    assert delta(handled, "frontend", grpc_service=PUBLIC, grpc_method="RetrieveVersionData", grpc_code="OK") == 2
    # The commit point: one CommitVersion per version, seen from both sides.
    commit = dict(grpc_service=METADATA, grpc_method="CommitVersion", grpc_code="OK")
    assert delta(handled, "metadata", **commit) == created
    assert delta("grpc_client_handled_total", "frontend", **commit) == created
    put = dict(grpc_service=BLOBSTORE, grpc_method="PutBlob", grpc_code="OK")
    assert delta(handled, "blobstore", **put) == created
    assert delta("grpc_client_handled_total", "frontend", **put, grpc_type="client_stream") == created
    assert delta("grpc_client_handled_total", "frontend", grpc_method="GetBlob", grpc_code="OK") == 2

    # Bytes: what was uploaded and downloaded, on both hops.
    assert delta("registry_upload_bytes_total", "frontend", tier="memory") == sum(transient)
    assert delta("registry_upload_bytes_total", "frontend", tier="archive") == sum(archived)
    assert delta("registry_blobstore_written_bytes_total", "blobstore", tier="memory") == sum(transient)
    assert delta("registry_blobstore_written_bytes_total", "blobstore", tier="archive") == sum(archived)
    assert delta("registry_download_bytes_total", "frontend", tier="memory") == transient[0]
    assert delta("registry_download_bytes_total", "frontend", tier="archive") == archived[0]
    assert delta("registry_blobstore_read_bytes_total", "blobstore", tier="memory") == transient[0]
    assert delta("registry_blobstore_read_bytes_total", "blobstore", tier="archive") == archived[0]
    if not REPLICATED:  # the archive is a directory: fsynced (S3 in the replicated shape)
        assert delta("registry_blobstore_fsync_duration_seconds_count", "blobstore") == len(archived)

    # Envoy's own view of the same calls.
    assert delta("envoy_cluster_upstream_rq_total", "envoy", envoy_cluster_name="frontend") >= created + 3

    # The cache's gauges, refreshed by each metadata replica every database check.
    held = scrape_until(stack, lambda s: max(s.values("registry_transient_versions", "metadata")) >= 1)
    assert set(held.values("registry_transient_max_versions", "metadata")) == {float(CACHE_MAX_ITEMS)}
    assert max(held.values("registry_transient_versions", "metadata")) <= CACHE_MAX_ITEMS
    assert held.total("registry_blobstore_memory_bytes", "blobstore") >= transient[0]


def test_version_update_subscribers_and_notifications(stack, registry, model_id):
    create_version(registry, model_id, b"first")
    before = Scrape(stack.run_dir)
    call, received = subscribe(registry, model_id)
    assert take(received, 1) == [1]

    def opened(scrape: Scrape, name: str, service: str) -> float:
        return scrape.total(name, service) - before.total(name, service)

    scrape_until(
        stack,
        lambda s: opened(s, "registry_version_update_subscribers", "frontend") == 1
        and opened(s, "registry_metadata_watches", "metadata") == 1,
    )
    create_version(registry, model_id, b"second")
    assert take(received, 1) == [2]
    call.cancel()
    after = scrape_until(stack, lambda s: opened(s, "registry_version_update_subscribers", "frontend") == 0)
    assert opened(after, "registry_version_update_notifications_total", "frontend") == 2


HEXISH = re.compile(r"[0-9a-f]{16}")


def test_no_label_value_names_a_model_a_version_or_a_blob(stack, registry):
    model_ids = [f"label-probe-{uuid.uuid4().hex[:8]}-{i}" for i in range(20)]
    for index, model_id in enumerate(model_ids):
        registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id)))
        info = create_version(registry, model_id, b"x" * (index + 1), archived=index % 2 == 0)
        read_data(registry, model_id, info.version_number)
        registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[-1]))
        with pytest.raises(grpc.RpcError):  # failures carry the id in their message, never in a label
            read_data(registry, model_id, info.version_number + 7)
        if index % 3 == 0:
            registry.DeleteModel(api.DeleteModelRequest(model_id=model_id))
    scrape = Scrape(stack.run_dir)
    values = scrape.label_values()
    assert not [value for value in values for model_id in model_ids if model_id in value]
    ours = {value for s in scrape.samples if s.service != "envoy" for value in s.labels.values()}
    assert not [value for value in ours if HEXISH.search(value)], "a blob key or an id as a label value"


def test_names_follow_the_prometheus_conventions(stack):
    scrape = Scrape(stack.run_dir)
    names = {s.name for s in scrape.samples if s.service != "envoy" and s.name.startswith(("registry_", "grpc_"))}
    assert "registry_upload_bytes_total" in names and "grpc_server_handling_seconds_bucket" in names
    for name in names:
        if name.endswith("_bucket"):
            assert name.endswith("_seconds_bucket"), f"{name}: durations are histograms in seconds"
        assert not name.endswith("_created"), "no _created series"
        assert "_ms" not in name and "milliseconds" not in name, name
