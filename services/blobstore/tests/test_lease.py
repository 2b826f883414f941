"""The blobstore's lease against a real metadata service (SQLite, in
process): renewed before the replica serves, released when it stops, and
a new replica id in the same slot makes metadata forget the old one's
transient versions."""

from __future__ import annotations

from pathlib import Path

import grpc
from cogmentAPI import model_registry_pb2 as api
from registry import blobstore_pb2, metadata_pb2, metadata_pb2_grpc

from services.blobstore.lease import LeaseKeeper
from services.blobstore.tests.helpers import make_config, start_blobstore
from services.common.blob_keys import new_transient_key
from services.metadata.server import create_server as create_metadata_server
from services.metadata.server import open_registry
from services.metadata.tests.helpers import test_config as metadata_test_config


async def commit_transient(stub, replica_id: str, count: int) -> None:
    for _ in range(count):
        request = metadata_pb2.CommitVersionRequest(blob_key=new_transient_key(replica_id))
        request.version_info.model_id = "m"
        request.version_info.data_size = 1
        request.version_info.data_hash = "aGFzaA=="
        await stub.CommitVersion(request)


async def versions_listed(stub) -> int:
    reply = await stub.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id="m"))
    return len(reply.version_infos)


async def test_a_replica_s_lease_lifecycle(tmp_path: Path):
    config = metadata_test_config(tmp_path / "metadata")
    app = await create_metadata_server(config, registry=await open_registry(config))
    await app.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = metadata_pb2_grpc.MetadataServiceStub(channel)
    try:
        await stub.UpsertModel(api.ModelInfo(model_id="m"))
        blobstore, stop = await start_blobstore(
            make_config(tmp_path / "blobs", internal_address=f"127.0.0.1:{app.port}")
        )
        described = await blobstore.stub.DescribeReplica(blobstore_pb2.DescribeReplicaRequest())
        await commit_transient(stub, described.replica_id, 3)
        assert await versions_listed(stub) == 3
        await stop()  # a clean stop releases the lease: its memory is gone
        assert await versions_listed(stub) == 0

        # A process that replaces another in its slot (same host:port, new id).
        old = LeaseKeeper(channel, "0123456789abcdef", "host:1", lease_seconds=30, call_timeout_seconds=5)
        new = LeaseKeeper(channel, "fedcba9876543210", "host:1", lease_seconds=30, call_timeout_seconds=5)
        other = LeaseKeeper(channel, "00000000000000aa", "host:2", lease_seconds=30, call_timeout_seconds=5)
        for keeper in (old, other):
            assert await keeper.renew() == 0
        await commit_transient(stub, old.replica_id, 2)
        await commit_transient(stub, other.replica_id, 1)
        assert await new.renew() == 2
        assert await versions_listed(stub) == 1
    finally:
        await channel.close()
        await app.server.stop(0)
        await app.on_stop()
