"""Fixtures of the blobstore tests: opened tiers in tmp dirs or buckets of a
moto server, and a running blobstore server (see `helpers`, `tiers`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.blobstore.store import FileTier, MemoryTier
from services.blobstore.tests.helpers import MIB, Blobstore, make_config, start_blobstore
from services.blobstore.tests.tiers import Archive, FileArchive, MemoryUnderTest, S3Archive, S3Server, TierUnderTest

# Test parts: S3's smallest (5 MiB), so multipart uploads stay small.
TEST_PART_SIZE = 5 * MIB


@pytest.fixture
async def file_tier(tmp_path: Path) -> AsyncIterator[FileTier]:
    tier = FileTier(tmp_path)
    await tier.open()
    yield tier
    await tier.close()


@pytest.fixture
def memory_tier() -> MemoryTier:
    """A small budget, for the tests of the budget."""
    return MemoryTier(max_bytes=1000)


@pytest.fixture
async def blobstore(tmp_path: Path) -> AsyncIterator[Blobstore]:
    running, stop = await start_blobstore(make_config(tmp_path))
    yield running
    await stop()


# -- S3 ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-dev.txt)")
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new, empty bucket, with the AWS_* environment pointing at it."""
    s3_server.set_env(monkeypatch)
    name = s3_server.new_bucket_name()
    s3_server.create_bucket(name)
    yield name
    s3_server.remove_bucket(name)


@pytest.fixture
async def s3_archive(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Archive]:
    from services.blobstore.store.s3 import S3Tier

    tier = S3Tier(s3_bucket, "archive", part_size=TEST_PART_SIZE, io_threads=8)
    await tier.open()
    yield S3Archive(tier, s3_server)
    await tier.close()


@pytest.fixture
async def file_archive(file_tier: FileTier, tmp_path: Path) -> FileArchive:
    return FileArchive(file_tier, tmp_path)


@pytest.fixture
async def memory_under_test() -> AsyncIterator[MemoryUnderTest]:
    """A budget that no test of the contract reaches."""
    tier = MemoryTier(max_bytes=64 * MIB)
    await tier.open()
    yield MemoryUnderTest(tier)
    await tier.close()


@pytest.fixture(params=["memory", "file", "s3"])
def under_test(request: pytest.FixtureRequest) -> TierUnderTest:
    """Each tier in turn: the tests of the tier contract run on all three."""
    if request.param == "memory":
        return request.getfixturevalue("memory_under_test")
    return request.getfixturevalue(f"{request.param}_archive")


@pytest.fixture(params=["file", "s3"])
def archive(request: pytest.FixtureRequest) -> Archive:
    """Each archive tier in turn: for the part of the contract kept by the
    tiers whose bytes can rot (verification against a digest)."""
    return request.getfixturevalue(f"{request.param}_archive")
