"""Models in the store (both backends): CRUD, listing pages, handles."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.metadata.records import BlobRef, Model
from services.metadata.tests.helpers import commit, numbers


def ids(page) -> list[str]:
    return [model.model_id for model in page.models]


def walk(store, count: int, between_pages=lambda page_index: None) -> list[str]:
    """Every model id a paginated listing returns, calling `between_pages`
    after each page."""
    seen, handle, index = [], "", 0
    while True:
        page = store.retrieve_models([], count, handle)
        if not page.models:
            assert page.next_handle == (handle or "0")  # the last handle yields an empty page
            return seen
        seen += ids(page)
        handle = page.next_handle
        between_pages(index)
        index += 1


def test_upsert_creates_then_replaces_user_data_keeping_versions(store):
    store.upsert_model(Model("m", {"type": "a", "extra": "x"}))
    commit(store, "m")
    commit(store, "m")
    store.upsert_model(Model("m", {"type": "b"}))
    assert store.retrieve_models(["m"], 0, "").models == (Model("m", {"type": "b"}),)
    assert numbers(store, "m") == [1, 2]
    assert commit(store, "m").version.number == 3  # the counter is kept too


def test_upsert_rejects_an_empty_model_id(store):
    with pytest.raises(InvalidArgument, match="model_id must not be empty"):
        store.upsert_model(Model("", {}))


def test_delete_returns_every_blob_with_its_tier(store):
    store.upsert_model(Model("m"))
    transient = commit(store, "m", key="t")
    archived = commit(store, "m", archived=True, key="a")
    assert (transient.version.number, archived.version.number) == (1, 2)
    assert store.delete_model("m") == (BlobRef("t", archived=False), BlobRef("a", archived=True))
    with pytest.raises(NotFound, match="model 'm' not found"):
        store.retrieve_models(["m"], 0, "")
    assert store.find_unreferenced_blobs(["t", "a"]) == ("t", "a")


def test_delete_unknown_model_is_not_found(store):
    with pytest.raises(NotFound, match="model 'ghost' not found"):
        store.delete_model("ghost")


def test_delete_resets_numbering(store):
    store.upsert_model(Model("m"))
    for _ in range(3):
        commit(store, "m")
    store.delete_model("m")
    store.upsert_model(Model("m"))
    assert commit(store, "m").version.number == 1


def test_listing_on_an_empty_database(store):
    page = store.retrieve_models([], 0, "")
    assert page.models == () and page.next_handle == "0"


def test_listing_is_in_creation_order_with_the_last_position_as_handle(store):
    store.upsert_model(Model("zeta", {"k": "v"}))
    store.upsert_model(Model("alpha"))
    store.upsert_model(Model("zeta", {"k": "updated"}))  # an update does not move a model
    page = store.retrieve_models([], 0, "")
    assert page.models == (Model("zeta", {"k": "updated"}), Model("alpha", {}))
    assert page.next_handle == "2"  # as in the original: two models, handle "2"


def test_listing_pages(store):
    for name in "abcde":
        store.upsert_model(Model(name))
    first = store.retrieve_models([], 2, "")
    assert ids(first) == ["a", "b"] and first.next_handle == "2"
    second = store.retrieve_models([], 2, first.next_handle)
    assert ids(second) == ["c", "d"] and second.next_handle == "4"
    third = store.retrieve_models([], 2, second.next_handle)
    assert ids(third) == ["e"] and third.next_handle == "5"
    last = store.retrieve_models([], 2, third.next_handle)
    assert last.models == () and last.next_handle == "5"


def test_a_walk_sees_every_model_once_while_others_come_and_go(store):
    for name in "abcdef":
        store.upsert_model(Model(name))

    def churn(page_index: int) -> None:
        if page_index == 0:  # after [a, b]
            store.delete_model("a")  # already seen
            store.delete_model("d")  # not seen yet: must not shift anything
            store.upsert_model(Model("g"))
        if page_index == 1:
            store.upsert_model(Model("a"))  # re-created: a new model, at the end

    # d, deleted before it was reached, is skipped; nothing else is skipped or repeated.
    assert walk(store, 2, churn) == ["a", "b", "c", "e", "f", "g", "a"]


@pytest.mark.parametrize("count", [1, 2, 3, 0])
def test_walks_of_any_page_size_see_all_models(store, count):
    for index in range(7):
        store.upsert_model(Model(f"m{index}"))
    assert walk(store, count) == [f"m{index}" for index in range(7)]


@pytest.mark.parametrize("handle", ["abc", "-1", "+1", " 1", "1.0", "0x2", "²", "1 "])
def test_listing_rejects_handles_that_are_not_decimal(store, handle):
    store.upsert_model(Model("m"))
    with pytest.raises(InvalidArgument, match="model_handle .* must be a decimal integer; pass an empty"):
        store.retrieve_models([], 0, handle)


def test_listing_rejects_handles_beyond_any_position_ever_assigned(store):
    for name in "abc":
        store.upsert_model(Model(name))
    store.delete_model("c")
    # "3" was issued (position of c) and stays valid after c is gone.
    assert store.retrieve_models([], 0, "3").next_handle == "3"
    with pytest.raises(InvalidArgument, match=r"model_handle '4' .* a model position from 0 to 3"):
        store.retrieve_models([], 0, "4")
    with pytest.raises(InvalidArgument):
        store.retrieve_models([], 0, "99999999999999999999999")


def test_handle_zero_starts_from_the_beginning(store):
    store.upsert_model(Model("a"))
    assert ids(store.retrieve_models([], 0, "0")) == ["a"]


def test_ids_come_back_exactly_in_request_order(store):
    for name in "abc":
        store.upsert_model(Model(name, {"name": name}))
    page = store.retrieve_models(["c", "a", "c"], 0, "")
    assert ids(page) == ["c", "a", "c"]
    assert page.models[0].user_data == {"name": "c"}
    assert page.next_handle == "3"
    assert store.retrieve_models(["b"], 0, "").next_handle == "1"  # as in the original


def test_ids_unknown_is_not_found_naming_it(store):
    store.upsert_model(Model("a"))
    with pytest.raises(NotFound, match="model 'nope' not found"):
        store.retrieve_models(["a", "nope"], 0, "")


def test_ids_empty_one_is_invalid(store):
    store.upsert_model(Model("a"))
    with pytest.raises(InvalidArgument, match=r"model_ids\[1\] must not be empty"):
        store.retrieve_models(["a", ""], 0, "")


def test_ids_are_paged_by_offset(store):
    for name in "abcd":
        store.upsert_model(Model(name))
    request = ["d", "b", "a"]
    first = store.retrieve_models(request, 2, "")
    assert ids(first) == ["d", "b"] and first.next_handle == "2"
    second = store.retrieve_models(request, 2, first.next_handle)
    assert ids(second) == ["a"] and second.next_handle == "3"
    last = store.retrieve_models(request, 2, second.next_handle)
    assert last.models == () and last.next_handle == "3"


def test_ids_handle_beyond_the_list_is_invalid(store):
    store.upsert_model(Model("a"))
    with pytest.raises(InvalidArgument, match=r"a position in the 1 model_ids requested from 0 to 1"):
        store.retrieve_models(["a"], 0, "2")
    with pytest.raises(InvalidArgument, match="decimal integer"):
        store.retrieve_models(["a"], 0, "first")
