"""Blobstore settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.blobstore.config import BlobstoreConfig, S3Location
from services.common.config import ConfigError


def test_defaults():
    config = BlobstoreConfig.from_env({})
    assert config.bind_host == "0.0.0.0"
    assert config.port == 9030
    assert config.archive_dir == Path("data")
    assert config.archive_s3 is None and config.archive_location == "data"
    assert config.memory_max_bytes == 4 * 1024**3
    assert config.sent_chunk_size == 2 * 1024 * 1024
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


ARCHIVE_URL = "COGMENT_MODEL_REGISTRY_ARCHIVE_URL"


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("s3://models", S3Location("models", "")),
        ("s3://models/", S3Location("models", "")),
        ("s3://my.models-1/registry/prod/", S3Location("my.models-1", "registry/prod")),
        ("", None),
    ],
)
def test_archive_url(url: str, location: S3Location | None):
    config = BlobstoreConfig.from_env({ARCHIVE_URL: url})
    assert config.archive_s3 == location
    if location is not None:
        assert config.archive_location == str(location) == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("/srv/archive", "it has no scheme"),
        ("file:///srv/archive", "the scheme must be s3, not 'file'"),
        ("https://s3.amazonaws.com/models", "the scheme must be s3, not 'https'"),
        ("s3://", "'' is not a bucket name"),
        ("s3://localhost:9000/models", "goes in AWS_ENDPOINT_URL"),
        ("s3://models/a//b", "empty, '.' or '..' segment"),
        ("s3://models/../b", "empty, '.' or '..' segment"),
        ("s3://models?region=eu", "a query or fragment has no meaning here"),
    ],
)
def test_a_bad_archive_url_names_the_variable(url: str, reason: str):
    with pytest.raises(ConfigError) as error:
        BlobstoreConfig.from_env({ARCHIVE_URL: url})
    assert str(error.value).startswith(f"{ARCHIVE_URL}={url!r} is not usable: ")
    assert reason in str(error.value) and "s3://bucket/prefix" in str(error.value)


def test_credentials_in_the_archive_url_are_not_echoed():
    with pytest.raises(ConfigError) as error:
        BlobstoreConfig.from_env({ARCHIVE_URL: "s3://AKIA:secret@models"})
    assert "secret" not in str(error.value) and ARCHIVE_URL in str(error.value)
    assert "AWS_ACCESS_KEY_ID" in str(error.value)
