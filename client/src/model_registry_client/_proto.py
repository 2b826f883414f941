"""The generated stubs of `cogmentAPI.ModelRegistrySP` and `registry.Admin`
(see client/generate.py: they live in a descriptor pool of their own)."""

from __future__ import annotations

from typing import Any

try:
    from ._generated import admin_pb2 as admin_pb
    from ._generated import admin_pb2_grpc as _admin_pb_grpc
    from ._generated import model_registry_pb2 as pb
    from ._generated import model_registry_pb2_grpc as _pb_grpc
except ImportError as exc:  # pragma: no cover - a build step was skipped
    raise ImportError(
        "model_registry_client's gRPC stubs are missing: run `python client/generate.py` "
        "(needs grpcio-tools) before installing or using the package"
    ) from exc

# The gRPC plugin writes no type stubs.
pb_grpc: Any = _pb_grpc
admin_pb_grpc: Any = _admin_pb_grpc

__all__ = ["admin_pb", "admin_pb_grpc", "pb", "pb_grpc"]
