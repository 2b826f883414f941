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
