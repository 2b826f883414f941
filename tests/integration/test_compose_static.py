"""docker-compose.yml and the Dockerfile checked statically (no Docker
engine runs here): the compose file parses, builds the one Dockerfile once
per service, and every service, port, env variable and command agrees with
the Envoy config and with what the services actually read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.common import service_names
from services.common.config import PREFIX, SERVICE_PORTS
from services.launcher.compose import (
    CONFIG_FILES,
    ENVOY_DIR,
    ENVOY_DIR_IN_CONTAINER,
    ENVOY_YAML,
    TLS_DIR_IN_CONTAINER,
    TLS_FILE_NAMES,
    compose_topology,
    render,
    rendered_files,
)
from services.common.tls import public_tls_enabled
from services.launcher.prometheus_targets import ENVOY_METRICS_PATH
from services.launcher.stack import MALLOC_TUNABLES

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("frontend", "metadata", "blobstore")
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def envoy() -> dict:
    return yaml.safe_load(ENVOY_YAML.read_text())


def cluster_endpoints(envoy: dict, name: str) -> list[tuple[str, int]]:
    (cluster,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == name]
    return [
        (e["endpoint"]["address"]["socket_address"]["address"], e["endpoint"]["address"]["socket_address"]["port_value"])
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]


def listener_port(envoy: dict, name: str) -> int:
    (listener,) = [l for l in envoy["static_resources"]["listeners"] if l["name"] == name]
    return listener["address"]["socket_address"]["port_value"]


def test_committed_envoy_config_is_the_rendered_one():
    assert ENVOY_YAML.read_text() == render(), "envoy/envoy.yaml is stale: run `make envoy-config`"
    for path, text in rendered_files().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `make envoy-config`"


def test_services_and_published_ports(compose, envoy):
    assert set(compose["services"]) == {"envoy", *SERVICES, "jaeger", "prometheus", "postgres", "minio", "minio-bucket", "directory"}
    for name in ("postgres", "minio", "minio-bucket"):
        assert compose["services"][name]["profiles"] == ["production"]
    assert compose["services"]["directory"]["profiles"] == ["directory"]
    published = {name: svc.get("ports", []) for name, svc in compose["services"].items() if svc.get("ports")}
    assert set(published) == {"envoy", "jaeger", "prometheus", "directory"}, "only Envoy, the Jaeger and Prometheus UIs and the optional directory"
    assert published["directory"] == ["9005:9005"]
    (envoy_port,) = published["envoy"]
    assert envoy_port.endswith(f":{listener_port(envoy, 'public')}")
    assert "${COGMENT_MODEL_REGISTRY_PORT:-9000}" in envoy_port
    assert published["jaeger"] == ["16686:16686"]
    # Prometheus answers any query without credentials: the host only.
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]
    mount = compose["services"]["envoy"]["volumes"][0]
    assert mount == f"./envoy:{ENVOY_DIR_IN_CONTAINER}:ro" and ENVOY_YAML.exists()


@pytest.mark.parametrize("service", SERVICES)
def test_service_wiring_matches_envoy(compose, envoy, service):
    definition = compose["services"][service]
    env = definition["environment"]
    variable, default_port = SERVICE_PORTS[service]
    port = int(env[variable])
    assert port == default_port, "the image's HEALTHCHECK asks the default port"
    assert cluster_endpoints(envoy, service) == [(service, port)], "Envoy must reach the service where it listens"
    if f"{PREFIX}INTERNAL_ADDRESS" in env:
        assert env[f"{PREFIX}INTERNAL_ADDRESS"] == f"envoy:{listener_port(envoy, 'internal')}"
    collector = cluster_endpoints(envoy, "otel_collector")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{collector[0][0]}:{collector[0][1]}"
    assert collector[0][0] in compose["services"]
    assert env["OTEL_SERVICE_NAME"] == service


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_builds_the_one_dockerfile_with_its_name(compose, service):
    definition = compose["services"][service]
    assert definition["build"] == {"context": ".", "dockerfile": "Dockerfile", "args": {"SERVICE": service}}
    assert "command" not in definition, "the image's CMD runs the service its build argument names"
    assert (ROOT / "services" / service / "__main__.py").exists()


def test_the_dockerfile_runs_the_service_named_by_its_build_argument():
    lines = DOCKERFILE.read_text().splitlines()
    assert not list((ROOT / "services").glob("*/Dockerfile")), "one Dockerfile for every service"
    assert "ARG SERVICE" in lines
    assert "ENV REGISTRY_SERVICE=${SERVICE} \\" in lines
    assert "COPY services/${SERVICE} services/${SERVICE}" in lines
    assert 'CMD exec python -m "services.$REGISTRY_SERVICE"' in lines
    assert '  CMD python -m services.common.healthcheck "$REGISTRY_SERVICE"' in lines
    assert "USER registry" in lines, "images run as non-root"
    # Health names and ports are the code's (services.common), not retyped here.
    text = DOCKERFILE.read_text()
    for name in (*service_names.HEALTH_CHECKED.values(), *service_names.PUBLIC):
        assert name not in text
    for _, port in SERVICE_PORTS.values():
        assert str(port) not in text


def test_the_image_tunes_malloc_as_the_launcher_does():
    assert f"    GLIBC_TUNABLES={MALLOC_TUNABLES} \\" in DOCKERFILE.read_text().splitlines()


@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_is_read_by_the_service(compose, service):
    env = compose["services"][service]["environment"]
    sources = "".join(p.read_text() for p in [*(ROOT / "services" / service).glob("*.py"), *(ROOT / "services" / "common").glob("*.py")])
    for name in env:
        if name.startswith(("OTEL_", "AWS_")):
            continue  # standard OpenTelemetry / AWS SDK variables, read by those libraries
        if name.startswith("COGMENT_DIRECTORY_"):  # Cogment 2.x's own names
            assert f'"{name}"' in sources, f"{service} does not read {name}"
            continue
        assert name.startswith(PREFIX), name
        suffix = name[len(PREFIX):]
        assert re.search(rf'"{suffix}"|"{name}"', sources), f"{service} does not read {name}"


def test_stateful_services_keep_data_on_the_volume(compose):
    for service in ("metadata", "blobstore"):
        definition = compose["services"][service]
        assert f"archive:{definition['environment'][PREFIX + 'ARCHIVE_DIR']}" in definition["volumes"]
    assert "archive" in compose["volumes"]


def test_compose_topology_uses_dns_for_scaling():
    topology = compose_topology()
    assert topology.dns_upstreams, "STRICT_DNS clusters let `--scale` add replicas without config edits"


def test_production_env_matches_the_profile(compose):
    values = dict(
        line.split("=", 1) for line in (ROOT / "production.env").read_text().splitlines() if line and not line.startswith("#")
    )
    assert values[PREFIX + "METADATA_URL"].startswith("postgresql://") and "@postgres:" in values[PREFIX + "METADATA_URL"]
    bucket = values[PREFIX + "ARCHIVE_URL"].removeprefix("s3://").split("/")[0]
    assert f"store/{bucket}" in compose["services"]["minio-bucket"]["command"][0]
    assert values["AWS_ENDPOINT_URL"] == "http://minio:9000"
    for name in (PREFIX + "METADATA_URL",):
        assert name in compose["services"]["metadata"]["environment"]
    for name in (PREFIX + "ARCHIVE_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name in compose["services"]["blobstore"]["environment"]


def test_frontends_reach_every_blobstore_replica_by_its_service_name(compose, envoy):
    env = compose["services"]["frontend"]["environment"]
    (address,) = env[f"{PREFIX}BLOBSTORE_ADDRESSES"].split(",")
    host, port = address.rsplit(":", 1)
    # The service name: Docker's DNS answers it with every replica (--scale).
    assert host == "blobstore"
    assert env_port(compose["services"]["blobstore"]) == int(port)
    assert (host, int(port)) in cluster_endpoints(envoy, "blobstore")


def env_port(service: dict) -> int:
    return int(service["environment"][f"{PREFIX}BLOBSTORE_PORT"])


def _dockerfile_env(name: str) -> str:
    """The value the Dockerfile's ENV gives `name`."""
    match = re.search(rf"^\s+{name}=(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert match, f"the Dockerfile sets no {name}"
    return match.group(1)


def test_prometheus_scrapes_every_replica_of_every_service_and_envoy(compose, envoy):
    definition = compose["services"]["prometheus"]
    mount = definition["volumes"][0]
    assert mount == "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert "--config.file=/etc/prometheus/prometheus.yml" in definition["command"]
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (dns,) = jobs["model-registry"]["dns_sd_configs"]
    # DNS: a service name stands for each of its containers (--scale).
    assert sorted(dns["names"]) == sorted(SERVICES) and dns["type"] == "A"
    assert dns["port"] == int(_dockerfile_env(f"{PREFIX}METRICS_PORT")), "the port the images serve /metrics on"
    assert jobs["model-registry"]["relabel_configs"] == [{"source_labels": ["__meta_dns_name"], "target_label": "service"}]
    (static,) = jobs["envoy"]["static_configs"]
    admin = envoy["admin"]["address"]["socket_address"]
    assert static["targets"] == [f"envoy:{admin['port_value']}"] and admin["address"] == "0.0.0.0"
    assert static["labels"] == {"service": "envoy"}
    assert jobs["envoy"]["metrics_path"] == ENVOY_METRICS_PATH


# -- TLS, networks, secrets (issue 11) ------------------------------------------


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR:+replacement}` and `${VAR:-default}`, the two forms used here."""

    def one(match: re.Match) -> str:
        name, operator, operand = match.group(1), match.group(2), match.group(3)
        value = env.get(name, "")
        if operator == ":+":
            return operand if value else ""
        return value or operand

    return re.sub(r"\$\{([A-Z_]+)(:[+-])([^}]*)\}", one, text)


@pytest.mark.parametrize(
    "env, tls",
    [
        ({}, "off"),
        ({"COGMENT_MODEL_REGISTRY_TLS_DIR": "/srv/tls"}, "tls"),
        ({"COGMENT_MODEL_REGISTRY_TLS_DIR": "/srv/tls", "COGMENT_MODEL_REGISTRY_TLS_MUTUAL": "1"}, "mtls"),
    ],
)
def test_envoy_and_the_frontend_follow_the_same_tls_variables(compose, env, tls):
    """Envoy's config and the frontend's TLS settings come from the same two
    variables: Envoy never speaks TLS while the frontend registers GRPC, nor
    the reverse."""
    envoy = compose["services"]["envoy"]
    config_argument = _interpolate(envoy["command"][envoy["command"].index("-c") + 1], env)
    assert config_argument == f"{ENVOY_DIR_IN_CONTAINER}/{CONFIG_FILES[tls]}"
    assert (ENVOY_DIR / CONFIG_FILES[tls]).exists()
    frontend_env = {k: _interpolate(str(v), env) for k, v in compose["services"]["frontend"]["environment"].items()}
    assert public_tls_enabled(frontend_env) is (tls != "off")
    assert bool(frontend_env[PREFIX + "TLS_CLIENT_CA_FILE"]) is (tls == "mtls")
    # A directory mount: rotation moves files inside it (a file mount pins the inode).
    source, target, mode = _interpolate(envoy["volumes"][1], env).rsplit(":", 2)
    assert (target, mode) == (TLS_DIR_IN_CONTAINER, "ro")
    assert source == env.get("COGMENT_MODEL_REGISTRY_TLS_DIR", "./envoy/no-tls")
    assert (ROOT / "envoy" / "no-tls").is_dir()
    for variable in (PREFIX + "TLS_CERT_FILE", PREFIX + "TLS_CLIENT_CA_FILE"):
        if frontend_env[variable]:
            assert frontend_env[variable].startswith(f"{TLS_DIR_IN_CONTAINER}/")
    assert set(CONFIG_FILES.values()) == {p.name for p in ENVOY_DIR.glob("envoy*.yaml")}


@pytest.mark.parametrize("tls", ["tls", "mtls"])
def test_tls_configs_read_the_mounted_files_through_sds(tls):
    config = yaml.safe_load((ENVOY_DIR / CONFIG_FILES[tls]).read_text())
    (public,) = [l for l in config["static_resources"]["listeners"] if l["name"] == "public"]
    context = public["filter_chains"][0]["transport_socket"]["typed_config"]
    common = context["common_tls_context"]
    sds_configs = [c["sds_config"] for c in common["tls_certificate_sds_secret_configs"]]
    if tls == "mtls":
        assert context["require_client_certificate"] is True
        sds_configs.append(common["validation_context_sds_secret_config"]["sds_config"])
    else:
        assert "validation_context_sds_secret_config" not in common
    named = set()
    for sds in sds_configs:
        path = sds["path_config_source"]["path"]
        assert path.startswith(f"{ENVOY_DIR_IN_CONTAINER}/")
        local = ENVOY_DIR / path.removeprefix(f"{ENVOY_DIR_IN_CONTAINER}/")
        (resource,) = yaml.safe_load(local.read_text())["resources"]
        named |= {
            v["filename"]
            for part in resource.values()
            if isinstance(part, dict)
            for value in part.values()
            for v in ([value] if isinstance(value, dict) else [])
        }
    expected = {f"{TLS_DIR_IN_CONTAINER}/{TLS_FILE_NAMES['cert']}", f"{TLS_DIR_IN_CONTAINER}/{TLS_FILE_NAMES['key']}"}
    if tls == "mtls":
        expected.add(f"{TLS_DIR_IN_CONTAINER}/{TLS_FILE_NAMES['client_ca']}")
    assert named == expected


def test_only_published_services_are_on_the_edge_network(compose):
    assert compose["networks"]["internal"] == {"internal": True}
    for name, service in compose["services"].items():
        networks = set(service.get("networks", []))
        assert "internal" in networks or name == "envoy", f"{name} must reach the internal network"
        if service.get("ports"):
            assert networks == {"edge", "internal"}, f"{name} publishes a port: it needs the edge network"
        else:
            assert networks == {"internal"}, f"{name} publishes nothing: it stays on the internal network only"
    assert set(compose["services"]["envoy"]["networks"]) == {"edge", "internal"}
    egress = yaml.safe_load((ROOT / "docker-compose.egress.yml").read_text())
    assert set(egress["services"]) == set(SERVICES)
    assert all(s["networks"] == ["internal", "egress"] for s in egress["services"].values())
    assert not any(s.get("ports") for s in egress["services"].values())


def test_no_secret_is_committed():
    compose_text = (ROOT / "docker-compose.yml").read_text()
    env_text = (ROOT / "production.env").read_text()
    values = dict(line.split("=", 1) for line in env_text.splitlines() if line and not line.startswith("#"))
    assert "AWS_SECRET_ACCESS_KEY" not in values
    assert "registry-secret" not in compose_text + env_text
    # Every secret-looking variable has no default but empty.
    for match in re.finditer(r"\$\{([A-Z_]*(?:SECRET|PASSWORD|TOKEN)[A-Z_]*)(:?[-?+])?([^}]*)\}", compose_text):
        assert match.group(3) == "", f"{match.group(0)} commits a default secret"


def test_minio_refuses_to_start_without_a_secret(compose):
    minio = compose["services"]["minio"]
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == "${AWS_SECRET_ACCESS_KEY:-}"
    (script,) = minio["command"]
    assert "AWS_SECRET_ACCESS_KEY" in script and "exit 1" in script and script.rstrip().endswith("exec minio server /data")


def test_every_service_restarts_after_a_fault(compose):
    """Issue 16: a container that exits (kill, crash, OOM) comes back; the
    one-shot bucket creation is retried only when it failed."""
    for name, definition in compose["services"].items():
        expected = "on-failure" if name == "minio-bucket" else "unless-stopped"
        assert definition.get("restart") == expected, f"{name}: restart {definition.get('restart')!r}"


@pytest.mark.parametrize("service", SERVICES)
def test_each_registry_service_is_health_checked_with_the_image_check(compose, service):
    check = compose["services"][service]["healthcheck"]
    assert check["test"] == ["CMD", "python", "-m", "services.common.healthcheck", service]
    assert all(check[key] for key in ("interval", "timeout", "retries", "start_period"))


def test_dependencies_wait_for_health_where_order_matters(compose):
    services = compose["services"]
    waits = {
        name: {dep: spec["condition"] for dep, spec in (definition.get("depends_on") or {}).items()}
        for name, definition in services.items()
    }
    assert waits["envoy"] == {
        "frontend": "service_healthy", "metadata": "service_healthy", "blobstore": "service_healthy",
        "jaeger": "service_started",
    }
    assert waits["frontend"] == {"metadata": "service_healthy", "blobstore": "service_healthy"}
    assert waits["metadata"] == {"postgres": "service_healthy"}
    assert waits["blobstore"] == {"minio-bucket": "service_completed_successfully"}
    assert waits["minio-bucket"] == {"minio": "service_healthy"}
    # A dependency in another profile is optional, or plain `up` would refuse to start.
    for name, definition in services.items():
        for dep, spec in (definition.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on an unknown {dep}"
            if services[dep].get("profiles") and services[dep].get("profiles") != definition.get("profiles"):
                assert spec.get("required") is False, f"{name} -> {dep} must be required: false"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
    # No cycle: compose would refuse the file.
    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle {' -> '.join((*path, name))}"
        for dep in waits.get(name, {}):
            visit(dep, (*path, name))

    for name in services:
        visit(name, ())
