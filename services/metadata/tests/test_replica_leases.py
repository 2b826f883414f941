"""Blobstore replica leases: metadata forgets the transient versions of a
replica gone for good (replaced in its slot, lease expired, released), and
only those (docs/design.md, "replica identity and leases")."""

from __future__ import annotations

import pytest

from services.common.blob_keys import new_archived_key, new_transient_key
from services.common.errors import InvalidArgument
from services.metadata.records import Model
from services.metadata.tests.helpers import commit, numbers

OLD, NEW, OTHER = "0123456789abcdef", "fedcba9876543210", "00000000000000aa"
SECOND = 10**9


def held(store, replica_id: str, count: int, model_id: str = "m") -> list[int]:
    return [commit(store, model_id, key=new_transient_key(replica_id)).version.number for _ in range(count)]


def test_a_new_id_in_the_same_slot_forgets_the_old_ones_versions_only(store):
    store.upsert_model(Model("m"))
    assert store.renew_replica_lease(OLD, "host:9030", 30, 0) == 0
    assert store.renew_replica_lease(OTHER, "host:9031", 30, 0) == 0
    held(store, OLD, 2)
    kept = held(store, OTHER, 1)
    archived = commit(store, "m", archived=True, key=new_archived_key()).version.number
    # OLD restarted as NEW in its slot: its memory is gone.
    assert store.renew_replica_lease(NEW, "host:9030", 30, SECOND) == 2
    assert numbers(store, "m") == [*kept, archived]
    assert store.resolve_version("m", -1, touch=False).version.number == archived
    # Renewing again forgets nothing more; the counter is untouched.
    assert store.renew_replica_lease(NEW, "host:9030", 30, 2 * SECOND) == 0
    assert commit(store, "m").version.number == archived + 1


def test_an_expired_lease_forgets_its_versions_a_live_one_does_not(store):
    store.upsert_model(Model("m"))
    store.renew_replica_lease(OLD, "a:1", 10, 0)
    store.renew_replica_lease(OTHER, "b:1", 60, 0)
    held(store, OLD, 3)
    held(store, OTHER, 1)
    assert store.expire_replica_leases(9 * SECOND) == 0  # frozen for 9 s: not gone yet
    assert len(numbers(store, "m")) == 4
    assert store.expire_replica_leases(11 * SECOND) == 3
    assert len(numbers(store, "m")) == 1
    # A replica that comes back (thawed) after expiry renews as new.
    assert store.renew_replica_lease(OLD, "a:1", 10, 12 * SECOND) == 0
    assert store.expire_replica_leases(13 * SECOND) == 0


def test_a_released_lease_forgets_at_once(store):
    store.upsert_model(Model("m"))
    store.renew_replica_lease(OLD, "a:1", 30, 0)
    held(store, OLD, 2)
    assert store.renew_replica_lease(OLD, "a:1", 0, SECOND) == 2
    assert numbers(store, "m") == []
    assert store.expire_replica_leases(10**6 * SECOND) == 0


def test_leases_survive_reopening(open_store):
    store = open_store()
    store.upsert_model(Model("m"))
    store.renew_replica_lease(OLD, "a:1", 30, 0)
    held(store, OLD, 1)
    store.close()
    reopened = open_store()
    assert reopened.renew_replica_lease(NEW, "a:1", 30, SECOND) == 1


@pytest.mark.parametrize("replica_id", ["", "%", "0123456789ABCDEF", "0123456789abcde_"])
def test_a_bad_replica_id_is_invalid(store, replica_id):
    with pytest.raises(InvalidArgument):
        store.renew_replica_lease(replica_id, "a:1", 30, 0)
