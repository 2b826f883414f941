"""PostgresSnapshotVersion: when lookups share a snapshot read, and what the
snapshot of a real server does on commits, reads and lost connections."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from services.metadata.records import Model
from services.metadata.snapshot_version import PostgresSnapshotVersion
from services.metadata.store.postgres import PostgresMetadataStore
from services.metadata.tests.helpers import LARGE_BUDGET


class ManualServer(PostgresSnapshotVersion):
    """No server: the test sees each query sent and answers it by hand."""

    def __init__(self) -> None:
        super().__init__("postgresql://unused", timeout=5)
        self._connection = object()  # type: ignore[assignment]  # "connected"
        self.sent = 0

    def _start_query(self) -> None:
        self.sent += 1

    def answer(self) -> None:
        self._answered(f"snapshot {self.sent}")

    def _drop_connection(self) -> None:
        self._connection = None


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lookup_never_shares_a_query_already_in_flight():
    """A query sent before a lookup arrived may predate a commit the caller
    was told of: the lookup waits for the next query."""
    server = ManualServer()
    first = asyncio.create_task(server.current())
    await settle()
    assert server.sent == 1
    second = asyncio.create_task(server.current())
    await settle()
    assert server.sent == 1  # one query at a time
    server.answer()
    assert await first == (0, "snapshot 1")
    await settle()
    assert not second.done() and server.sent == 2
    server.answer()
    assert await second == (0, "snapshot 2")
    await server.close()


async def test_lookups_that_arrive_together_share_one_query():
    server = ManualServer()
    first = asyncio.create_task(server.current())
    await settle()
    waiting = [asyncio.create_task(server.current()) for _ in range(5)]
    await settle()
    server.answer()
    assert await first == (0, "snapshot 1")
    server.answer()
    assert await asyncio.gather(*waiting) == [(0, "snapshot 2")] * 5
    assert server.sent == 2
    await server.close()


async def test_a_lookup_that_gives_up_does_not_cancel_the_others():
    server = ManualServer()
    impatient = asyncio.create_task(server.current())
    patient = asyncio.create_task(server.current())
    await settle()
    impatient.cancel()  # the query in flight is its
    await settle()
    server.answer()
    await settle()
    server.answer()
    assert await patient == (0, "snapshot 2")
    await server.close()


async def test_no_answer_in_time_answers_none_and_stays_quiet_a_while():
    server = ManualServer()
    server._timeout = 0.05
    assert await server.current() is None  # never answered
    assert await server.current() is None and server.sent == 1  # not asked again at once
    await server.close()


async def test_closing_answers_the_lookups_in_flight_with_none():
    server = ManualServer()
    waiting = asyncio.create_task(server.current())
    await settle()
    await server.close()
    assert await waiting is None
    assert await server.current() is None


# -- a real server -------------------------------------------------------------------------

@pytest.mark.postgres
async def test_the_snapshot_moves_on_a_commit_and_not_on_reads(postgres_url):
    version = PostgresSnapshotVersion(postgres_url, timeout=5)
    store = PostgresMetadataStore(postgres_url, LARGE_BUDGET)
    try:
        before = await version.current()
        store.retrieve_models((), 0, "")  # a read-only transaction
        assert await version.current() == before
        store.upsert_model(Model("m"))
        after = await version.current()
        assert after is not None and after != before
    finally:
        store.close()
        await version.close()


@pytest.mark.postgres
async def test_a_lost_connection_answers_none_then_a_new_epoch(postgres_url, postgres_admin, caplog):
    caplog.set_level(logging.INFO, logger="registry.metadata")
    version = PostgresSnapshotVersion(postgres_url, timeout=0.2)
    try:
        before = await version.current()
        assert before is not None
        postgres_admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
            "AND pid <> pg_backend_pid() AND query LIKE '%%pg_current_snapshot%%'",
            (psycopg.conninfo.conninfo_to_dict(postgres_url)["application_name"],),
        )
        assert await version.current() is None
        assert await version.current() is None  # not asked again at once
        await asyncio.sleep(0.25)
        after = await version.current()
        # Whatever the snapshot, a reply kept before is not served after.
        assert after is not None and after[0] == before[0] + 1
        # One line when it stops, one when it is back.
        messages = [record.getMessage() for record in caplog.records]
        assert sum("cannot read the database's snapshot" in m for m in messages) == 1
        assert sum("snapshot reads again" in m for m in messages) == 1
    finally:
        await version.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2",  # nothing listens there
        "postgresql://postgres@127.0.0.1/test?sslmode=bogus",  # libpq refuses the URL
    ],
)
async def test_a_server_it_cannot_connect_to_answers_none_in_time(url):
    version = PostgresSnapshotVersion(url, timeout=1)
    try:
        async with asyncio.timeout(5):
            assert await version.current() is None
    finally:
        await version.close()
