"""The request limits of the registry: what each one is, and what its message says.

A limit is a bound a request must respect to be served, set by the operator
(an environment variable) or by the protocol. Each limit has one function
here, called by every service that enforces it, so that the bound is
decided once and a client hears the same words whichever service refused
the request.

A limit's function raises the domain error that carries the right status
(`services.common.errors`: RESOURCE_EXHAUSTED for a budget, INVALID_ARGUMENT
for a malformed request), and its message says three things: what the
request asked for, the bound it crossed with the variable that sets it, and
what to do instead.
"""

from __future__ import annotations

from services.common.config import PREFIX
from services.common.errors import ResourceExhausted

VERSION_CACHE_MAX_BYTES = PREFIX + "VERSION_CACHE_MAX_BYTES"


def check_version_fits_cache(*, archived: bool, size: int, max_bytes: int) -> None:
    """A transient version must fit the version cache by itself: it could not
    be kept, and storing it would evict every other transient version for
    nothing. Archived versions are never cached, so any size fits.

    Raises ResourceExhausted when a transient version of `size` bytes
    exceeds `max_bytes` (the cache byte budget).
    """
    if not archived and size > max_bytes:
        raise ResourceExhausted(
            f"a transient version of {size} bytes exceeds the version cache budget of {max_bytes} bytes "
            f"({VERSION_CACHE_MAX_BYTES}); archive it instead"
        )
