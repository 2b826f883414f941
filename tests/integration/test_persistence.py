"""Archived versions survive `make down` / `make up`; transient ones, which
live in memory only, do not; numbers are never reused across a restart."""

from __future__ import annotations

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api

from conftest import create_version, read_data


def test_archived_versions_survive_a_restart(stack, registry, model_id):
    archived = create_version(registry, model_id, b"durable bytes", archived=True)
    transient = create_version(registry, model_id, b"memory only")
    stack.down()
    stack.up()
    assert read_data(registry, model_id, archived.version_number) == b"durable bytes"
    (info,) = registry.RetrieveVersionInfos(
        api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[archived.version_number])
    ).version_infos
    assert info == archived
    with pytest.raises(grpc.RpcError) as error:
        read_data(registry, model_id, transient.version_number)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert create_version(registry, model_id, b"after restart").version_number == transient.version_number + 1
