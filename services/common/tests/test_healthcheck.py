"""`python -m services.common.healthcheck KIND`, the containers' health
check: the port and health name of each kind of service are the code's."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.config import SERVICE_PORTS
from services.common.healthcheck import main as healthcheck
from services.common.service_names import HEALTH_CHECKED
from services.launcher.ports import LOOPBACK, free_port


@pytest.fixture
def health_server():
    """A health servicer on a free loopback port, answering for nothing yet."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"{LOOPBACK}:{port}")
    server.start()
    yield servicer, port
    server.stop(0)


@pytest.mark.parametrize("kind", sorted(HEALTH_CHECKED))
def test_a_serving_service_is_healthy_under_the_name_envoy_checks(kind, health_server, monkeypatch, capsys):
    servicer, port = health_server
    variable, _ = SERVICE_PORTS[kind]
    monkeypatch.setenv(variable, str(port))
    assert healthcheck([kind]) == 1  # that name is not SERVING yet (unknown)
    servicer.set(HEALTH_CHECKED[kind], health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck([kind]) == 1
    servicer.set(HEALTH_CHECKED[kind], health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck([kind]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "SERVING"


def test_nobody_listening_is_unhealthy(monkeypatch, capsys):
    monkeypatch.setenv(SERVICE_PORTS["metadata"][0], str(free_port()))
    assert healthcheck(["metadata"]) == 1
    assert capsys.readouterr().err.startswith("unhealthy: UNAVAILABLE")


def test_an_unknown_kind_is_refused(capsys):
    assert healthcheck(["envoy"]) == 2
    assert "frontend,metadata,blobstore" in capsys.readouterr().err
