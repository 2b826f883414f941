"""What the blocking and the asyncio client share: where the registry is,
how to reach it and what every call sends."""

from __future__ import annotations

from typing import Any

import grpc

from ._common import CHANNEL_OPTIONS, PathLike, call_metadata, resolve_address
from .tls import tls_credentials


class ChannelClient:
    """Resolves the address, credentials and call metadata once, and opens
    the channel with `channel_module`, `grpc` or `grpc.aio` (an asyncio
    channel must be opened in the running event loop: on first use)."""

    channel_module: Any = grpc
    # The blocking client opens its channel at once, as threads may share
    # it from their first call; the asyncio one on first use.
    opens_at_construction = True

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = 60.0,
        ca_cert: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
    ) -> None:
        self.address = resolve_address(address)
        self._credentials = credentials if credentials is not None else tls_credentials(ca_cert, cert, key)
        self._metadata = call_metadata(token, user, password)
        self._timeout = timeout
        self._stubs: dict[type, Any] = {}
        self._channel: Any = self._open_channel() if self.opens_at_construction else None

    def _open_channel(self) -> Any:
        if self._credentials is None:
            return self.channel_module.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        return self.channel_module.secure_channel(self.address, self._credentials, options=CHANNEL_OPTIONS)

    def _stub_of(self, stub_type: type) -> Any:
        stub = self._stubs.get(stub_type)
        if stub is None:
            if self._channel is None:
                self._channel = self._open_channel()
            stub = self._stubs[stub_type] = stub_type(self._channel)
        return stub

    def _close_channel(self) -> Any:
        """Closes the channel if one is open; what its `close()` returned
        (an awaitable for an asyncio channel)."""
        channel, self._channel = self._channel, None
        self._stubs.clear()
        return None if channel is None else channel.close()
