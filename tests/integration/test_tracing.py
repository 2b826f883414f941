"""One trace per request, from Envoy to the disk, received by a real OTLP
collector started here."""

from __future__ import annotations

import base64
import os
import secrets

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from services.common import service_names

from conftest import running_stack, version_chunks
from otlp_receiver import OtlpReceiver, span_tree

ALL_SERVICES = {"envoy", "frontend", "metadata", "blobstore"}


@pytest.fixture(scope="module")
def receiver():
    collector = OtlpReceiver()
    collector.start()
    yield collector
    collector.stop()


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory, receiver):
    with running_stack(
        tmp_path_factory.mktemp("traced"),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_BSP_SCHEDULE_DELAY="200",
    ) as running:
        yield running


def traceparent() -> tuple[str, str, tuple[tuple[str, str]]]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id}-{span_id}-01"),)


def assert_one_connected_trace(spans, client_span_id: str) -> None:
    assert {s.service for s in spans} >= ALL_SERVICES, span_tree(spans)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id not in ids]
    # Everything hangs under the client's span, through Envoy's.
    assert roots and all(s.parent_span_id == client_span_id for s in roots), span_tree(spans)
    assert all(s.service == "envoy" for s in roots), span_tree(spans)
    by_id = {s.span_id: s for s in spans}
    for service in ("metadata", "blobstore"):
        server_spans = [s for s in spans if s.service == service and s.name.startswith("/registry.")]
        assert server_spans, f"no {service} server span\n{span_tree(spans)}"
        for span in server_spans:
            # metadata/blobstore are reached from the frontend (through Envoy's internal listener).
            ancestors, current = [], span
            while current.parent_span_id in by_id:
                current = by_id[current.parent_span_id]
                ancestors.append(current.service)
            assert "frontend" in ancestors, span_tree(spans)


def test_create_and_read_each_produce_one_trace(traced_stack, receiver, capsys):
    registry = api_grpc.ModelRegistrySPStub(traced_stack.channel())
    model = f"traced-{secrets.token_hex(4)}"
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model)))
    data = os.urandom(4 * 1024 * 1024)

    trace_id, span_id, metadata = traceparent()
    info = registry.CreateVersion(version_chunks(model, data, archived=True), metadata=metadata).version_info
    spans = receiver.wait_for(trace_id, ALL_SERVICES, root_parent=span_id)
    assert_one_connected_trace(spans, span_id)
    names = {(s.service, s.name) for s in spans}
    assert ("frontend", f"/{service_names.MODEL_REGISTRY}/CreateVersion") in names
    assert ("metadata", f"/{service_names.METADATA}/CommitVersion") in names
    assert ("blobstore", f"/{service_names.BLOBSTORE}/PutBlob") in names
    with capsys.disabled():
        print("\nCreateVersion trace (4 MiB archived):\n" + span_tree(spans))

    trace_id, span_id, metadata = traceparent()
    chunks = list(registry.RetrieveVersionData(
        api.RetrieveVersionDataRequest(model_id=model, version_number=info.version_number), metadata=metadata
    ))
    assert b"".join(c.data_chunk for c in chunks) == data
    spans = receiver.wait_for(trace_id, ALL_SERVICES, root_parent=span_id)
    assert_one_connected_trace(spans, span_id)
    assert ("blobstore", f"/{service_names.BLOBSTORE}/GetBlob") in {(s.service, s.name) for s in spans}


def test_failed_call_carries_an_error_status(traced_stack, receiver):
    registry = api_grpc.ModelRegistrySPStub(traced_stack.channel())
    model = f"traced-{secrets.token_hex(4)}"
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model)))
    trace_id, _, metadata = traceparent()
    wrong = base64.b64encode(b"\0" * 32).decode()
    with pytest.raises(grpc.RpcError) as error:
        registry.CreateVersion(version_chunks(model, b"some bytes", data_hash=wrong), metadata=metadata)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = receiver.wait_for(trace_id, {"envoy", "frontend"})
    (frontend,) = [s for s in spans if s.service == "frontend" and s.name.endswith("/CreateVersion")]
    assert frontend.status_code == 2, span_tree(spans)


def test_a_small_read_is_traced_from_envoy_to_metadata(traced_stack, receiver):
    """RetrieveVersionInfos and RetrieveModels go straight from Envoy to
    metadata's public reads listener: one Envoy span, its child the metadata
    server span, no frontend."""
    registry = api_grpc.ModelRegistrySPStub(traced_stack.channel())
    model = f"traced-{secrets.token_hex(4)}"
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model)))
    for call, request, method in (
        (registry.RetrieveVersionInfos, api.RetrieveVersionInfosRequest(model_id=model), "RetrieveVersionInfos"),
        (registry.RetrieveModels, api.RetrieveModelsRequest(model_ids=[model]), "RetrieveModels"),
    ):
        trace_id, span_id, metadata = traceparent()
        call(request, metadata=metadata)
        spans = receiver.wait_for(trace_id, {"envoy", "metadata"}, root_parent=span_id)
        by_id = {s.span_id: s for s in spans}
        (server,) = [s for s in spans if s.service == "metadata" and s.name == f"/{service_names.MODEL_REGISTRY}/{method}"]
        assert by_id[server.parent_span_id].service == "envoy", span_tree(spans)
        assert "frontend" not in {s.service for s in spans}, span_tree(spans)
        assert server.attributes.get("reply_cache") == "miss", server.attributes
        # Asked again, it is answered from a replica's reply cache (each
        # metadata replica has its own: a few calls reach every one), and
        # its span says so.
        asked = [traceparent() for _ in range(4)]
        for _, _, metadata in asked:
            call(request, metadata=metadata)
        servers = [
            s
            for trace_id, _, _ in asked
            for s in receiver.wait_for(trace_id, {"metadata"}, settle=0.3)
            if s.service == "metadata" and s.name == f"/{service_names.MODEL_REGISTRY}/{method}"
        ]
        hits = [s for s in servers if s.attributes.get("reply_cache") == "hit"]
        assert hits, [s.attributes for s in servers]
        if method == "RetrieveVersionInfos":
            assert all(s.attributes.get("model_id") == model for s in hits), [s.attributes for s in hits]
