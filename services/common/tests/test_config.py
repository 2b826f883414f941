"""Environment parsing: typed values and messages that name the variable."""

from __future__ import annotations

import pytest

from services.common.config import (
    DEFAULT_SENT_CHUNK_SIZE,
    ConfigError,
    env_bool,
    env_int,
    env_sent_chunk_size,
    grpc_message_limit,
    sent_chunk_size_warning,
)


def test_int_parsing_and_bounds():
    assert env_int("X", 5, {}) == 5
    assert env_int("X", 5, {"X": " 1_000 "}) == 1000
    with pytest.raises(ConfigError, match="X='lots' is not an integer"):
        env_int("X", 5, {"X": "lots"})
    with pytest.raises(ConfigError, match="X=0 must be at least 1"):
        env_int("X", 5, {"X": "0"}, minimum=1)


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("on", True), ("0", False), ("false", False)])
def test_bool_parsing(value, expected):
    assert env_bool("FLAG", not expected, {"FLAG": value}) is expected


def test_bool_rejects_nonsense():
    with pytest.raises(ConfigError, match="FLAG"):
        env_bool("FLAG", False, {"FLAG": "maybe"})


def test_message_limit_fits_the_chunk_size():
    assert grpc_message_limit(5 * 1024 * 1024) == 16 * 1024 * 1024
    assert grpc_message_limit(64 * 1024 * 1024) > 64 * 1024 * 1024


def test_the_default_reply_chunk_fits_a_default_grpc_client():
    assert env_sent_chunk_size({}) == DEFAULT_SENT_CHUNK_SIZE == 2 * 1024 * 1024
    assert sent_chunk_size_warning(DEFAULT_SENT_CHUNK_SIZE) is None


@pytest.mark.parametrize("size, warned", [(4 * 1024 * 1024 - 1024, False), (4 * 1024 * 1024 - 1023, True), (5 * 1024 * 1024, True)])
def test_a_reply_chunk_above_4_mib_minus_1_kib_is_warned_about(size, warned):
    warning = sent_chunk_size_warning(size)
    assert (warning is not None) is warned
    if warned:
        # It names the variable, what breaks, and for whom.
        assert "COGMENT_MODEL_REGISTRY_SENT_MODEL_VERSION_DATA_CHUNK_SIZE" in warning
        assert "Cogment SDK" in warning and "retrieve_model" in warning
