"""Metadata settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import PREFIX, ConfigError
from services.metadata.config import MetadataConfig


def config(**variables: str) -> MetadataConfig:
    return MetadataConfig.from_env({PREFIX + name: value for name, value in variables.items()})


def test_defaults():
    c = config()
    assert (c.bind_host, c.port) == ("0.0.0.0", 9020)
    assert c.database_path == Path("./data").resolve() / "metadata.sqlite3"
    assert (c.version_cache_max_items, c.version_cache_max_bytes) == (100, 2147483648)
    assert c.shutdown_grace_seconds == 10.0
    assert c.max_message_bytes == 16 * 1024 * 1024


def test_every_variable_is_read(tmp_path):
    c = config(
        BIND_HOST="127.0.0.1",
        METADATA_PORT="0",
        METADATA_READS_PORT="9321",
        ARCHIVE_DIR=str(tmp_path),
        VERSION_CACHE_MAX_ITEMS="7",
        VERSION_CACHE_MAX_BYTES="1_000",
        SHUTDOWN_GRACE_SECONDS="2.5",
        SENT_MODEL_VERSION_DATA_CHUNK_SIZE=str(64 * 1024 * 1024),
    )
    assert (c.bind_host, c.port, c.database_path) == ("127.0.0.1", 0, tmp_path / "metadata.sqlite3")
    assert c.reads_port == 9321
    assert (c.cache_budget.max_items, c.cache_budget.max_bytes) == (7, 1000)
    assert c.shutdown_grace_seconds == 2.5
    assert c.max_message_bytes > 64 * 1024 * 1024


def test_a_sqlite_url_overrides_the_archive_dir(tmp_path):
    assert str(tmp_path).startswith("/")
    c = config(ARCHIVE_DIR=str(tmp_path / "ignored"), METADATA_URL=f"sqlite://{tmp_path}/elsewhere.db")
    assert c.database_path == tmp_path / "elsewhere.db"
    # SQLAlchemy writes absolute paths with four slashes: the same file.
    assert config(METADATA_URL=f"sqlite:///{tmp_path}/elsewhere.db").database_path == tmp_path / "elsewhere.db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:secret@db:5432/registry",
        "postgres://registry@db/registry?sslmode=require&options=-csearch_path%3Dregistry",
        "postgresql:///registry",  # local socket, user and password from PG* / ~/.pgpass
    ],
)
def test_a_postgresql_url_selects_postgresql(url):
    c = config(ARCHIVE_DIR="/ignored", METADATA_URL=url)
    assert c.postgres_url == url and c.database_path is None
    assert "secret" not in repr(c) and "secret" not in c.database_description
    assert c.database_description.split("?")[0] == url.replace(":secret", "").split("?")[0]


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user:secret@x",
        "/just/a/path",
        "postgresql://user:secret@db:port/registry",
        "postgresql://user:secret@db/registry?no_such_option=secret",
    ],
)
def test_other_urls_fail_naming_the_variable_without_echoing_secrets(url):
    with pytest.raises(ConfigError, match="COGMENT_MODEL_REGISTRY_METADATA_URL") as error:
        config(METADATA_URL=url)
    assert "secret" not in str(error.value)
    assert "sqlite:///absolute/path" in str(error.value) or "port" in str(error.value)


@pytest.mark.parametrize("url", ["sqlite://relative.db", "sqlite:///", "sqlite://host/db", "sqlite:///x.db?mode=ro"])
def test_malformed_sqlite_urls_fail(url):
    with pytest.raises(ConfigError, match="COGMENT_MODEL_REGISTRY_METADATA_URL"):
        config(METADATA_URL=url)


@pytest.mark.parametrize("name", ["VERSION_CACHE_MAX_ITEMS", "VERSION_CACHE_MAX_BYTES"])
def test_cache_limits_must_be_positive(name):
    with pytest.raises(ConfigError, match=f"{PREFIX}{name}=0 must be at least 1"):
        config(**{name: "0"})
