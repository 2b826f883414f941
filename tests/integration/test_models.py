"""Models through Envoy: create/update, list, fetch, delete, pagination."""

from __future__ import annotations

import uuid

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api

from conftest import create_version


def upsert(registry, model_id: str, **user_data: str) -> None:
    registry.CreateOrUpdateModel(
        api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id, user_data=user_data))
    )


def fetch(registry, *ids: str) -> list[api.ModelInfo]:
    return list(registry.RetrieveModels(api.RetrieveModelsRequest(model_ids=list(ids))).model_infos)


def test_create_then_update_replaces_user_data_and_keeps_versions(registry, model_id):
    create_version(registry, model_id, b"v1", archived=True)
    upsert(registry, model_id, kind="updated")
    (info,) = fetch(registry, model_id)
    assert dict(info.user_data) == {"kind": "updated"}
    infos = registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id)).version_infos
    assert [v.version_number for v in infos] == [1]


def test_empty_model_id_is_invalid(registry):
    with pytest.raises(grpc.RpcError) as error:
        upsert(registry, "")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_id" in error.value.details()


def test_retrieve_given_ids_in_request_order(registry):
    a, b, c = (f"order-{uuid.uuid4().hex[:8]}" for _ in range(3))
    for name in (a, b, c):
        upsert(registry, name)
    assert [m.model_id for m in fetch(registry, c, a, b)] == [c, a, b]


def test_unknown_id_is_not_found(registry, model_id):
    with pytest.raises(grpc.RpcError) as error:
        fetch(registry, model_id, "no-such-model")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in error.value.details()


def test_list_contains_every_model(registry):
    names = {f"listed-{uuid.uuid4().hex[:8]}" for _ in range(3)}
    for name in names:
        upsert(registry, name)
    listed = [m.model_id for m in registry.RetrieveModels(api.RetrieveModelsRequest()).model_infos]
    assert names <= set(listed)
    assert len(listed) == len(set(listed))


def test_delete_removes_model_versions_and_data(registry, model_id):
    create_version(registry, model_id, b"archived", archived=True)
    create_version(registry, model_id, b"transient")
    registry.DeleteModel(api.DeleteModelRequest(model_id=model_id))
    with pytest.raises(grpc.RpcError) as error:
        fetch(registry, model_id)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # Re-creating the model starts numbering again.
    upsert(registry, model_id)
    assert create_version(registry, model_id, b"again").version_number == 1


def test_delete_unknown_model_is_not_found(registry):
    with pytest.raises(grpc.RpcError) as error:
        registry.DeleteModel(api.DeleteModelRequest(model_id="never-created"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def walk_models(registry, page_size: int, between_pages=None) -> list[str]:
    seen, handle, pages = [], "", 0
    while True:
        reply = registry.RetrieveModels(api.RetrieveModelsRequest(models_count=page_size, model_handle=handle))
        seen += [m.model_id for m in reply.model_infos]
        pages += 1
        assert pages < 10_000
        if len(reply.model_infos) < page_size:
            # The handle returned with the last page yields an empty page.
            after = registry.RetrieveModels(api.RetrieveModelsRequest(models_count=page_size, model_handle=reply.next_model_handle))
            assert list(after.model_infos) == []
            return seen
        handle = reply.next_model_handle
        if between_pages:
            between_pages(pages)


def test_pagination_walk_sees_every_model_once_despite_concurrent_changes(registry):
    prefix = f"walk-{uuid.uuid4().hex[:6]}"
    stable = [f"{prefix}-{i:02d}" for i in range(12)]
    doomed = [f"{prefix}-doomed-{i}" for i in range(3)]
    for name in stable + doomed:
        upsert(registry, name)
    added = []

    def churn(page: int) -> None:
        if page <= len(doomed):
            registry.DeleteModel(api.DeleteModelRequest(model_id=doomed[page - 1]))
        name = f"{prefix}-new-{page}"
        upsert(registry, name)
        added.append(name)

    seen = walk_models(registry, 4, churn)
    assert len(seen) == len(set(seen)), "a model was returned twice"
    assert set(stable) <= set(seen), "a model present throughout was skipped"
    # Models created while walking come after the handle: all of them are seen.
    assert set(added) <= set(seen)


def test_pages_are_full_but_the_last(registry):
    prefix = f"pages-{uuid.uuid4().hex[:6]}"
    for i in range(5):
        upsert(registry, f"{prefix}-{i}")
    total = len(registry.RetrieveModels(api.RetrieveModelsRequest()).model_infos)
    sizes, handle = [], ""
    while True:
        reply = registry.RetrieveModels(api.RetrieveModelsRequest(models_count=2, model_handle=handle))
        sizes.append(len(reply.model_infos))
        handle = reply.next_model_handle
        if len(reply.model_infos) < 2:
            break
    assert all(size == 2 for size in sizes[:-1])
    assert sum(sizes) == total


@pytest.mark.parametrize("handle", ["not-a-handle", "-1", "99999999"])
def test_handle_not_issued_is_invalid(registry, handle):
    with pytest.raises(grpc.RpcError) as error:
        registry.RetrieveModels(api.RetrieveModelsRequest(models_count=2, model_handle=handle))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "handle" in error.value.details()
