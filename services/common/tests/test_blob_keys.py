from services.blobstore.store.base import validate_key
from services.common.blob_keys import holder_of, new_archived_key, new_replica_id, new_transient_key


def test_transient_keys_name_their_replica_and_are_valid_blob_keys():
    replica = new_replica_id()
    key = new_transient_key(replica)
    assert holder_of(key) == replica
    assert validate_key(key) == key
    assert new_transient_key(replica) != key


def test_archived_and_foreign_keys_name_no_replica():
    assert holder_of(new_archived_key()) is None
    for key in ("round-trip", "a-b", "x-0123456789ABCDEF", "x-0123456789abcde", ""):
        assert holder_of(key) is None, key


def test_a_replica_id_must_look_like_one():
    import pytest

    with pytest.raises(ValueError):
        new_transient_key("not-an-id")
