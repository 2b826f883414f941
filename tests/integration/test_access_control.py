"""Access control through the real Envoy, on one extra stack started with a
credentials file (COGMENT_MODEL_REGISTRY_AUTH_FILE) by the same code path
as the session stack, reused by every test here:

- the role table: every identity (none, read/write/admin by bearer token
  and by HTTP Basic) against every public RPC (and an admin import);
- health open, UNAUTHENTICATED vs PERMISSION_DENIED, refused writes change
  nothing; the file re-read within 10 s (a token added, then removed);
- the audit line of a write and a delete, with the caller's trace id;
- an anonymous role (a second frontend behind the same upstreams);
- the CLI and SDK with --token / --user; no secret in any log file.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import model_registry_credentials as cf
import pytest
from cogmentAPI import common_pb2
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry import admin_pb2, admin_pb2_grpc
from services.launcher.ports import free_port

from conftest import REPLICATED, REPO_ROOT, Stack, stack_under, version_chunks

# The check is the frontend's alone, the same in either shape: run once, on
# the single shape, to keep `make test` under 10 minutes (it also passes on
# REGISTRY_TEST_SHAPE=replicated, 2 frontends reloading the file each: ~28 s).
pytestmark = pytest.mark.skipif(REPLICATED, reason="the access check is shape-independent; run once, on the single shape")

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
RELOAD_SECONDS = 10  # SPEC §6: a change is seen within 10 s
PASSWORDS = {role: f"pw-{role}-{uuid.uuid4().hex}" for role in cf.ROLES}


def cli(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_registry_client", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )


class AuthStack:
    def __init__(self, stack: Stack, auth_file: Path, tokens: dict[str, str]) -> None:
        self.stack, self.auth_file, self.tokens = stack, auth_file, tokens
        self.channel = stack.channel()
        self.registry = api_grpc.ModelRegistrySPStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    def metadata(self, identity: str) -> tuple[tuple[str, str], ...]:
        """`none`, `bearer-<role>` or `basic-<role>`."""
        if identity == "none":
            return ()
        kind, role = identity.split("-")
        if kind == "bearer":
            return (("authorization", f"Bearer {self.tokens[role]}"),)
        pair = base64.b64encode(f"user-{role}:{PASSWORDS[role]}".encode()).decode()
        return (("authorization", f"Basic {pair}"),)


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    base = tmp_path_factory.mktemp("auth-stack")
    auth_file = base / "credentials.json"
    tokens = {}
    for role in cf.ROLES:
        done = cli("auth", "add-token", "--file", str(auth_file), "--name", f"token-{role}", "--role", role)
        assert done.returncode == 0, done.stderr
        tokens[role] = done.stdout.strip()
        done = cli(
            "auth", "add-user", "--file", str(auth_file), "--name", f"user-{role}", "--role", role, "--password-stdin",
            stdin=PASSWORDS[role] + "\n",
        )
        assert done.returncode == 0, done.stderr
    running = stack_under(
        base, COGMENT_MODEL_REGISTRY_AUTH_FILE=str(auth_file), COGMENT_MODEL_REGISTRY_AUTH_FILE_CHECK_SECONDS="1"
    )
    running.up()
    try:
        yield AuthStack(running, auth_file, tokens)
    finally:
        for channel in running.channels:
            channel.close()
        running.down()


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return OK


IDENTITIES = ["none", *[f"{kind}-{role}" for kind in ("bearer", "basic") for role in cf.ROLES]]
ROLE_OF = {"none": None, **{f"{kind}-{role}": role for kind in ("bearer", "basic") for role in cf.ROLES}}
# The least role of each public RPC (SPEC §6), and an admin import.
RPC_ROLES = {
    "RetrieveModels": "read",
    "RetrieveVersionInfos": "read",
    "RetrieveVersionData": "read",
    "VersionUpdate": "read",
    "Version": "read",
    "Status": "read",
    "CreateOrUpdateModel": "write",
    "CreateVersion": "write",
    "DeleteModel": "admin",
    "ImportModel": "admin",
}


def expected(identity: str, rpc: str) -> grpc.StatusCode:
    role = ROLE_OF[identity]
    if role is None:
        return UNAUTHENTICATED
    return OK if cf.ROLES.index(role) >= cf.ROLES.index(RPC_ROLES[rpc]) else DENIED


def rpc_call(s: AuthStack, rpc: str, identity: str, model_id: str, scratch: str):  # type: ignore[no-untyped-def]
    """A valid call of `rpc` with `identity`'s credential, as a thunk."""
    md = s.metadata(identity)
    r = s.registry
    if rpc == "RetrieveModels":
        return lambda: r.RetrieveModels(api.RetrieveModelsRequest(model_ids=[model_id]), metadata=md)
    if rpc == "RetrieveVersionInfos":
        return lambda: r.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id), metadata=md)
    if rpc == "RetrieveVersionData":
        return lambda: list(r.RetrieveVersionData(api.RetrieveVersionDataRequest(model_id=model_id, version_number=1), metadata=md))
    if rpc == "VersionUpdate":
        def first_update() -> None:
            stream = r.VersionUpdate(api.VersionUpdateRequest(model_id=model_id), metadata=md, timeout=10)
            try:
                next(stream)
            finally:
                stream.cancel()
        return first_update
    if rpc == "Version":
        return lambda: r.Version(common_pb2.VersionRequest(), metadata=md)
    if rpc == "Status":
        return lambda: r.Status(common_pb2.StatusRequest(names=["*"]), metadata=md)
    if rpc == "CreateOrUpdateModel":
        return lambda: r.CreateOrUpdateModel(
            api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=scratch + "-created")), metadata=md
        )
    if rpc == "CreateVersion":
        return lambda: r.CreateVersion(version_chunks(model_id, b"acl data"), metadata=md)
    if rpc == "DeleteModel":
        return lambda: r.DeleteModel(api.DeleteModelRequest(model_id=scratch), metadata=md)
    if rpc == "ImportModel":
        return lambda: s.admin.ImportModel(
            admin_pb2.ImportModelRequest(model_info=api.ModelInfo(model_id=scratch + "-imported")), metadata=md
        )
    raise AssertionError(rpc)


def test_every_role_against_every_rpc(auth_stack: AuthStack) -> None:
    """The role table, held by the running stack for all 9 public RPCs (and
    an admin import), by bearer and Basic; a refused write changes nothing."""
    admin = auth_stack.metadata("bearer-admin")
    r = auth_stack.registry
    model_id = f"acl-{uuid.uuid4().hex[:8]}"
    r.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id)), metadata=admin)
    r.CreateVersion(version_chunks(model_id, b"first"), metadata=admin)
    results, wanted = {}, {}
    for identity in IDENTITIES:
        scratch = f"acl-{identity}-{uuid.uuid4().hex[:8]}"
        r.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=scratch)), metadata=admin)
        for rpc in RPC_ROLES:
            results[identity, rpc] = code_of(rpc_call(auth_stack, rpc, identity, model_id, scratch))
            wanted[identity, rpc] = expected(identity, rpc)
        if wanted[identity, "DeleteModel"] != OK:  # a refused delete deleted nothing
            kept = r.RetrieveModels(api.RetrieveModelsRequest(model_ids=[scratch]), metadata=admin).model_infos
            assert [m.model_id for m in kept] == [scratch]
    assert results == wanted
    versions = r.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id), metadata=admin).version_infos
    # first + one per identity allowed to write (bearer and basic write/admin)
    assert len(versions) == 1 + sum(1 for identity in IDENTITIES if wanted[identity, "CreateVersion"] == OK)


def test_health_is_open_and_refusals_say_what_to_do(auth_stack: AuthStack) -> None:
    health = health_pb2_grpc.HealthStub(auth_stack.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as missing:
        auth_stack.registry.Status(common_pb2.StatusRequest())
    assert missing.value.code() == UNAUTHENTICATED and "requires a credential" in missing.value.details()
    with pytest.raises(grpc.RpcError) as wrong:
        auth_stack.registry.Status(common_pb2.StatusRequest(), metadata=(("authorization", "Bearer nope"),))
    assert wrong.value.code() == UNAUTHENTICATED and "nope" not in wrong.value.details()
    with pytest.raises(grpc.RpcError) as denied:
        auth_stack.registry.DeleteModel(api.DeleteModelRequest(model_id="x"), metadata=auth_stack.metadata("basic-write"))
    assert denied.value.code() == DENIED
    assert "needs the role admin" in denied.value.details() and "'user-write' has the role write" in denied.value.details()
    # The Cogment SDK sends the scheme lowercase.
    pair = base64.b64encode(f"user-read:{PASSWORDS['read']}".encode()).decode()
    auth_stack.registry.Status(common_pb2.StatusRequest(), metadata=(("authorization", f"basic {pair}"),))


def test_a_token_added_then_removed_is_seen_within_10s(auth_stack: AuthStack) -> None:
    done = cli("auth", "add-token", "--file", str(auth_stack.auth_file), "--name", "late", "--role", "read")
    assert done.returncode == 0, done.stderr
    metadata = (("authorization", f"Bearer {done.stdout.strip()}"),)

    def status_code() -> grpc.StatusCode:
        return code_of(lambda: auth_stack.registry.Status(common_pb2.StatusRequest(), metadata=metadata))

    def within(seconds: float, code: grpc.StatusCode) -> float:
        started = time.monotonic()
        while status_code() != code:
            assert time.monotonic() - started < seconds, f"still not {code.name} after {seconds}s"
            time.sleep(0.2)
        return time.monotonic() - started

    within(RELOAD_SECONDS, OK)
    done = cli("auth", "remove", "--file", str(auth_stack.auth_file), "--name", "late")
    assert done.returncode == 0, done.stderr
    within(RELOAD_SECONDS, UNAUTHENTICATED)


def frontend_log(stack: Stack) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(stack.run_dir.glob("frontend-*.log")))


def test_audit_lines_for_a_write_and_a_delete_with_trace_id(auth_stack: AuthStack) -> None:
    model_id = f"audited-{uuid.uuid4().hex[:8]}"
    trace_ids = [uuid.uuid4().hex for _ in range(3)]

    def traced(identity: str, index: int) -> tuple[tuple[str, str], ...]:
        return (*auth_stack.metadata(identity), ("traceparent", f"00-{trace_ids[index]}-{'1' * 16}-01"))

    r = auth_stack.registry
    r.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id)), metadata=traced("basic-write", 0))
    info = r.CreateVersion(version_chunks(model_id, b"audited"), metadata=traced("bearer-write", 1)).version_info
    imported = f"{model_id}-imported"
    auth_stack.admin.ImportModel(
        admin_pb2.ImportModelRequest(model_info=api.ModelInfo(model_id=imported)), metadata=auth_stack.metadata("basic-admin")
    )
    r.DeleteModel(api.DeleteModelRequest(model_id=model_id), metadata=traced("bearer-admin", 2))
    wanted = [
        f'identity="user-admin" method=/registry.Admin/ImportModel model="{imported}" version=- outcome=OK trace_id=-',
        f'identity="user-write" method=/cogmentAPI.ModelRegistrySP/CreateOrUpdateModel model="{model_id}" version=- outcome=OK trace_id={trace_ids[0]}',
        f'identity="token-write" method=/cogmentAPI.ModelRegistrySP/CreateVersion model="{model_id}" version={info.version_number} outcome=OK trace_id={trace_ids[1]}',
        f'identity="token-admin" method=/cogmentAPI.ModelRegistrySP/DeleteModel model="{model_id}" version=- outcome=OK trace_id={trace_ids[2]}',
    ]
    deadline = time.monotonic() + 5
    while not all(line in frontend_log(auth_stack.stack) for line in wanted):
        assert time.monotonic() < deadline, f"audit lines missing:\n{frontend_log(auth_stack.stack)[-3000:]}"
        time.sleep(0.2)
    # A refused delete is logged too: the peer and the credential's kind.
    code_of(lambda: r.DeleteModel(api.DeleteModelRequest(model_id=model_id), metadata=(("authorization", "Bearer wrong-token"),)))
    deadline = time.monotonic() + 5
    while "event=refused method=/cogmentAPI.ModelRegistrySP/DeleteModel" not in frontend_log(auth_stack.stack):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_grpcurl_with_a_bearer_header(auth_stack: AuthStack) -> None:
    """The README's grpcurl line: -H reaches reflection and the call alike."""
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    address = auth_stack.stack.address
    command = [grpcurl, "-plaintext", "-d", "{}", address, "cogmentAPI.ModelRegistrySP/RetrieveModels"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr
    header = ["-H", f"authorization: Bearer {auth_stack.tokens['read']}"]
    done = subprocess.run([grpcurl, *header, *command[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "modelInfos" in done.stdout or done.stdout.strip().startswith("{")


def test_cli_and_sdk_with_credentials(auth_stack: AuthStack, tmp_path: Path) -> None:
    from model_registry_client import PermissionDeniedError, RegistryClient, UnauthenticatedError

    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_REGISTRY_")}
    env["MODEL_REGISTRY_ADDRESS"] = auth_stack.stack.address
    model_id = f"cli-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data.bin"
    data.write_bytes(b"pushed with a token")
    refused = cli("models", "create", model_id, env=env)
    assert refused.returncode == 6 and "the registry wants a credential: pass --token or --user" in refused.stderr
    done = cli("models", "create", model_id, "--token", auth_stack.tokens["write"], env=env)
    assert done.returncode == 0, done.stderr
    done = cli("push", model_id, str(data), "--token", auth_stack.tokens["write"], env=env)
    assert done.returncode == 0, done.stderr
    reader_env = {**env, "MODEL_REGISTRY_PASSWORD": PASSWORDS["read"]}
    done = cli("--user", "user-read", "pull", model_id, "-o", "-", env=reader_env)
    assert done.returncode == 0 and done.stdout == "pushed with a token", done.stderr
    denied = cli("--user", "user-read", "models", "rm", model_id, env=reader_env)
    assert denied.returncode == 6 and "PERMISSION_DENIED" in denied.stderr and "needs the role admin" in denied.stderr
    with RegistryClient(auth_stack.stack.address, user="user-read", password=PASSWORDS["read"]) as reader:
        assert reader.pull(model_id) == b"pushed with a token"
        with pytest.raises(PermissionDeniedError):
            reader.delete_model(model_id)
    with RegistryClient(auth_stack.stack.address, token="") as nobody, pytest.raises(UnauthenticatedError):
        nobody.get_model(model_id)
    with RegistryClient(auth_stack.stack.address, token=auth_stack.tokens["admin"]) as admin:
        admin.delete_model(model_id)


def test_anonymous_role(auth_stack: AuthStack, tmp_path: Path) -> None:
    """A second frontend on the same upstreams, with
    COGMENT_MODEL_REGISTRY_ANONYMOUS_ROLE=read: reads need no credential,
    writes still do."""
    state = json.loads((auth_stack.stack.run_dir / "state.json").read_text())
    port = free_port()
    env = {
        **auth_stack.stack.env,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen")]),
        "COGMENT_MODEL_REGISTRY_BIND_HOST": "127.0.0.1",
        "COGMENT_MODEL_REGISTRY_FRONTEND_PORT": str(port),
        "COGMENT_MODEL_REGISTRY_METRICS_PORT": "0",
        "COGMENT_MODEL_REGISTRY_INTERNAL_ADDRESS": f"127.0.0.1:{state['internal_port']}",
        "COGMENT_MODEL_REGISTRY_BLOBSTORE_ADDRESSES": ",".join(
            f"127.0.0.1:{p['port']}" for p in state["processes"] if p["kind"] == "blobstore"
        ),
        "COGMENT_MODEL_REGISTRY_ANONYMOUS_ROLE": "read",
    }
    log_path = auth_stack.stack.run_dir / "frontend-anonymous.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.frontend"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            registry = api_grpc.ModelRegistrySPStub(channel)
            deadline = time.monotonic() + 30
            while code_of(lambda: registry.RetrieveModels(api.RetrieveModelsRequest())) == grpc.StatusCode.UNAVAILABLE:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert code_of(lambda: registry.RetrieveModels(api.RetrieveModelsRequest())) == OK
            with pytest.raises(grpc.RpcError) as denied:
                registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id="anon")))
            assert denied.value.code() == DENIED and "without a credential have the role read" in denied.value.details()
            # A credential is still checked: a wrong one is not anonymous.
            assert code_of(
                lambda: registry.RetrieveModels(api.RetrieveModelsRequest(), metadata=(("authorization", "Bearer bad"),))
            ) == UNAUTHENTICATED
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_bad_setting_stops_the_frontend_with_one_line(auth_stack: AuthStack, tmp_path: Path) -> None:
    for variable, value, wanted in [
        ("COGMENT_MODEL_REGISTRY_ANONYMOUS_ROLE", "root", "COGMENT_MODEL_REGISTRY_ANONYMOUS_ROLE"),
        ("COGMENT_MODEL_REGISTRY_AUTH_FILE", str(tmp_path / "absent.json"), "COGMENT_MODEL_REGISTRY_AUTH_FILE"),
    ]:
        env = {
            **auth_stack.stack.env,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen")]),
            "COGMENT_MODEL_REGISTRY_FRONTEND_PORT": "0",
            "COGMENT_MODEL_REGISTRY_METRICS_PORT": "0",
            variable: value,
        }
        done = subprocess.run([sys.executable, "-m", "services.frontend"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and wanted in lines[0], done.stderr


def test_the_cogment_sdk_with_http_basic(auth_stack: AuthStack) -> None:
    """The official Cogment SDK, `GrpcMetadata.add_http_basic_auth` (scheme
    `basic`), in its own venv (tests/cogment_sdk/setup_venv.sh, as
    test_cogment_deployment.py builds it)."""
    sdk_venv = REPO_ROOT / ".venv-cogment-sdk"
    setup = subprocess.run(
        ["bash", str(REPO_ROOT / "tests/cogment_sdk/setup_venv.sh"), str(sdk_venv)], capture_output=True, text=True, timeout=600
    )
    if setup.returncode == 3:
        pytest.skip(f"the official Cogment SDK cannot be installed, PyPI is unreachable: {setup.stderr.strip()}")
    assert setup.returncode == 0, setup.stderr
    run = subprocess.run(
        [
            str(sdk_venv / "bin/python"),
            str(REPO_ROOT / "tests/cogment_sdk/sdk_auth.py"),
            "--endpoint", f"grpc://{auth_stack.stack.address}",
            "--writer", "user-write",
            "--reader", "user-read",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SDK_WRITER_PASSWORD": PASSWORDS["write"], "SDK_READER_PASSWORD": PASSWORDS["read"]},
    )
    steps = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    failed = [result for result in steps if not result["ok"]]
    assert run.returncode == 0 and len(steps) == 4 and not failed, (failed, run.stderr[-3000:])


def test_no_secret_in_any_log_file(auth_stack: AuthStack) -> None:
    """Last here: after every test above has sent its credentials."""
    secrets = [*auth_stack.tokens.values(), *PASSWORDS.values()]
    secrets += [base64.b64encode(f"user-{role}:{PASSWORDS[role]}".encode()).decode() for role in cf.ROLES]
    for entry in cf.load(auth_stack.auth_file):
        if entry.kind == "token":
            secrets.append(entry.secret)
        elif entry.kind == "user":
            secrets += [entry.secret["hash"], entry.secret["salt"]]
    logs = sorted(auth_stack.stack.run_dir.glob("*.log"))
    assert any(p.name.startswith("frontend") for p in logs) and any(p.name == "envoy.log" for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret is in {path.name}"
