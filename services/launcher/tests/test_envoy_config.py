"""The rendered Envoy configuration: accepted by the real Envoy binary, and
shaped the way the registry relies on."""

from __future__ import annotations

import subprocess

import pytest

from services.common import service_names
from services.common.grpc_client import UPSTREAM_HEADER
from services.common.grpc_server import HEALTH_METHOD_PREFIX
from services.frontend.upstream import METADATA
from services.launcher.compose import compose_topology
from services.launcher.envoy_config import render_envoy_config, render_envoy_yaml
from services.launcher.stack import envoy_binary
from services.launcher.topology import Endpoint, StackTopology

ENVOY = envoy_binary()


def local_topology(**overrides) -> StackTopology:
    values = dict(
        public_host="127.0.0.1",
        public_port=19000,
        internal_host="127.0.0.1",
        internal_port=19100,
        admin_host="127.0.0.1",
        admin_port=19901,
        frontends=(Endpoint("127.0.0.1", 19010), Endpoint("127.0.0.1", 19011)),
        metadata=(Endpoint("127.0.0.1", 19020),),
        metadata_reads=(Endpoint("127.0.0.1", 19021),),
        blobstores=tuple(Endpoint("127.0.0.1", 19030 + i) for i in range(3)),
    )
    values.update(overrides)
    return StackTopology(**values)


@pytest.mark.parametrize(
    "topology",
    [
        local_topology(),
        local_topology(otlp_collector=Endpoint("127.0.0.1", 4317)),
        local_topology(otlp_collector=Endpoint("127.0.0.1", 4317), span_export_delay_ms=200),
        compose_topology(),
    ],
    ids=["local", "local-traced", "local-traced-export-delay", "compose"],
)
def test_envoy_accepts_the_config(tmp_path, topology):
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_yaml(topology))
    result = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def routes(config: dict, listener: str) -> list[dict]:
    (found,) = [l for l in config["static_resources"]["listeners"] if l["name"] == listener]
    manager = found["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["stream_idle_timeout"] == "0s", "idle streams (VersionUpdate) must not be cut"
    return manager["route_config"]["virtual_hosts"][0]["routes"]


def test_no_route_timeout_can_cut_a_stream():
    config = render_envoy_config(local_topology())
    for listener in ("public", "internal"):
        for route in routes(config, listener):
            assert route["route"]["timeout"] == "0s"
            assert route["route"]["idle_timeout"] == "0s"


def test_every_blobstore_replica_is_a_health_checked_host():
    config = render_envoy_config(local_topology())
    (blob_route,) = [r for r in routes(config, "internal") if r["match"].get("prefix") == f"/{service_names.BLOBSTORE}/"]
    assert "hash_policy" not in blob_route["route"]  # frontends pick replicas themselves
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "blobstore"]
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    assert cluster["health_checks"]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert len(endpoints) == 3


def test_the_internal_listener_answers_for_metadata_health_and_the_stack_health():
    """The frontends ask Envoy whether metadata has a healthy replica (the
    blobstores they call themselves): a health check naming its cluster.
    Any other health check is the whole stack's, answered by a frontend:
    the launcher's check when the public port wants TLS or mTLS."""
    internal = routes(render_envoy_config(local_topology()), "internal")
    health_routes = [r for r in internal if r["match"]["prefix"] == HEALTH_METHOD_PREFIX]
    assert [(r["match"].get("headers"), r["route"]["cluster"]) for r in health_routes] == [
        ([{"name": UPSTREAM_HEADER, "string_match": {"exact": METADATA}}], "metadata"),
        (None, "frontend"),
    ]


def test_the_small_public_reads_go_straight_to_metadata_everything_else_to_a_frontend():
    config = render_envoy_config(local_topology(metadata_reads=(Endpoint("127.0.0.1", 19021), Endpoint("127.0.0.1", 19023))))
    public = routes(config, "public")
    to_metadata = {r["match"]["path"] for r in public if r["route"]["cluster"] == "metadata_reads"}
    assert to_metadata == {
        f"/{service}/{method}"
        for service in ("cogmentAPI.ModelRegistrySP", "cogment.ModelRegistrySP")
        for method in ("RetrieveModels", "RetrieveVersionInfos")
    }
    # The catch-all comes last: Envoy takes the first route that matches.
    assert public[-1]["match"] == {"prefix": "/"} and public[-1]["route"]["cluster"] == "frontend"
    # Idempotent reads: retried on another replica, as the frontend retried them.
    for route in public[:-1]:
        assert "unavailable" in route["route"]["retry_policy"]["retry_on"]
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "metadata_reads"]
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == service_names.METADATA
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert ports == [19021, 19023]


def test_every_cluster_is_http2_and_health_checked():
    config = render_envoy_config(local_topology())
    for cluster in config["static_resources"]["clusters"]:
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in options["explicit_http_config"]
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"]["service_name"]
        assert check["no_traffic_interval"] == check["interval"]
        # A host marked unhealthy is back within a quarter second of serving again.
        assert check["unhealthy_interval"] == "0.25s"


def test_circuit_breakers_and_stream_limits_are_set_deliberately():
    """Envoy's default circuit breaker (1,024 requests per cluster) refused
    the 1,025th subscriber: the frontends bound their streams themselves."""
    from services.common.limits import RequestLimits
    from services.launcher.envoy_config import CIRCUIT_BREAKERS, DOWNSTREAM_MAX_STREAMS, UPSTREAM_MAX_STREAMS

    config = render_envoy_config(local_topology())
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    for name in ("frontend", "metadata", "blobstore"):
        (thresholds,) = clusters[name]["circuit_breakers"]["thresholds"]
        assert thresholds["max_requests"] == CIRCUIT_BREAKERS[name]["max_requests"]
    assert clusters["frontend"]["circuit_breakers"]["thresholds"][0]["max_requests"] > 2 * RequestLimits().max_streams
    for listener in config["static_resources"]["listeners"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert manager["http2_protocol_options"]["max_concurrent_streams"] == DOWNSTREAM_MAX_STREAMS >= 10_000
    options = clusters["frontend"]["typed_extension_protocol_options"]
    (protocol,) = options.values()
    assert protocol["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"] == UPSTREAM_MAX_STREAMS


def test_envoy_sends_its_spans_as_often_as_the_services_do():
    """OTEL_BSP_SCHEDULE_DELAY (the services' export delay) sets Envoy's
    span flush interval too; unset, Envoy keeps its own 5 s and the config
    no runtime layer of ours."""
    traced = dict(otlp_collector=Endpoint("127.0.0.1", 4317))
    assert "layered_runtime" not in render_envoy_config(local_topology(**traced))
    assert "layered_runtime" not in render_envoy_config(local_topology(span_export_delay_ms=200))  # tracing off
    layers = render_envoy_config(local_topology(**traced, span_export_delay_ms=200))["layered_runtime"]["layers"]
    assert layers[0]["static_layer"] == {"tracing.opentelemetry.flush_interval_ms": 200}
    assert "admin_layer" in layers[-1]
