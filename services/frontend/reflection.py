"""gRPC reflection for the public port, with JSON field names.

Python's generated code embeds descriptors without `json_name`, and grpcurl
then prints proto field names (`model_infos`) instead of the JSON names the
original registry's examples show (`modelInfos`). Reflection is therefore
served from a pool of the same files with `json_name` filled in.
"""

from __future__ import annotations

import grpc
from cogment import model_registry_pb2 as legacy_pb2
from cogmentAPI import common_pb2
from cogmentAPI import model_registry_pb2 as api_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from services.common import service_names

# Dependencies before the files that import them.
_FILES = (common_pb2, api_pb2, legacy_pb2, health_pb2, reflection_pb2)


def json_name(field_name: str) -> str:
    """protobuf's lowerCamelCase JSON name: underscores dropped, next letter upper."""
    parts = field_name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def _with_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        if not field.HasField("json_name"):
            field.json_name = json_name(field.name)
    for nested in message.nested_type:
        _with_json_names(nested)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in _FILES:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for message in proto.message_type:
            _with_json_names(message)
        pool.Add(proto)
    return pool


def enable_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    reflection.enable_server_reflection(
        (*services, service_names.HEALTH, reflection.SERVICE_NAME), server, pool=reflection_pool()
    )

