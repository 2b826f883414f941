"""Importing another registry's archive into the store (both backends):
models created only when missing, versions with their own numbers and
timestamps, gaps kept, idempotent, never altering what is stored."""

from __future__ import annotations

import pytest

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.metadata.records import Model
from services.metadata.tests.helpers import commit, imported, new_blob_key, numbers


def test_a_missing_model_is_created_with_the_given_user_data(store):
    model, created = store.import_model(Model("m", {"type": "ppo"}))
    assert created and model == Model("m", {"type": "ppo"})
    assert store.retrieve_models(["m"], 0, "").models == (Model("m", {"type": "ppo"}),)


def test_an_existing_model_keeps_its_own_user_data(store):
    store.upsert_model(Model("m", {"owner": "me"}))
    model, created = store.import_model(Model("m", {"type": "ppo"}))
    assert not created and model == Model("m", {"owner": "me"})
    assert store.retrieve_models(["m"], 0, "").models == (Model("m", {"owner": "me"}),)


def test_versions_keep_their_numbers_timestamps_and_gaps(store):
    store.import_model(Model("m"))
    first = store.import_version(imported("m", 1, user_data={"step": "1"}), new_blob_key())
    third = store.import_version(imported("m", 3, creation_timestamp=5), new_blob_key())
    assert first.created and third.created
    assert numbers(store, "m") == [1, 3]
    stored = store.retrieve_versions("m", [1, 3], 0, "").versions
    assert [v.creation_timestamp for v in stored] == [1_796_118_000_123_456_789, 5]
    assert stored[0].user_data == {"step": "1"} and all(v.archived for v in stored)
    # The next version created gets the highest imported number + 1.
    assert commit(store, "m").version.number == 4


def test_the_counter_is_never_lowered_and_a_gap_may_be_filled(store):
    store.upsert_model(Model("m"))
    for _ in range(3):
        commit(store, "m")
    store.delete_model("m")
    store.upsert_model(Model("m"))
    store.import_version(imported("m", 5), new_blob_key())
    assert store.import_version(imported("m", 2), new_blob_key()).created  # a gap below the counter
    assert numbers(store, "m") == [2, 5]
    assert commit(store, "m").version.number == 6


def test_importing_the_same_data_again_changes_nothing(store):
    store.import_model(Model("m"))
    key = new_blob_key()
    store.import_version(imported("m", 1), key)
    again = store.import_version(imported("m", 1, creation_timestamp=1, user_data={"x": "y"}), new_blob_key())
    assert not again.created
    assert again.version == store.resolve_version("m", 1, touch=False).version
    assert store.resolve_version("m", 1, touch=False).blob_key == key
    # A retried call with the same blob is that version, not a duplicate.
    retried = store.import_version(imported("m", 1), key)
    assert retried.created and retried.version.number == 1


def test_other_data_under_a_taken_number_is_refused_and_nothing_changes(store):
    store.upsert_model(Model("m"))
    created = commit(store, "m", archived=True).version
    with pytest.raises(AlreadyExists, match="already has a version 1 with other data"):
        store.import_version(imported("m", 1, data_hash="b3RoZXI=", size=created.data_size), new_blob_key())
    assert store.resolve_version("m", 1, touch=False).version == created
    assert commit(store, "m").version.number == 2


def test_refused_imports(store):
    with pytest.raises(NotFound, match="model 'ghost' not found"):
        store.import_version(imported("ghost", 1), new_blob_key())
    store.upsert_model(Model("m"))
    with pytest.raises(InvalidArgument, match="version_number 0"):
        store.import_version(imported("m", 0), new_blob_key())
    with pytest.raises(InvalidArgument, match="data_hash"):
        store.import_version(imported("m", 1, data_hash=""), new_blob_key())
    with pytest.raises(InvalidArgument, match="blob_key"):
        store.import_version(imported("m", 1), "")
    assert numbers(store, "m") == []
