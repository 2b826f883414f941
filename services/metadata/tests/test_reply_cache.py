"""ReplyCache on its own, with a database version the test moves."""

from __future__ import annotations

from services.metadata.reply_cache import ReplyCache


class Database:
    def __init__(self) -> None:
        self.version: int | None = 1

    def data_version(self) -> int | None:
        return self.version


KEY = ("RetrieveModels", b"\x08\x01")


def test_a_reply_is_served_until_the_database_changes():
    database = Database()
    cache = ReplyCache(1 << 20, database.data_version)
    reply, version = cache.lookup(KEY)
    assert reply is None
    cache.put(KEY, version, b"reply")
    assert cache.lookup(KEY) == (b"reply", 1)
    database.version = 2
    assert cache.lookup(KEY) == (None, 2)
    assert len(cache) == 0


def test_a_reply_read_before_a_change_is_not_kept_after_it():
    database = Database()
    cache = ReplyCache(1 << 20, database.data_version)
    _, version = cache.lookup(KEY)
    # While this read was in progress, another request saw the change.
    database.version = 2
    cache.lookup(("RetrieveModels", b"other"))
    cache.put(KEY, version, b"old")
    assert cache.lookup(KEY) == (None, 2)


def test_nothing_is_kept_when_the_database_cannot_say():
    database = Database()
    database.version = None
    cache = ReplyCache(1 << 20, database.data_version)
    _, version = cache.lookup(KEY)
    cache.put(KEY, version, b"reply")
    assert cache.lookup(KEY) == (None, None)


def test_the_cache_stays_within_its_bytes():
    database = Database()
    cache = ReplyCache(64 * 100, database.data_version)
    _, version = cache.lookup(KEY)
    cache.put(("m", b"big"), version, b"x" * 101)  # over 1/64 of the budget: not kept
    assert cache.lookup(("m", b"big"))[0] is None
    for i in range(200):
        cache.put(("m", str(i).encode()), version, b"x" * 50)
        assert cache._bytes <= cache.max_bytes
    cache.put(("m", b"1"), version, b"y" * 10)
    cache.put(("m", b"1"), version, b"z" * 10)  # replaced, counted once
    assert cache.lookup(("m", b"1"))[0] == b"z" * 10
    assert cache._bytes == sum(len(k[0]) + len(k[1]) + len(v) for k, v in cache._entries.items())
