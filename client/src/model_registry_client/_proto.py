"""The generated stubs of `cogmentAPI.ModelRegistrySP` (see client/generate.py)."""

from __future__ import annotations

from typing import Any

try:
    from ._generated import model_registry_pb2 as pb
    from ._generated import model_registry_pb2_grpc as _pb_grpc
except ImportError as exc:  # pragma: no cover - a build step was skipped
    raise ImportError(
        "model_registry_client's gRPC stubs are missing: run `python client/generate.py` "
        "(needs grpcio-tools) before installing or using the package"
    ) from exc

pb_grpc: Any = _pb_grpc  # the gRPC plugin writes no type stubs

__all__ = ["pb", "pb_grpc"]
