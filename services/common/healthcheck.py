"""`python -m services.common.healthcheck KIND`: exit 0 when the local
service of that kind (frontend, metadata, blobstore) reports SERVING under
the name Envoy checks it with (container health checks).

The port is the one the service itself listens on: its port variable if
set, else its default.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import config as c
from services.common.service_names import HEALTH_CHECKED


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in c.SERVICE_PORTS:
        print(f"usage: python -m services.common.healthcheck {{{','.join(c.SERVICE_PORTS)}}}", file=sys.stderr)
        return 2
    kind = argv[0]
    variable, default = c.SERVICE_PORTS[kind]
    try:
        port = c.env_int(variable, default, minimum=1)
    except c.ConfigError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_CHECKED[kind]), timeout=2
            )
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
