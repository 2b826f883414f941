"""TLS of the public listener in the rendered Envoy configuration: what
Envoy is told, and that the real binary accepts it."""

from __future__ import annotations

import subprocess

import pytest

from services.launcher.envoy_config import (
    CERTIFICATE_SECRET,
    CLIENT_CA_SECRET,
    render_envoy_config,
    render_envoy_yaml,
    render_sds_resources,
)
from services.launcher.tests.test_envoy_config import ENVOY, local_topology
from services.launcher.topology import PublicTls


def listener(config: dict, name: str) -> dict:
    (found,) = [l for l in config["static_resources"]["listeners"] if l["name"] == name]
    return found


def manager(config: dict, name: str) -> dict:
    return listener(config, name)["filter_chains"][0]["filters"][0]["typed_config"]


def tls_topology(tmp_path, *, mutual: bool):
    cert_sds, ca_sds = tmp_path / f"{CERTIFICATE_SECRET}.yaml", tmp_path / f"{CLIENT_CA_SECRET}.yaml"
    resources = render_sds_resources(
        str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), str(tmp_path / "ca.pem") if mutual else None
    )
    cert_sds.write_text(resources[CERTIFICATE_SECRET])
    if mutual:
        ca_sds.write_text(resources[CLIENT_CA_SECRET])
    return local_topology(public_tls=PublicTls(str(cert_sds), str(ca_sds) if mutual else None))


def test_plaintext_has_no_transport_socket_and_strips_client_sent_xfcc():
    config = render_envoy_config(local_topology())
    assert "transport_socket" not in listener(config, "public")["filter_chains"][0]
    assert manager(config, "public")["forward_client_cert_details"] == "SANITIZE"
    assert "set_current_client_cert_details" not in manager(config, "public")


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_public_listener_terminates_tls_from_sds_files(tmp_path, mutual):
    topology = tls_topology(tmp_path, mutual=mutual)
    config = render_envoy_config(topology)
    socket = listener(config, "public")["filter_chains"][0]["transport_socket"]
    context = socket["typed_config"]
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    (certificate,) = common["tls_certificate_sds_secret_configs"]
    assert certificate["name"] == CERTIFICATE_SECRET
    assert certificate["sds_config"]["path_config_source"]["path"] == topology.public_tls.certificate_sds_path
    assert context.get("require_client_certificate", False) is mutual
    assert ("validation_context_sds_secret_config" in common) is mutual
    if mutual:
        assert manager(config, "public")["forward_client_cert_details"] == "SANITIZE_SET"
        assert manager(config, "public")["set_current_client_cert_details"] == {"subject": True}
    else:
        assert manager(config, "public")["forward_client_cert_details"] == "SANITIZE"
    # Internal surfaces stay plaintext, on loopback.
    for name in ("internal",):
        assert "transport_socket" not in listener(config, name)["filter_chains"][0]
        assert listener(config, name)["address"]["socket_address"]["address"] == "127.0.0.1"
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_envoy_accepts_the_tls_config(tmp_path, mutual):
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_yaml(tls_topology(tmp_path, mutual=mutual)))
    result = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sds_resources_point_at_the_operator_files():
    import yaml

    resources = render_sds_resources("/etc/tls/cert.pem", "/etc/tls/key.pem", "/etc/tls/ca.pem")
    (certificate,) = yaml.safe_load(resources[CERTIFICATE_SECRET])["resources"]
    assert certificate["@type"].endswith("transport_sockets.tls.v3.Secret")
    assert certificate["tls_certificate"] == {
        "certificate_chain": {"filename": "/etc/tls/cert.pem"},
        "private_key": {"filename": "/etc/tls/key.pem"},
    }
    (ca,) = yaml.safe_load(resources[CLIENT_CA_SECRET])["resources"]
    assert ca["validation_context"] == {"trusted_ca": {"filename": "/etc/tls/ca.pem"}}
    assert set(render_sds_resources("/c", "/k", None)) == {CERTIFICATE_SECRET}
