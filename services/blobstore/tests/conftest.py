"""Fixtures of the blobstore tests: opened tiers in tmp dirs, and a running
blobstore server (see `helpers`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.blobstore.store import FileTier, MemoryTier
from services.blobstore.tests.helpers import Blobstore, make_config, start_blobstore


@pytest.fixture
async def file_tier(tmp_path: Path) -> AsyncIterator[FileTier]:
    tier = FileTier(tmp_path)
    await tier.open()
    yield tier
    await tier.close()


@pytest.fixture
def memory_tier() -> MemoryTier:
    return MemoryTier(max_bytes=1000)


@pytest.fixture
async def blobstore(tmp_path: Path) -> AsyncIterator[Blobstore]:
    running, stop = await start_blobstore(make_config(tmp_path))
    yield running
    await stop()
