"""Spans of the work that matters: the commit transaction and each eviction
batch, children of the request's span although they run on the store thread."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.metadata.records import CacheBudget, Model
from services.metadata.registry import MetadataRegistry
from services.metadata.store import sql
from services.metadata.tests.helpers import draft


@pytest.fixture
def spans(monkeypatch):
    """Records spans of a private provider (the global one stays untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("registry.metadata")
    monkeypatch.setattr(sql, "_tracer", tracer)
    yield tracer, exporter
    provider.shutdown()


async def test_commit_and_eviction_spans_hang_under_the_request_span(database, spans):
    tracer, exporter = spans
    registry = await MetadataRegistry.open(
        lambda: database.open(CacheBudget(max_items=2, max_bytes=10**6), close_at_end=False)
    )
    try:
        await registry.upsert_model(Model("m"))
        for n in range(2):
            await registry.commit_version(draft("m", size=7), f"k{n}")
        exporter.clear()
        with tracer.start_as_current_span("request"):
            commit = await registry.commit_version(draft("m", size=7), "k2")
    finally:
        await registry.close()

    by_name = {span.name: span for span in exporter.get_finished_spans()}
    request, committing, evicting = by_name["request"], by_name["commit version"], by_name["evict"]
    assert committing.parent.span_id == request.context.span_id
    assert evicting.parent.span_id == committing.context.span_id
    assert dict(committing.attributes) == {
        "model_id": "m",
        "archived": False,
        "data_size": 7,
        "version_number": 3,
        "created": True,
        "evicted": 1,
    }
    assert dict(evicting.attributes) == {"count": 1, "bytes": 7}
    # The registry annotates the current (server) span.
    assert request.attributes["model_id"] == "m" and request.attributes["version_number"] == 3
    assert request.attributes["evicted"] == len(commit.evicted) == 1
