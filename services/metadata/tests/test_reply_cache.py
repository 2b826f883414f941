"""ReplyCache on its own, with a database version the test moves."""

from __future__ import annotations

from services.metadata.reply_cache import ReplyCache


class Database:
    """A `DataVersion` the test moves by hand."""

    def __init__(self) -> None:
        self.version: int | None = 1

    async def current(self) -> int | None:
        return self.version

    async def close(self) -> None:
        pass


KEY = ("RetrieveModels", b"\x08\x01")


async def test_a_reply_is_served_until_the_database_changes():
    database = Database()
    cache = ReplyCache(1 << 20, database)
    reply, version = await cache.lookup(KEY)
    assert reply is None
    cache.put(KEY, version, b"reply")
    assert await cache.lookup(KEY) == (b"reply", 1)
    database.version = 2
    assert await cache.lookup(KEY) == (None, 2)
    assert len(cache) == 0


async def test_a_reply_read_before_a_change_is_not_kept_after_it():
    database = Database()
    cache = ReplyCache(1 << 20, database)
    _, version = await cache.lookup(KEY)
    # While this read was in progress, another request saw the change.
    database.version = 2
    await cache.lookup(("RetrieveModels", b"other"))
    cache.put(KEY, version, b"old")
    assert await cache.lookup(KEY) == (None, 2)


async def test_nothing_is_kept_when_the_database_cannot_say():
    database = Database()
    database.version = None
    cache = ReplyCache(1 << 20, database)
    _, version = await cache.lookup(KEY)
    cache.put(KEY, version, b"reply")
    assert await cache.lookup(KEY) == (None, None)


async def test_the_cache_stays_within_its_bytes():
    database = Database()
    cache = ReplyCache(64 * 100, database)
    _, version = await cache.lookup(KEY)
    cache.put(("m", b"big"), version, b"x" * 101)  # over 1/64 of the budget: not kept
    assert (await cache.lookup(("m", b"big")))[0] is None
    for i in range(200):
        cache.put(("m", str(i).encode()), version, b"x" * 50)
        assert cache._bytes <= cache.max_bytes
    cache.put(("m", b"1"), version, b"y" * 10)
    cache.put(("m", b"1"), version, b"z" * 10)  # replaced, counted once
    assert (await cache.lookup(("m", b"1")))[0] == b"z" * 10
    assert cache._bytes == sum(len(k[0]) + len(k[1]) + len(v) for k, v in cache._entries.items())
