"""Blobstore settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.blobstore.config import BlobstoreConfig
from services.common.config import ConfigError


def test_defaults():
    config = BlobstoreConfig.from_env({})
    assert config.bind_host == "0.0.0.0"
    assert config.port == 9030
    assert config.archive_dir == Path("data")
    assert config.memory_max_bytes == 4 * 1024**3
    assert config.sent_chunk_size == 5 * 1024 * 1024
    assert config.max_message_bytes == 16 * 1024 * 1024
    assert config.internal_address is None
    assert (config.sweep_interval_seconds, config.orphan_grace_seconds) == (300, 600)
    assert config.shutdown_grace_seconds == 10


def test_overrides():
    p = "COGMENT_MODEL_REGISTRY_"
    config = BlobstoreConfig.from_env(
        {
            p + "BIND_HOST": "127.0.0.1",
            p + "BLOBSTORE_PORT": "0",
            p + "ARCHIVE_DIR": "/srv/archive",
            p + "BLOBSTORE_MEMORY_MAX_BYTES": "1_000",
            p + "SENT_MODEL_VERSION_DATA_CHUNK_SIZE": str(32 * 1024 * 1024),
            p + "INTERNAL_ADDRESS": "envoy:9100",
            p + "BLOBSTORE_SWEEP_INTERVAL_SECONDS": "1.5",
            p + "BLOBSTORE_ORPHAN_GRACE_SECONDS": "60",
            p + "SHUTDOWN_GRACE_SECONDS": "2",
        }
    )
    assert (config.bind_host, config.port, config.archive_dir) == ("127.0.0.1", 0, Path("/srv/archive"))
    assert config.memory_max_bytes == 1000
    assert config.max_message_bytes == 33 * 1024 * 1024
    assert config.internal_address == "envoy:9100"
    assert (config.sweep_interval_seconds, config.orphan_grace_seconds) == (1.5, 60)
    assert config.shutdown_grace_seconds == 2


def test_bad_value_names_the_variable():
    with pytest.raises(ConfigError, match="COGMENT_MODEL_REGISTRY_BLOBSTORE_MEMORY_MAX_BYTES"):
        BlobstoreConfig.from_env({"COGMENT_MODEL_REGISTRY_BLOBSTORE_MEMORY_MAX_BYTES": "lots"})
