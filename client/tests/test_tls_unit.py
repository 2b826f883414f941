"""TLS options of the SDK and CLI, without a server: which files make which
credentials, and the hints added to handshake failures."""

from __future__ import annotations

import grpc
import pytest

from model_registry_client.cli import build_parser, tls_options
from model_registry_client.errors import UnavailableError, from_rpc_error
from model_registry_client.tls import CA_CERT_ENV, CERT_ENV, KEY_ENV, tls_credentials, transport_hint


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.fixture
def pem(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_nothing_set_is_plaintext():
    assert tls_credentials(env={}) is None


def test_a_ca_or_a_client_pair_means_tls(pem):
    assert isinstance(tls_credentials(pem, env={}), grpc.ChannelCredentials)
    assert isinstance(tls_credentials(env={CA_CERT_ENV: str(pem)}), grpc.ChannelCredentials)
    assert isinstance(tls_credentials(cert=pem, key=pem, env={}), grpc.ChannelCredentials)


@pytest.mark.parametrize("given", [{"cert": "c.pem"}, {"key": "k.pem"}])
def test_a_certificate_needs_its_key(given):
    with pytest.raises(ValueError, match="needs both"):
        tls_credentials(**given, env={})


def test_environment_halves_count_too(pem):
    with pytest.raises(ValueError, match="--cert was given without --key"):
        tls_credentials(env={CERT_ENV: str(pem)})
    assert tls_credentials(env={CERT_ENV: str(pem), KEY_ENV: str(pem)}) is not None


def test_an_unreadable_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        tls_credentials(tmp_path / "absent.pem", env={})


# The details gRPC gave against Envoy 1.40 (tests/integration/test_tls.py sees them live).
OBSERVED = {
    "plaintext to TLS": ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed", "requires TLS"),
    "untrusted server": (
        "last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
        "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
        "not trusted",
    ),
    "no client certificate": ("last error: UNAVAILABLE: ipv4:127.0.0.1:1: Unwrap failed (TSI_DATA_CORRUPTED)", "wants a client certificate"),
    "TLS to plaintext": (
        "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER",
        "speaks plaintext",
    ),
}


@pytest.mark.parametrize("case", OBSERVED)
def test_handshake_failures_get_a_hint(case):
    details, hint = OBSERVED[case]
    assert hint in transport_hint(details)
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, details))
    assert isinstance(error, UnavailableError) and hint in error.details and details in error.details


def test_other_failures_get_no_hint():
    details = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"
    assert transport_hint(details) is None
    assert from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, details)).details == details
    # Only UNAVAILABLE: a server's own message is never rewritten.
    assert from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "Socket closed")).details == "Socket closed"


def test_cli_flags_before_or_after_the_command():
    parser = build_parser()
    args = parser.parse_args(["--ca-cert", "ca.pem", "models", "ls", "--cert", "c.pem", "--key", "k.pem"])
    assert tls_options(args) == {"ca_cert": "ca.pem", "cert": "c.pem", "key": "k.pem"}
    assert tls_options(parser.parse_args(["models", "ls"])) == {}
