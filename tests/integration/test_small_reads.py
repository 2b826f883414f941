"""The small reads Envoy sends straight to metadata see every write whose
reply came back, on every connection (and, in the replicated shape, every
metadata replica: Envoy spreads each connection's calls over them)."""

from __future__ import annotations

import grpc
import pytest
from cogment import model_registry_pb2_grpc as legacy_grpc
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from conftest import create_version

READERS = 4  # connections, each its own HTTP/2 connection to Envoy
READS_PER_CHECK = 4  # per connection: more than the metadata replicas


def test_every_later_read_sees_the_last_reply(stack, registry, model_id):
    readers = [api_grpc.ModelRegistrySPStub(stack.channel()) for _ in range(READERS)]
    readers.append(legacy_grpc.ModelRegistrySPStub(stack.channel()))  # the 1.x name goes the same way
    latest = api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[-1])
    for expected in range(1, 6):
        created = create_version(registry, model_id, b"v%d" % expected)
        assert created.version_number == expected
        for reader in readers:
            for _ in range(READS_PER_CHECK):
                (info,) = reader.RetrieveVersionInfos(latest).version_infos
                assert (info.version_number, info.data_hash) == (expected, created.data_hash)
                listed = reader.RetrieveModels(api.RetrieveModelsRequest(model_ids=[model_id])).model_infos
                assert [m.model_id for m in listed] == [model_id]
    registry.DeleteModel(api.DeleteModelRequest(model_id=model_id))
    for reader in readers:
        for _ in range(READS_PER_CHECK):
            with pytest.raises(grpc.RpcError) as error:
                reader.RetrieveVersionInfos(latest)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as error:
                reader.RetrieveModels(api.RetrieveModelsRequest(model_ids=[model_id]))
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
