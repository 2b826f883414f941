"""Database URLs as they may be shown: in logs, errors and descriptions.

Apart from the settings (`config`) and the stores, so that a store can
describe its database without depending on how the service is configured.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def redacted_url(url: str) -> str:
    """A database URL without its password and query options (which may
    hold one too): `postgresql://user@host:port/database`."""
    parts = urlsplit(url)
    user_info, at, hosts = parts.netloc.rpartition("@")
    user = user_info.partition(":")[0]
    return f"{parts.scheme}://{user + '@' if at and user else ''}{hosts}{parts.path}"
