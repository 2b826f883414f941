"""Replies never exceed REPLY_MAX_BYTES (both backends): a listing with no
count is cut into pages that fit, with a handle that walks everything; a
count or a list of numbers that cannot fit is RESOURCE_EXHAUSTED saying how
many would; batches of ids and numbers resolve in a few queries."""

from __future__ import annotations

import pytest

from services.common.errors import NotFound, ResourceExhausted
from services.common.limits import RequestLimits, listed_item_bytes
from services.metadata.records import Model
from services.metadata.tests.helpers import commit, draft, new_blob_key

BIG = {"blob": "x" * 10_000}
# Room for 3 such items per reply (each is ~10 KiB on the wire).
LIMITS = RequestLimits(user_data_max_bytes=20_000, user_data_max_entries=10, reply_max_bytes=34_000)


@pytest.fixture
def store(database):
    return database.open(limits=LIMITS)


def walk_models(store, count: int = 0) -> list[list[str]]:
    pages, handle = [], ""
    while True:
        page = store.retrieve_models([], count, handle)
        if not page.models:
            return pages
        pages.append([model.model_id for model in page.models])
        handle = page.next_handle


def test_a_listing_with_no_count_is_cut_into_pages_that_fit_and_walk_everything(store):
    for n in range(10):
        store.upsert_model(Model(f"m{n}", BIG))
    store.upsert_model(Model("small"))
    pages = walk_models(store)
    assert [len(page) for page in pages] == [3, 3, 3, 2]
    assert sum(pages, []) == [f"m{n}" for n in range(10)] + ["small"]
    for page in pages:
        assert sum(listed_item_bytes(m, BIG) for m in page) <= LIMITS.reply_max_bytes


def test_a_count_that_does_not_fit_is_resource_exhausted_with_what_fits(store):
    for n in range(5):
        store.upsert_model(Model(f"m{n}", BIG))
    with pytest.raises(ResourceExhausted, match=r"only the first 3 do; ask for at most 3 at a time") as error:
        store.retrieve_models([], 5, "")
    assert "COGMENT_MODEL_REGISTRY_REPLY_MAX_BYTES" in error.value.message
    assert [len(page) for page in walk_models(store, 3)] == [3, 2]


def test_model_ids_with_no_count_are_cut_at_a_position_in_the_list(store):
    for n in range(5):
        store.upsert_model(Model(f"m{n}", BIG))
    ids = ["m4", "m0", "m3", "m1", "m2", "m0"]
    first = store.retrieve_models(ids, 0, "")
    assert [m.model_id for m in first.models] == ["m4", "m0", "m3"] and first.next_handle == "3"
    second = store.retrieve_models(ids, 0, first.next_handle)
    assert [m.model_id for m in second.models] == ["m1", "m2", "m0"] and second.next_handle == "6"
    with pytest.raises(NotFound, match="model 'ghost' not found"):
        store.retrieve_models(["m1", "ghost", "m2"], 0, "")


def test_versions_with_no_count_are_cut_into_pages_too(store):
    store.upsert_model(Model("m"))
    for _ in range(7):
        store.commit_version(draft("m", user_data=BIG), new_blob_key())
    first = store.retrieve_versions("m", [], 0, "")
    assert [v.number for v in first.versions] == [1, 2, 3] and first.next_handle == "4"
    with pytest.raises(ResourceExhausted, match="only the first 3 do"):
        store.retrieve_versions("m", [], 4, "")
    with pytest.raises(ResourceExhausted, match="the 4 versions asked for"):
        store.retrieve_versions("m", [1, 2, 3, 4], 0, "")


def test_many_numbers_resolve_in_request_order(database):
    store = database.open()
    store.upsert_model(Model("m"))
    for _ in range(30):
        commit(store, "m")
    numbers = [-1, 5, -30, 30, 1, -2, 5] * 100
    page = store.retrieve_versions("m", numbers, 0, "")
    expected = [30, 5, 1, 30, 1, 29, 5] * 100
    assert [v.number for v in page.versions] == expected
    with pytest.raises(NotFound, match="has 30 versions, -31 is out of range"):
        store.retrieve_versions("m", [1, -31, 99], 0, "")
    with pytest.raises(NotFound, match="no version 99"):
        store.retrieve_versions("m", [1, 99, -31], 0, "")
    with pytest.raises(NotFound, match="no version 0"):
        store.retrieve_versions("m", [0], 0, "")
