"""Renders Envoy's configuration for a `StackTopology`.

Two listeners:
- public (COGMENT_MODEL_REGISTRY_PORT): the small public reads
  (`service_names.PUBLIC_READS`, under both API names) go to metadata's
  public reads listener, every other gRPC call to a frontend;
- internal: the frontends' (and the blobstores' sweepers') way to metadata,
  and metadata's health as a whole (a health check with the
  `UPSTREAM_HEADER` naming it). Blob bytes do not pass here: frontends call
  the blobstore replicas directly (one proxy hop less per byte), but the
  blobstore cluster is still health-checked, so Envoy's admin page shows
  every replica of every service.
The internal listener also answers grpc.health.v1 for the frontends (no
`UPSTREAM_HEADER`): the health of the stack as a whole for the launcher and
other loopback checks, which must work when the public port wants TLS or a
client certificate they do not hold.

With `topology.public_tls` the public listener terminates TLS (mTLS with a
client CA); its certificate and CA come from SDS resource files that Envoy
watches, so replacing the PEM files takes effect without a restart
(`render_sds_resources`, README "Running it on a shared network").
Protocol versions and ciphers are Envoy's defaults (TLS 1.2 and 1.3, its
BoringSSL cipher list); ALPN offers h2, which gRPC clients require.

Every cluster is HTTP/2 and actively health-checked with grpc.health.v1.
No timeout can cut a long stream: route timeouts and stream idle timeouts
are disabled; callers bound their calls with gRPC deadlines (grpc-timeout),
which Envoy honours.

Concurrency is bounded on purpose, where the answer is clearest (README,
"Limits"): each frontend bounds its own streams (MAX_STREAMS, answered
RESOURCE_EXHAUSTED naming the variable), so Envoy's circuit breakers, whose
default of 1,024 requests per cluster refused the 1,025th VersionUpdate
subscriber with an anonymous UNAVAILABLE "overflow", are set high enough
never to be what refuses a call (`CIRCUIT_BREAKERS`). HTTP/2 stream limits
are explicit too (`DOWNSTREAM_MAX_STREAMS`, `UPSTREAM_MAX_STREAMS`).
"""

from __future__ import annotations

from typing import Any

import yaml

from services.common import service_names
from services.common.grpc_client import UPSTREAM_HEADER
from services.common.grpc_server import HEALTH_METHOD_PREFIX
from services.launcher.topology import Endpoint, PublicTls, StackTopology

# Measured: 4/8 MiB HTTP/2 windows move data as fast as Envoy's defaults
# with ~25 MiB less memory.
_HTTP2 = {"initial_stream_window_size": 4 * 1024 * 1024, "initial_connection_window_size": 8 * 1024 * 1024}

# Streams one client connection may hold on the public listener: far more
# than a training job's actors need on one channel (10,000 followers fit on
# one), few enough that one connection cannot take a frontend's every slot
# without opening others.
DOWNSTREAM_MAX_STREAMS = 65536
# Streams Envoy puts on one connection to an upstream replica before it
# opens another: thousands of subscriptions spread over several
# connections (and their flow-control windows) instead of one.
UPSTREAM_MAX_STREAMS = 1000

# Circuit breakers per cluster (Envoy's defaults: 1,024 of each).
# - frontend: requests are streams too (a VersionUpdate lives for hours); the
#   frontends bound them themselves, with a clear answer, so Envoy's bound is
#   only a backstop far above any frontend's MAX_STREAMS times its replicas.
# - metadata: a frontend holds one watch per followed model, plus its unary
#   calls: thousands of followed models must not be refused by Envoy.
# - blobstore: operators' calls only (frontends call replicas directly).
CIRCUIT_BREAKERS = {
    "frontend": {"max_connections": 10_000, "max_pending_requests": 100_000, "max_requests": 1_000_000},
    "metadata": {"max_connections": 10_000, "max_pending_requests": 100_000, "max_requests": 100_000},
    # - metadata_reads: unary public reads only, bounded by the clients' own calls.
    "metadata_reads": {"max_connections": 10_000, "max_pending_requests": 100_000, "max_requests": 100_000},
    "blobstore": {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024},
}


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _route(cluster: str, match: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "match": match,
        "route": {
            "cluster": cluster,
            # 0s disables: downloads and VersionUpdate streams last as long as they need.
            "timeout": "0s",
            "idle_timeout": "0s",
            # Honour the caller's grpc-timeout as the stream deadline, uncapped.
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            **extra,
        },
    }


# Names of the SDS secrets of the public listener.
CERTIFICATE_SECRET = "public_certificate"
CLIENT_CA_SECRET = "public_client_ca"
_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def render_sds_resources(cert_file: str, key_file: str, client_ca_file: str | None) -> dict[str, str]:
    """The SDS resource files (DiscoveryResponse YAML) of the public
    listener, by secret name, pointing at the operator's PEM files. Envoy
    re-reads a secret when its SDS file is moved over, and when a file it
    names is replaced by a move in its directory (it watches the files'
    parent directories)."""
    resources = {
        CERTIFICATE_SECRET: {
            "name": CERTIFICATE_SECRET,
            "tls_certificate": {
                "certificate_chain": {"filename": cert_file},
                "private_key": {"filename": key_file},
            },
        }
    }
    if client_ca_file is not None:
        resources[CLIENT_CA_SECRET] = {
            "name": CLIENT_CA_SECRET,
            "validation_context": {"trusted_ca": {"filename": client_ca_file}},
        }
    return {
        name: yaml.safe_dump({"resources": [{"@type": _SECRET_TYPE, **resource}]}, sort_keys=False)
        for name, resource in resources.items()
    }


def _sds_config(path: str) -> dict[str, Any]:
    return {"path_config_source": {"path": path}, "resource_api_version": "V3"}


def _downstream_tls(tls: PublicTls) -> dict[str, Any]:
    common: dict[str, Any] = {
        # gRPC clients refuse a TLS server that does not select h2 by ALPN.
        "alpn_protocols": ["h2"],
        "tls_certificate_sds_secret_configs": [
            {"name": CERTIFICATE_SECRET, "sds_config": _sds_config(tls.certificate_sds_path)}
        ],
    }
    context: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common,
    }
    if tls.client_ca_sds_path is not None:
        common["validation_context_sds_secret_config"] = {
            "name": CLIENT_CA_SECRET,
            "sds_config": _sds_config(tls.client_ca_sds_path),
        }
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _client_cert_forwarding(tls: PublicTls | None) -> dict[str, Any]:
    """x-forwarded-client-cert handling: a header a client sent is never
    passed on; under mTLS Envoy sets it to the verified certificate's
    Subject (the frontend maps its CN to a role)."""
    if tls is None or not tls.mutual:
        return {"forward_client_cert_details": "SANITIZE"}
    return {
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True},
    }


def _connection_manager(
    name: str, routes: list[dict[str, Any]], topology: StackTopology, tls: PublicTls | None = None
) -> dict[str, Any]:
    manager: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        # Idle VersionUpdate subscriptions live for hours.
        "stream_idle_timeout": "0s",
        "request_timeout": "0s",
        **_client_cert_forwarding(tls),
        "http2_protocol_options": {**_HTTP2, "max_concurrent_streams": DOWNSTREAM_MAX_STREAMS},
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    if topology.otlp_collector is not None:
        manager["tracing"] = {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otel_collector"}, "timeout": "1s"},
                    "service_name": "envoy",
                },
            },
            "spawn_upstream_span": True,
        }
    return manager


def _listener(
    name: str,
    host: str,
    port: int,
    routes: list[dict[str, Any]],
    topology: StackTopology,
    tls: PublicTls | None = None,
) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": _connection_manager(name, routes, topology, tls),
            }
        ]
    }
    if tls is not None:
        chain["transport_socket"] = _downstream_tls(tls)
    return {
        "name": name,
        "address": {"socket_address": {"address": host, "port_value": port}},
        "filter_chains": [chain],
    }


def _http2_options() -> dict[str, Any]:
    # Without an explicit HTTP/2 declaration Envoy speaks HTTP/1.1 upstream
    # and every gRPC call fails with "protocol error".
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {**_HTTP2, "max_concurrent_streams": UPSTREAM_MAX_STREAMS}},
        }
    }


# How long a health check may take to answer, per cluster. A frontend
# taking thousands of new subscriptions at once answers its health check
# only after the calls that arrived before it (seconds, on 2 cores): it is
# busy, not dead, and ejecting it would fail every call. A dead process
# refuses connections and fails its checks at once whatever this is.
HEALTH_CHECK_TIMEOUT_SECONDS = {"frontend": 5.0}

# How often a host marked unhealthy is checked again. A restarted replica
# is back as soon as its first check passes: checked at the healthy
# interval, calls routed to it would fail for up to a second more with
# "no healthy upstream" although it serves.
UNHEALTHY_RECHECK_SECONDS = 0.25


# The kind of service a cluster's hosts are, where the cluster is not named
# after it: metadata's public reads listener is a second port of metadata.
_SERVICE_OF_CLUSTER = {"metadata_reads": "metadata"}


def _cluster(name: str, endpoints: tuple[Endpoint, ...], topology: StackTopology, lb_policy: str) -> dict[str, Any]:
    interval = _duration(topology.health_check_interval_seconds)
    timeout = _duration(HEALTH_CHECK_TIMEOUT_SECONDS.get(name, topology.health_check_interval_seconds))
    return {
        "name": name,
        "type": "STRICT_DNS" if topology.dns_upstreams else "STATIC",
        **({"dns_refresh_rate": "5s", "respect_dns_ttl": True} if topology.dns_upstreams else {}),
        "lb_policy": lb_policy,
        "typed_extension_protocol_options": _http2_options(),
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", **CIRCUIT_BREAKERS[name], "track_remaining": True}]},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}}}
                        for e in endpoints
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": timeout,
                "interval": interval,
                # By default an idle cluster is checked once a minute only.
                "no_traffic_interval": interval,
                "unhealthy_interval": _duration(min(UNHEALTHY_RECHECK_SECONDS, topology.health_check_interval_seconds)),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": service_names.HEALTH_CHECKED[_SERVICE_OF_CLUSTER.get(name, name)]},
            }
        ],
        # Never send traffic to hosts known to be unhealthy ("panic mode"):
        # a clear UNAVAILABLE beats a request to a dead replica.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        # A replica that starts failing is ejected before its health check notices.
        "outlier_detection": {
            "consecutive_gateway_failure": 3,
            "consecutive_5xx": 1000,
            "interval": "1s",
            "base_ejection_time": "5s",
        },
    }


# The public reads are idempotent: Envoy retries them where the frontend
# retried its calls to metadata before (UNAVAILABLE: a replica stopping or
# losing its database), on another replica when there is one.
READ_RETRY = {
    "retry_policy": {
        "retry_on": "connect-failure,refused-stream,reset,unavailable",
        "num_retries": 3,
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "1s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }
}


def render_envoy_config(topology: StackTopology) -> dict[str, Any]:
    # The small public reads go straight to metadata (two process hops
    # instead of four: docs/design.md, "Which process answers which call"),
    # every other public call to a frontend.
    public_routes = [
        _route("metadata_reads", {"path": f"/{service}/{method}"}, **READ_RETRY)
        for service in service_names.PUBLIC
        for method in service_names.PUBLIC_READS
    ]
    public_routes.append(_route("frontend", {"prefix": "/"}))
    # Only failures before the request reached a replica are retried here;
    # the frontend retries idempotent calls itself.
    connect_retry = {
        "retry_policy": {
            "retry_on": "connect-failure,refused-stream",
            "num_retries": 2,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
        }
    }
    internal_routes = [
        # The frontends' question "has metadata a healthy replica?"
        _route(
            "metadata",
            {
                "prefix": HEALTH_METHOD_PREFIX,
                "headers": [{"name": UPSTREAM_HEADER, "string_match": {"exact": "metadata"}}],
            },
        ),
        # The stack's health for loopback checks (the launcher's), whatever
        # the public listener's TLS: the frontends answer for the whole stack.
        _route("frontend", {"prefix": HEALTH_METHOD_PREFIX}),
        _route("metadata", {"prefix": f"/{service_names.METADATA}/"}, **connect_retry),
        # For operators (grpcurl DescribeReplica...): the frontends call replicas directly.
        _route("blobstore", {"prefix": f"/{service_names.BLOBSTORE}/"}, **connect_retry),
    ]
    clusters = [
        _cluster("frontend", topology.frontends, topology, "ROUND_ROBIN"),
        _cluster("metadata", topology.metadata, topology, "ROUND_ROBIN"),
        _cluster("metadata_reads", topology.metadata_reads, topology, "ROUND_ROBIN"),
        _cluster("blobstore", topology.blobstores, topology, "ROUND_ROBIN"),
    ]
    if topology.otlp_collector is not None:
        collector = topology.otlp_collector
        clusters.append(
            {
                "name": "otel_collector",
                "type": "STRICT_DNS",
                "lb_policy": "ROUND_ROBIN",
                "typed_extension_protocol_options": _http2_options(),
                "load_assignment": {
                    "cluster_name": "otel_collector",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": collector.host, "port_value": collector.port}
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    runtime = {}
    if topology.otlp_collector is not None and topology.span_export_delay_ms is not None:
        runtime = {
            "layered_runtime": {
                "layers": [
                    {
                        "name": "static",
                        "static_layer": {"tracing.opentelemetry.flush_interval_ms": topology.span_export_delay_ms},
                    },
                    # What Envoy has without a layered_runtime: runtime
                    # changes through its admin endpoint.
                    {"name": "admin", "admin_layer": {}},
                ]
            }
        }
    return {
        # Envoy refuses SDS (even from files) without a node id and cluster.
        "node": {"id": "model-registry", "cluster": "model-registry"},
        **runtime,
        "admin": {"address": {"socket_address": {"address": topology.admin_host, "port_value": topology.admin_port}}},
        "static_resources": {
            "listeners": [
                _listener(
                    "public", topology.public_host, topology.public_port, public_routes, topology, topology.public_tls
                ),
                _listener("internal", topology.internal_host, topology.internal_port, internal_routes, topology),
            ],
            "clusters": clusters,
        },
    }


def render_envoy_yaml(topology: StackTopology, header: str = "") -> str:
    return header + yaml.safe_dump(render_envoy_config(topology), sort_keys=False)
