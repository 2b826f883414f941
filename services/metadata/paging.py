"""Pagination handles: parsing and validating what clients send back.

A handle is a key the server issued (see docs/design.md, "What does a handle
mean?"); one the server could not have issued is INVALID_ARGUMENT with a
message saying which values are possible.
"""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument, quoted
from services.common.limits import check_handle_length

_DECIMAL = re.compile(r"[0-9]+")


def parse_handle(handle: str, *, field: str, low: int, high: int, meaning: str) -> int:
    """The integer value of a non-empty `handle`, which must lie in [low, high].

    `field` names the request field ("model_handle"); `meaning` says what the
    number is, for the error message ("a model position").
    """
    hint = f"pass an empty {field} to start from the beginning, or the next_{field} of the previous reply"
    # Before int(): Python refuses to convert more than 4,300 digits, and
    # the length alone proves the server never issued it.
    check_handle_length(handle, field=field)
    if not _DECIMAL.fullmatch(handle):
        raise InvalidArgument(f"{field} {quoted(handle)} was not issued by this server: it must be a decimal integer; {hint}")
    value = int(handle)
    if not low <= value <= high:
        raise InvalidArgument(
            f"{field} {quoted(handle)} was not issued by this server: it must be {meaning} from {low} to {high}; {hint}"
        )
    return value
