"""Versions in the store (both backends): listing, resolution, commit."""

from __future__ import annotations

import time

import pytest

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.metadata.records import CacheBudget, Model, VersionDraft
from services.metadata.tests.helpers import commit, draft, numbers


@pytest.fixture
def model(store) -> str:
    store.upsert_model(Model("m"))
    return "m"


def page_numbers(page) -> list[int]:
    return [version.number for version in page.versions]


# -- listing -----------------------------------------------------------------


def test_a_model_without_versions_lists_nothing(store, model):
    page = store.retrieve_versions(model, [], 0, "")
    assert page.versions == () and page.next_handle == "1"
    assert store.retrieve_versions(model, [], 0, "1").next_handle == "1"
    with pytest.raises(InvalidArgument, match=r"a version number of model 'm' from 1 to 1"):
        store.retrieve_versions(model, [], 0, "2")


def test_unknown_model_is_not_found(store):
    with pytest.raises(NotFound, match="model 'ghost' not found"):
        store.retrieve_versions("ghost", [], 0, "")
    with pytest.raises(NotFound, match="model 'ghost' not found"):
        store.retrieve_versions("ghost", [1], 0, "")


def test_listing_all_versions(store, model):
    commit(store, model)
    commit(store, model)
    page = store.retrieve_versions(model, [], 0, "")
    assert page_numbers(page) == [1, 2] and page.next_handle == "3"  # as in the original


def test_listing_pages_by_number(store, model):
    for _ in range(5):
        commit(store, model)
    first = store.retrieve_versions(model, [], 2, "")
    assert page_numbers(first) == [1, 2] and first.next_handle == "3"
    second = store.retrieve_versions(model, [], 2, first.next_handle)
    assert page_numbers(second) == [3, 4] and second.next_handle == "5"
    third = store.retrieve_versions(model, [], 2, second.next_handle)
    assert page_numbers(third) == [5] and third.next_handle == "6"
    last = store.retrieve_versions(model, [], 2, third.next_handle)
    assert last.versions == () and last.next_handle == "6"


def test_a_version_walk_skips_evicted_versions_and_sees_new_ones(open_store):
    store = open_store(CacheBudget(max_items=3, max_bytes=10**9))
    store.upsert_model(Model("m"))
    for _ in range(3):
        commit(store, "m")
    first = store.retrieve_versions("m", [], 2, "")
    assert page_numbers(first) == [1, 2]
    commit(store, "m")  # 4 evicts 1 (already seen)
    commit(store, "m")  # 5 evicts 2
    rest = store.retrieve_versions("m", [], 0, first.next_handle)
    assert page_numbers(rest) == [3, 4, 5]


@pytest.mark.parametrize("handle", ["0", "x", "-1", "1.5", "4"])
def test_listing_rejects_handles_the_server_could_not_have_issued(store, model, handle):
    commit(store, model)
    commit(store, model)  # valid handles: 1..3
    with pytest.raises(InvalidArgument, match="version_handle"):
        store.retrieve_versions(model, [], 0, handle)


def test_the_handle_after_the_last_number_is_valid_and_empty(store, model):
    commit(store, model)
    page = store.retrieve_versions(model, [], 0, "2")
    assert page.versions == () and page.next_handle == "2"
    with pytest.raises(InvalidArgument, match=r"version_handle '3' .* a version number of model 'm' from 1 to 2"):
        store.retrieve_versions(model, [], 0, "3")


def test_listing_with_numbers_resolves_each_in_request_order(store, model):
    for _ in range(3):
        commit(store, model)
    page = store.retrieve_versions(model, [3, 1, -1], 1, "garbage-is-ignored")
    assert page_numbers(page) == [3, 1, 3]
    assert page.next_handle == "4"
    assert store.retrieve_versions(model, [1], 0, "").next_handle == "2"  # as in the original


def test_listing_with_numbers_fails_on_any_missing_one(store, model):
    commit(store, model)
    with pytest.raises(NotFound, match="model 'm' has no version 2"):
        store.retrieve_versions(model, [1, 2], 0, "")


def test_negative_number_example_of_the_original(store, model):
    commit(store, model)
    commit(store, model)
    page = store.retrieve_versions(model, [-2], 0, "")
    assert page_numbers(page) == [1] and page.next_handle == "2"


# -- resolution ----------------------------------------------------------------


def test_resolution_of_positive_and_negative_numbers(store, model):
    keys = [commit(store, model, key=f"k{n}").version for n in range(1, 4)]
    assert [v.number for v in keys] == [1, 2, 3]
    assert store.resolve_version(model, 2, touch=False).blob_key == "k2"
    assert store.resolve_version(model, -1, touch=False).version.number == 3
    assert store.resolve_version(model, -3, touch=False).version.number == 1


def test_resolution_failures_say_what_exists(store, model):
    with pytest.raises(NotFound, match="model 'm' has no versions, -1 is out of range"):
        store.resolve_version(model, -1, touch=False)
    commit(store, model)
    commit(store, model)
    with pytest.raises(NotFound, match="model 'm' has 2 versions, -3 is out of range"):
        store.resolve_version(model, -3, touch=False)
    with pytest.raises(NotFound, match=r"model 'm' has no version 7 \(the last version created is 2\)"):
        store.resolve_version(model, 7, touch=False)
    with pytest.raises(NotFound, match="model 'm' has no version 0: versions are numbered from 1"):
        store.resolve_version(model, 0, touch=False)
    with pytest.raises(NotFound, match="model 'x' not found"):
        store.resolve_version("x", 1, touch=False)
    with pytest.raises(NotFound):
        store.resolve_version(model, -(2**31), touch=False)


def test_negative_numbers_count_only_versions_that_exist(open_store):
    store = open_store(CacheBudget(max_items=2, max_bytes=10**9))
    store.upsert_model(Model("m"))
    for _ in range(4):
        commit(store, "m")  # 1 and 2 are evicted
    assert store.resolve_version("m", -2, touch=False).version.number == 3
    with pytest.raises(NotFound, match="has 2 versions, -3 is out of range"):
        store.resolve_version("m", -3, touch=False)
    with pytest.raises(NotFound, match=r"has no version 1 \(it was evicted from the transient version cache\)"):
        store.resolve_version("m", 1, touch=False)


# -- commit ------------------------------------------------------------------------


def test_commit_returns_the_full_version(store, model):
    before = time.time_ns()
    result = store.commit_version(
        draft(model, archived=True, size=42, data_hash="abc=", user_data={"step": "7"}), "key-1"
    )
    assert result.created and result.evicted == ()
    version = result.version
    assert (version.model_id, version.number, version.archived) == ("m", 1, True)
    assert (version.data_hash, version.data_size, version.user_data) == ("abc=", 42, {"step": "7"})
    assert before <= version.creation_timestamp <= time.time_ns()
    assert store.retrieve_versions(model, [1], 0, "").versions == (version,)


def test_commit_keeps_a_given_creation_timestamp(store, model):
    result = store.commit_version(draft(model, creation_timestamp=123456789), "key")
    assert result.version.creation_timestamp == 123456789


@pytest.mark.parametrize(
    "changes,blob_key,message",
    [
        ({"model_id": ""}, "k", "version_info.model_id must not be empty"),
        ({}, "", "blob_key must not be empty"),
        ({"data_hash": ""}, "k", "version_info.data_hash must not be empty"),
        ({"data_size": 2**63, "archived": True}, "k", "data_size .* out of range"),
        ({"creation_timestamp": 2**64 - 1}, "k", "creation_timestamp .* out of range"),
    ],
)
def test_commit_rejects_incomplete_requests(store, model, changes, blob_key, message):
    fields = {"model_id": model, "archived": False, "data_size": 1, "data_hash": "h", **changes}
    with pytest.raises(InvalidArgument, match=message):
        store.commit_version(VersionDraft(**fields), blob_key)
    assert numbers(store, model) == []


def test_commit_to_an_unknown_model_is_not_found(store):
    with pytest.raises(NotFound, match="model 'ghost' not found"):
        store.commit_version(draft("ghost"), "k")


def test_commit_is_idempotent_per_blob_key(store, model):
    first = store.commit_version(draft(model), "same-key")
    retry = store.commit_version(draft(model), "same-key")
    assert retry.version == first.version
    assert not retry.created and retry.evicted == ()
    assert numbers(store, model) == [1]
    assert commit(store, model).version.number == 2


def test_a_blob_key_cannot_be_committed_to_two_models(store, model):
    store.upsert_model(Model("other"))
    store.commit_version(draft(model), "shared")
    with pytest.raises(AlreadyExists, match="already committed as version 1 of model 'm'"):
        store.commit_version(draft("other"), "shared")


def test_find_unreferenced_blobs(store, model):
    commit(store, model, key="used-1")
    commit(store, model, key="used-2", archived=True)
    keys = ["orphan-1", "used-1", "orphan-2", "used-2", "orphan-1"]
    assert store.find_unreferenced_blobs(keys) == ("orphan-1", "orphan-2")
    assert store.find_unreferenced_blobs([]) == ()
    many = [f"k{i}" for i in range(1200)] + ["used-1"]
    assert store.find_unreferenced_blobs(many) == tuple(many[:-1])


def test_forget_lost_version_removes_only_that_transient_version(store, model):
    commit(store, model, key="lost")
    commit(store, model, key="kept-archived", archived=True)
    commit(store, model, key="kept")
    assert store.forget_lost_version("lost") is True
    assert numbers(store, model) == [2, 3]
    # Archived data is never forgotten this way; unknown keys are not an error.
    assert store.forget_lost_version("kept-archived") is False
    assert store.forget_lost_version("lost") is False
    assert store.forget_lost_version("never-seen") is False
    assert numbers(store, model) == [2, 3]
    # The number is not reused.
    assert commit(store, model, key="next").version.number == 4
