"""Registering a servicer with some methods that skip protobuf.

On the data path, messages are 1 MiB chunks that a service only forwards or
slices (see `services.common.wire`): decoding and re-encoding them would copy
every byte twice. `add_servicer` registers a servicer like its generated
`add_*Servicer_to_server` function, except that the named methods receive
their requests and/or send their responses as encoded bytes. Interceptors
(errors, logging, tracing) wrap these handlers like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc

from services.common.grpc_server import handler_behavior, rebuild_handler


class _HandlerCapture:
    """Stands in for a server to collect the handlers a generated
    `add_*Servicer_to_server` function registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        pass  # the same handlers come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = dict(handlers)


def add_servicer(
    server: grpc.aio.Server,
    servicer: object,
    service: str,
    add_generated: Callable[[object, Any], None],
    *,
    raw_requests: Iterable[str] = (),
    raw_responses: Iterable[str] = (),
) -> None:
    """Registers `servicer` under `service` with the generated handlers,
    methods in `raw_requests` receiving bytes and methods in
    `raw_responses` returning bytes."""
    capture = _HandlerCapture()
    add_generated(servicer, capture)
    handlers = capture.handlers
    raw_requests, raw_responses = set(raw_requests), set(raw_responses)
    unknown = (raw_requests | raw_responses) - handlers.keys()
    if unknown:
        raise ValueError(f"{service} has no method {sorted(unknown)}")
    for name in raw_requests | raw_responses:
        handler = handlers[name]
        handlers[name] = rebuild_handler(
            handler,
            handler_behavior(handler),
            None if name in raw_requests else handler.request_deserializer,
            None if name in raw_responses else handler.response_serializer,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
