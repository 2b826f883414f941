"""Environment parsing: typed values and messages that name the variable."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, env_bool, env_int, grpc_message_limit


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
