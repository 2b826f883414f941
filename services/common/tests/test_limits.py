"""The registry's request limits and their messages."""

from __future__ import annotations

import pytest

from services.common.errors import ResourceExhausted
from services.common.limits import check_version_fits_cache


def test_a_transient_version_larger_than_the_cache_is_refused_with_what_to_do():
    with pytest.raises(ResourceExhausted) as error:
        check_version_fits_cache(archived=False, size=101, max_bytes=100)
    assert error.value.message == (
        "a transient version of 101 bytes exceeds the version cache budget of 100 bytes "
        "(COGMENT_MODEL_REGISTRY_VERSION_CACHE_MAX_BYTES); archive it instead"
    )


def test_a_transient_version_of_exactly_the_budget_fits():
    check_version_fits_cache(archived=False, size=100, max_bytes=100)


def test_an_archived_version_of_any_size_fits():
    check_version_fits_cache(archived=True, size=2**63, max_bytes=100)


# -- request limits -------------------------------------------------------------

from services.common.config import ConfigError  # noqa: E402
from services.common.errors import InvalidArgument  # noqa: E402
from services.common.limits import RequestLimits, check_handle_length  # noqa: E402

LIMITS = RequestLimits(model_id_max_bytes=8, max_model_ids=2, max_version_numbers=3, user_data_max_entries=2, user_data_max_bytes=10)


@pytest.mark.parametrize(
    "model_id,message",
    [
        ("", "model_id must not be empty"),
        ("123456789", "is 9 bytes long (UTF-8), over the limit of 8 bytes (COGMENT_MODEL_REGISTRY_MODEL_ID_MAX_BYTES)"),
        ("ééééé", "is 10 bytes long (UTF-8)"),
        ("a\0b", "contains a NUL character"),
    ],
)
def test_model_ids_are_bounded_in_utf8_bytes_and_have_no_nul(model_id, message):
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        LIMITS.check_model_id(model_id)


def test_a_model_id_at_the_limit_is_fine():
    LIMITS.check_model_id("12345678")
    LIMITS.check_model_id("éééé")


def test_a_long_model_id_is_quoted_cut_short():
    with pytest.raises(InvalidArgument) as error:
        LIMITS.check_model_id("x" * 20_000)
    assert len(error.value.message) < 500 and "(20000 characters)" in error.value.message


def test_lists_and_user_data_are_bounded():
    with pytest.raises(InvalidArgument, match="model_ids has 3 entries, over the limit of 2 .*MAX_MODEL_IDS"):
        LIMITS.check_model_ids(["a", "b", "c"])
    with pytest.raises(InvalidArgument, match=r"model_ids\[1\] must not be empty"):
        LIMITS.check_model_ids(["a", ""])
    with pytest.raises(InvalidArgument, match="version_numbers has 4 entries.*MAX_VERSION_NUMBERS"):
        LIMITS.check_version_numbers([1, 2, 3, 4])
    with pytest.raises(InvalidArgument, match="user_data has 3 entries.*USER_DATA_MAX_ENTRIES"):
        LIMITS.check_user_data({"a": "", "b": "", "c": ""})
    with pytest.raises(InvalidArgument, match="holds 11 bytes.*USER_DATA_MAX_BYTES"):
        LIMITS.check_user_data({"key": "12345678"})
    LIMITS.check_user_data({"key": "1234567"})


def test_a_handle_of_5000_digits_is_refused_before_conversion():
    with pytest.raises(InvalidArgument, match="was not issued by this server"):
        check_handle_length("9" * 5000, field="model_handle")


def test_limits_come_from_the_environment_and_must_hold_one_item_per_reply():
    env = {"COGMENT_MODEL_REGISTRY_MAX_MODEL_IDS": "5", "COGMENT_MODEL_REGISTRY_UPLOAD_IDLE_TIMEOUT_SECONDS": "2.5"}
    limits = RequestLimits.from_env(env)
    assert (limits.max_model_ids, limits.upload_idle_timeout_seconds) == (5, 2.5)
    assert RequestLimits.from_env({}) == RequestLimits()
    # The README's defaults for the idle timeouts (the stack's idle test runs with shorter ones).
    assert (RequestLimits().upload_idle_timeout_seconds, RequestLimits().download_idle_timeout_seconds) == (30, 30)
    with pytest.raises(ConfigError, match="COGMENT_MODEL_REGISTRY_REPLY_MAX_BYTES=1000 cannot hold one"):
        RequestLimits.from_env({"COGMENT_MODEL_REGISTRY_REPLY_MAX_BYTES": "1000"})
    with pytest.raises(ConfigError, match="UPLOAD_IDLE_TIMEOUT_SECONDS=0.0 must be a positive"):
        RequestLimits.from_env({"COGMENT_MODEL_REGISTRY_UPLOAD_IDLE_TIMEOUT_SECONDS": "0"})
