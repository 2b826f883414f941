"""Small builders shared by the metadata tests."""

from __future__ import annotations

import itertools
from pathlib import Path

from services.common.config import PREFIX
from services.metadata.config import MetadataConfig
from services.metadata.records import CacheBudget, Commit, Version, VersionDraft
from services.metadata.store.base import MetadataStore

_keys = itertools.count(1)

# Roomy enough that nothing is evicted unless a test asks for it.
LARGE_BUDGET = CacheBudget(max_items=1000, max_bytes=10**12)
# The budget of the gRPC test server: small, so that tests see eviction.
SERVICE_CACHE_MAX_ITEMS = 3
SERVICE_CACHE_MAX_BYTES = 1000


def new_blob_key() -> str:
    return f"blob-{next(_keys)}"


def draft(model_id: str, *, archived: bool = False, size: int = 10, **fields) -> VersionDraft:
    fields.setdefault("data_hash", "aGFzaA==")
    return VersionDraft(model_id=model_id, archived=archived, data_size=size, **fields)


def commit(
    store: MetadataStore, model_id: str, *, archived: bool = False, size: int = 10, key: str | None = None
) -> Commit:
    """Commits a version with a fresh blob key unless `key` is given."""
    blob_key = new_blob_key() if key is None else key
    return store.commit_version(draft(model_id, archived=archived, size=size), blob_key)


def imported(model_id: str, number: int, *, data_hash: str = "aGFzaA==", size: int = 10, **fields) -> Version:
    """A version as an import gives it: its own number and timestamp."""
    fields.setdefault("creation_timestamp", 1_796_118_000_123_456_789)
    return Version(model_id=model_id, number=number, archived=True, data_hash=data_hash, data_size=size, **fields)


def numbers(store: MetadataStore, model_id: str) -> list[int]:
    return [v.number for v in store.retrieve_versions(model_id, [], 0, "").versions]


def test_config(tmp_path: Path, **overrides: str) -> MetadataConfig:
    env = {
        PREFIX + "ARCHIVE_DIR": str(tmp_path),
        PREFIX + "BIND_HOST": "127.0.0.1",
        PREFIX + "METADATA_PORT": "0",
        PREFIX + "METADATA_READS_PORT": "0",
        **{PREFIX + name: value for name, value in overrides.items()},
    }
    return MetadataConfig.from_env(env)


test_config.__test__ = False  # a builder, not a test


async def watch_versions(registry, model_id: str, after_version: int | None = None, incarnation: int = 0):
    """`registry.watch_versions` without its first event (`WatchStart`):
    the versions only, as most tests want them."""
    from contextlib import aclosing

    from services.metadata.records import WatchStart

    async with aclosing(registry.watch_versions(model_id, after_version, incarnation)) as events:
        async for event in events:
            if not isinstance(event, WatchStart):
                yield event
