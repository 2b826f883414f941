"""The blobstore's own spans ("write blob", "read blob"), recorded in memory,
for each archive tier and the memory tier."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from registry import blobstore_pb2, blobstore_pb2_grpc

from services.blobstore.blobs import BlobService, PutMessage
from services.blobstore.servicer import BlobStoreServicer, add_to_server, decode_put_messages
from services.blobstore.store import BlobTier, FileTier, MemoryTier
from services.common.stream_refusal import refusal_behind
from services.blobstore.tests.helpers import MIB, put_requests
from services.blobstore.tests.tiers import Archive, FileArchive, S3Archive
from services.common.errors import DataLoss
from services.common.grpc_server import RequestInterceptor, server_options
from services.common.service_names import BLOBSTORE

DATA = os.urandom(3 * MIB + 1)
SHA = hashlib.sha256(DATA).digest()


@dataclass
class Traced:
    blobs: BlobService
    exporter: InMemorySpanExporter
    archive: Archive
    commit_attribute: str

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]


def recording_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def open_service(archive: BlobTier, provider: TracerProvider) -> BlobService:
    blobs = BlobService(
        MemoryTier(16 * MIB),
        archive,
        default_chunk_size=MIB,
        max_message_bytes=16 * MIB,
        tracer=provider.get_tracer("registry.blobstore"),
    )
    await blobs.open()
    return blobs


@pytest.fixture(params=["file", "s3"])
async def traced(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    # The service opens the tier: not the opened `archive` fixtures.
    archive: Archive
    if request.param == "file":
        archive, commit_attribute = FileArchive(FileTier(tmp_path), tmp_path), "fsync_ms"
    else:
        from services.blobstore.store.s3 import S3Tier

        bucket = request.getfixturevalue("s3_bucket")
        archive = S3Archive(S3Tier(bucket, part_size=5 * MIB), request.getfixturevalue("s3_server"))
        commit_attribute = "complete_ms"
    blobs = await open_service(archive.tier, recording_provider(exporter))
    yield Traced(blobs, exporter, archive, commit_attribute)
    await blobs.close()


async def messages(key: str, data: bytes, *, archived: bool) -> AsyncIterator[PutMessage]:
    """A PutBlob stream as the servicer hands it over: decoded from the wire
    (the data of bodies as views)."""

    async def received() -> AsyncIterator[bytes]:
        for message in put_requests(key, data, archived=archived, chunk_size=MIB):
            yield message.SerializeToString()

    async for message in decode_put_messages(received()):
        yield message


async def read(blobs: BlobService, key: str, *, archived: bool, **fields) -> list[bytes]:
    request = blobstore_pb2.GetBlobRequest(key=key, archived=archived, chunk_size=MIB, **fields)
    return [chunk async for chunk in blobs.get(request)]


async def test_write_and_verified_read_of_an_archived_blob(traced: Traced):
    await traced.blobs.put(messages("traced", DATA, archived=True))
    (write,) = traced.spans("write blob")
    attributes = dict(write.attributes)
    assert {k: attributes[k] for k in ("blob_key", "archived", "size", "bytes", "chunks")} == {
        "blob_key": "traced",
        "archived": True,
        "size": len(DATA),
        "bytes": len(DATA),
        "chunks": 4,
    }
    assert attributes[traced.commit_attribute] >= 0 and attributes["commit_ms"] >= attributes[traced.commit_attribute]
    assert write.status.status_code == StatusCode.UNSET

    chunks = await read(traced.blobs, "traced", archived=True, expected_size=len(DATA), expected_sha256=SHA)
    assert b"".join(chunks) == DATA
    (span,) = traced.spans("read blob")
    assert dict(span.attributes) == {
        "blob_key": "traced",
        "archived": True,
        "size": len(DATA),
        "bytes": len(DATA),
        "chunks": 4,
        "verified": True,
    }
    assert span.status.status_code == StatusCode.UNSET


async def test_data_loss_marks_the_read_span(traced: Traced):
    await traced.blobs.put(messages("rotten", DATA, archived=True))
    traced.archive.replace("rotten", bytes(len(DATA)))
    with pytest.raises(DataLoss):
        await read(traced.blobs, "rotten", archived=True, expected_size=len(DATA), expected_sha256=SHA)
    traced.archive.replace("rotten", DATA[:-1])
    with pytest.raises(DataLoss):
        await read(traced.blobs, "rotten", archived=True, expected_size=len(DATA), expected_sha256=SHA)
    mismatch, truncated = traced.spans("read blob")
    assert mismatch.status.status_code == StatusCode.ERROR
    assert mismatch.status.description == "DATA_LOSS: stored data of blob rotten is corrupt: sha256 mismatch"
    assert (mismatch.attributes["verified"], mismatch.attributes["chunks"]) == (False, 3)
    assert truncated.status.status_code == StatusCode.ERROR
    assert truncated.status.description.startswith("DATA_LOSS: ") and "bytes stored" in truncated.status.description
    assert (truncated.attributes["verified"], truncated.attributes["chunks"]) == (False, 0)


async def test_failed_write_and_unverified_reads(traced: Traced):
    await traced.blobs.put(messages("once", b"abc", archived=True))
    with pytest.raises(Exception, match="already exists"):
        await traced.blobs.put(messages("once", b"abc", archived=True))
    failed = traced.spans("write blob")[-1]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "ALREADY_EXISTS: blob once already exists"
    # Without a digest, or from memory: served, not verified.
    await read(traced.blobs, "once", archived=True)
    await traced.blobs.put(messages("once", b"abc", archived=False))
    await read(traced.blobs, "once", archived=False, expected_sha256=hashlib.sha256(b"abc").digest(), expected_size=3)
    assert [span.attributes["verified"] for span in traced.spans("read blob")] == [False, False]


async def test_the_raw_bytes_handlers_run_inside_the_interceptors(tmp_path: Path):
    """PutBlob and GetBlob take and return raw bytes: OpenTelemetry's server
    interceptor and ours (in the order `configure_tracing` installs them)
    still wrap them, with the blobstore's spans inside the call's, and
    errors still become their status."""
    exporter = InMemorySpanExporter()
    provider = recording_provider(exporter)
    blobs = await open_service(FileTier(tmp_path), provider)
    server = grpc.aio.server(
        interceptors=[aio_server_interceptor(tracer_provider=provider), RequestInterceptor()],
        options=server_options(16 * MIB),
    )
    add_to_server(BlobStoreServicer(blobs), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=server_options(16 * MIB)) as channel:
            stub = blobstore_pb2_grpc.BlobStoreStub(channel)
            await stub.PutBlob(iter(put_requests("wrapped", DATA, archived=True)))
            request = blobstore_pb2.GetBlobRequest(
                key="wrapped", archived=True, expected_size=len(DATA), expected_sha256=SHA, chunk_size=MIB
            )
            assert b"".join([reply.data_chunk async for reply in stub.GetBlob(request)]) == DATA
            again = stub.PutBlob(iter(put_requests("wrapped", DATA, archived=True)))
            with pytest.raises(grpc.aio.AioRpcError) as exists:
                await again
            # Read as the frontend reads a PutBlob refusal (stream_refusal.py).
            assert (await refusal_behind(again, exists.value)).code() == grpc.StatusCode.ALREADY_EXISTS
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                async for _ in stub.GetBlob(blobstore_pb2.GetBlobRequest(key="missing", archived=True)):
                    pass
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)
        await blobs.close()

    spans = exporter.get_finished_spans()
    calls = [span for span in spans if span.kind == SpanKind.SERVER]
    assert [span.name for span in calls] == [
        f"/{BLOBSTORE}/PutBlob",
        f"/{BLOBSTORE}/GetBlob",
        f"/{BLOBSTORE}/PutBlob",
        f"/{BLOBSTORE}/GetBlob",
    ]
    own = [span for span in spans if span.name in ("write blob", "read blob")]
    # Each of the blobstore's spans is a child of its call's span.
    assert [span.parent.span_id for span in own] == [call.context.span_id for call in calls]
    assert own[0].attributes["chunks"] == 4 and own[1].attributes["verified"] is True
    assert [call.status.status_code for call in calls] == [StatusCode.UNSET] * 2 + [StatusCode.ERROR] * 2
    assert calls[2].status.description == "ALREADY_EXISTS: blob wrapped already exists"
    assert calls[3].status.description == "NOT_FOUND: blob missing not found"
