"""The access policy without a network: the role table, every way a
credential is accepted or refused, reload of the file, the Basic cache,
constant-time comparisons, XFCC parsing, the audit record."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os

import grpc
import model_registry_credentials as cf
import pytest

from services.common import access, metrics
from services.common.access import (
    ADMIN,
    READ,
    WRITE,
    AccessPolicy,
    AccessSettings,
    OpenAccess,
    audited,
    client_certificate_cn,
    required_role,
)
from services.common.config import ConfigError
from services.common.errors import PermissionDenied, ResourceExhausted, Unauthenticated

API = "/cogmentAPI.ModelRegistrySP/"
LEGACY = "/cogment.ModelRegistrySP/"
TOKEN = "t0ken-" + "x" * 40
PASSWORD = "correct horse"
# Small scrypt parameters: the tests verify many passwords on a shared machine.
FAST = {"n": 2**4, "r": 8, "p": 1}


class Context:
    """What the policy reads of a grpc.aio.ServicerContext."""

    def __init__(self, **metadata: str) -> None:
        self._metadata = tuple((key.replace("_", "-"), value) for key, value in metadata.items())

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"


def bearer(token: str = TOKEN) -> Context:
    return Context(authorization=f"Bearer {token}")


def basic(user: str, password: str, scheme: str = "Basic") -> Context:
    return Context(authorization=f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode())


def entries() -> list[cf.Entry]:
    return [
        cf.Entry("reader-token", "token", READ, cf.token_digest(TOKEN)),
        cf.Entry("writer", "user", WRITE, cf.hash_password(PASSWORD, **FAST)),
        cf.Entry("admin", "user", ADMIN, cf.hash_password("root pw", **FAST)),
        cf.Entry("robot, inc", "cert", ADMIN),
    ]


@pytest.fixture
def auth_file(tmp_path):
    path = tmp_path / "auth.json"
    cf.save(path, entries())
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(path, clock=None, **settings) -> AccessPolicy:
    return AccessPolicy(AccessSettings(auth_file=str(path), **settings), clock=clock or Clock())


def authorize(p, method: str, context: Context):
    return asyncio.run(p.authorize(method, context))


def failures(credential: str, reason: str) -> float:
    sample = metrics._authentication_failures().labels(credential, reason)
    return sample._value.get()


# -- the role table


@pytest.mark.parametrize(
    ("method", "role"),
    [
        *[(prefix + name, READ) for prefix in (API, LEGACY) for name in ("RetrieveModels", "RetrieveVersionInfos", "RetrieveVersionData")],
        (API + "VersionUpdate", READ),
        (API + "Version", READ),
        (API + "Status", READ),
        (API + "CreateOrUpdateModel", WRITE),
        (LEGACY + "CreateVersion", WRITE),
        (API + "DeleteModel", ADMIN),
        (API + "SomethingNew", ADMIN),
        ("/registry.Admin/ImportModel", ADMIN),
        ("/registry.Admin/ImportVersion", ADMIN),
        ("/registry.MetadataService/CommitVersion", ADMIN),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", READ),
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.health.v1.Health/Watch", None),
        ("/nonsense", ADMIN),
        ("", ADMIN),
    ],
)
def test_role_table(method, role):
    assert required_role(method) == role


def test_writes_and_deletes_are_audited_reads_are_not():
    assert audited(API + "CreateVersion") and audited(API + "DeleteModel") and audited("/registry.Admin/ImportVersion")
    assert not audited(API + "RetrieveModels") and not audited("/grpc.health.v1.Health/Check")


# -- settings


def test_settings_from_env():
    settings = AccessSettings.from_env(
        {access.AUTH_FILE_VARIABLE: "/x", access.ANONYMOUS_ROLE_VARIABLE: "Read", access.TLS_CLIENT_CA_VARIABLE: "/ca"}
    )
    assert settings == AccessSettings("/x", READ, 2.0, True)
    assert AccessSettings.from_env({}) == AccessSettings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [(access.ANONYMOUS_ROLE_VARIABLE, "root"), (access.AUTH_FILE_CHECK_VARIABLE, "60"), (access.AUTH_FILE_CHECK_VARIABLE, "x")],
)
def test_bad_settings_name_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        AccessSettings.from_env({variable: value})


def test_a_missing_file_at_start_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=access.AUTH_FILE_VARIABLE):
        policy(tmp_path / "absent.json")


def test_an_invalid_file_at_start_is_a_config_error_without_its_content(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text('{"format": "model-registry-credentials/1", "entries": [{"name": "a", "kind": "token", "role": "read", "sha256": "SECRETVALUE"}]}')
    with pytest.raises(ConfigError) as raised:
        policy(path)
    assert "SECRETVALUE" not in str(raised.value) and access.AUTH_FILE_VARIABLE in str(raised.value)


def test_no_file_means_open():
    identity = asyncio.run(OpenAccess().authorize(API + "DeleteModel", Context()))
    assert identity.name == "open" and identity.role == ADMIN
    assert isinstance(access.access_control(AccessSettings()), OpenAccess)


# -- credentials


def test_health_is_open_without_credential(auth_file):
    assert authorize(policy(auth_file), "/grpc.health.v1.Health/Check", Context()).name == "open"


def test_missing_credential_is_unauthenticated(auth_file):
    before = failures("none", "missing")
    with pytest.raises(Unauthenticated, match="requires a credential"):
        authorize(policy(auth_file), API + "RetrieveModels", Context())
    assert failures("none", "missing") == before + 1


def test_bearer_token_gets_its_role(auth_file):
    identity = authorize(policy(auth_file), API + "RetrieveModels", bearer())
    assert (identity.name, identity.role, identity.credential) == ("reader-token", READ, "bearer")


def test_bearer_scheme_is_case_insensitive(auth_file):
    assert authorize(policy(auth_file), API + "Status", Context(authorization=f"bearer {TOKEN}")).name == "reader-token"


def test_unknown_token_is_unauthenticated_without_echo(auth_file):
    before = failures("bearer", "unknown")
    with pytest.raises(Unauthenticated) as raised:
        authorize(policy(auth_file), API + "RetrieveModels", bearer("guessed-token-value"))
    assert "guessed-token-value" not in raised.value.message
    assert failures("bearer", "unknown") == before + 1


def test_known_but_not_allowed_is_permission_denied_naming_both_roles(auth_file):
    before = failures("bearer", "forbidden")
    with pytest.raises(PermissionDenied) as raised:
        authorize(policy(auth_file), API + "CreateVersion", bearer())
    assert "needs the role write" in raised.value.message and "'reader-token' has the role read" in raised.value.message
    assert failures("bearer", "forbidden") == before + 1


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
def test_basic_user_gets_its_role(auth_file, scheme):
    identity = authorize(policy(auth_file), API + "CreateVersion", basic("writer", PASSWORD, scheme))
    assert (identity.name, identity.role, identity.credential) == ("writer", WRITE, "basic")


def test_password_with_colon(tmp_path):
    path = tmp_path / "auth.json"
    cf.save(path, [cf.Entry("u", "user", READ, cf.hash_password("a:b", **FAST))])
    assert authorize(policy(path), API + "Status", basic("u", "a:b")).name == "u"


def test_wrong_password_and_unknown_user_say_the_same(auth_file):
    p = policy(auth_file)
    with pytest.raises(Unauthenticated) as wrong:
        authorize(p, API + "Status", basic("writer", "wrong password"))
    with pytest.raises(Unauthenticated) as unknown:
        authorize(p, API + "Status", basic("nobody", "wrong password"))
    assert wrong.value.message == unknown.value.message
    assert "wrong password" not in wrong.value.message


def test_basic_failure_reasons_are_counted(auth_file):
    p = policy(auth_file)
    mismatch, unknown = failures("basic", "mismatch"), failures("basic", "unknown")
    for user in ("writer", "nobody"):
        with pytest.raises(Unauthenticated):
            authorize(p, API + "Status", basic(user, "nope"))
    assert (failures("basic", "mismatch"), failures("basic", "unknown")) == (mismatch + 1, unknown + 1)


@pytest.mark.parametrize(
    "value",
    ["Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic " + base64.b64encode(b":pw").decode(), "Bearer", "Digest abc", "Bearer "],
)
def test_malformed_authorization_is_unauthenticated(auth_file, value):
    with pytest.raises(Unauthenticated, match="neither"):
        authorize(policy(auth_file), API + "Status", Context(authorization=value))


def test_successful_basic_is_cached_and_the_cache_empties_on_change(auth_file, monkeypatch):
    clock = Clock()
    p = policy(auth_file, clock)
    calls = []
    real_verify = cf.verify_password

    def counting_verify(password, stored):
        calls.append(1)
        return real_verify(password, stored)

    monkeypatch.setattr(cf, "verify_password", counting_verify)
    for _ in range(3):
        authorize(p, API + "Status", basic("writer", PASSWORD))
    assert len(calls) == 1
    # A wrong password is never served from the cache.
    with pytest.raises(Unauthenticated):
        authorize(p, API + "Status", basic("writer", PASSWORD + "!"))
    assert len(calls) == 2
    cf.save(auth_file, [*entries(), cf.Entry("more", "cert", READ)])
    clock.now += 5
    authorize(p, API + "Status", basic("writer", PASSWORD))
    assert len(calls) == 3


def test_basic_cache_is_bounded(auth_file, monkeypatch):
    monkeypatch.setattr(access, "BASIC_CACHE_MAX_ENTRIES", 2)
    users = [cf.Entry(f"u{i}", "user", READ, cf.hash_password(f"pw{i}", **FAST)) for i in range(4)]
    cf.save(auth_file, users)
    p = policy(auth_file)
    for i in range(4):
        authorize(p, API + "Status", basic(f"u{i}", f"pw{i}"))
    assert len(p._basic_cache) == 2


def test_a_changed_password_invalidates_the_cached_one(auth_file):
    clock = Clock()
    p = policy(auth_file, clock)
    authorize(p, API + "Status", basic("writer", PASSWORD))
    replaced = [e for e in entries() if e.name != "writer"] + [cf.Entry("writer", "user", WRITE, cf.hash_password("new", **FAST))]
    cf.save(auth_file, replaced)
    clock.now += 5
    with pytest.raises(Unauthenticated):
        authorize(p, API + "Status", basic("writer", PASSWORD))


def test_password_checks_run_one_at_a_time_and_few_wait(auth_file, monkeypatch):
    """A flood of passwords to check (a stranger guessing) holds one thread
    at a time; beyond the waiting limit it is refused at once, naming the
    setting, while a password verified before and tokens never wait."""
    import threading
    import time as clock_time

    running, most = [0], [0]
    lock = threading.Lock()
    real_verify = cf.verify_password

    def slow_verify(password, stored):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        clock_time.sleep(0.02)
        with lock:
            running[0] -= 1
        return real_verify(password, stored)

    p = policy(auth_file, password_checks_waiting=3)
    authorize(p, API + "Status", basic("writer", PASSWORD))  # verified, kept
    monkeypatch.setattr(cf, "verify_password", slow_verify)
    busy = failures("basic", "busy")

    async def flood():
        guesses = [p.authorize(API + "Status", basic("admin", f"guess {i}")) for i in range(8)]
        known = [p.authorize(API + "Status", basic("writer", PASSWORD)), p.authorize(API + "Status", bearer())]
        return await asyncio.gather(*guesses, *known, return_exceptions=True)

    *guesses, writer, reader = asyncio.run(flood())
    refused = [g for g in guesses if isinstance(g, ResourceExhausted)]
    assert len(refused) == 4 and all(isinstance(g, Unauthenticated) for g in guesses if g not in refused)
    assert "PASSWORD_CHECKS_WAITING" in refused[0].message and "bearer token" in refused[0].message
    assert failures("basic", "busy") == busy + 4
    assert most[0] == 1
    assert (writer.name, reader.name) == ("writer", "reader-token")


def test_comparisons_are_constant_time(auth_file, monkeypatch):
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append(type(a))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    p = policy(auth_file)
    authorize(p, API + "Status", bearer())
    authorize(p, API + "Status", basic("writer", PASSWORD))
    assert compared == [str, bytes]


# -- anonymous role


def test_anonymous_role(auth_file):
    p = policy(auth_file, anonymous_role=READ)
    identity = authorize(p, API + "RetrieveModels", Context())
    assert (identity.name, identity.role) == ("anonymous", READ)
    with pytest.raises(PermissionDenied, match="without a credential have the role read"):
        authorize(p, API + "CreateVersion", Context())
    # A credential presented is still checked: a bad one is not anonymous.
    with pytest.raises(Unauthenticated):
        authorize(p, API + "RetrieveModels", bearer("bad"))


# -- client certificates


@pytest.mark.parametrize(
    ("header", "cn"),
    [
        ('Hash=abc;Subject="CN=alice,O=Org"', "alice"),
        ('Hash=abc;Subject="O=Org,CN=alice"', "alice"),
        ('Hash=abc;Subject="CN=robot\\, inc,O=Org"', "robot, inc"),
        ('By=spiffe://x;Hash=abc;Subject="CN=a\\"q,O=Org";URI=', 'a"q'),
        ('Hash=1;Subject="CN=first",Hash=2;Subject="CN=nearest"', "nearest"),
        ("Hash=abc;Subject=CN=plain", "plain"),
        ('Hash=abc;Subject="O=Org"', None),
        ("Hash=abc", None),
        ("", None),
    ],
)
def test_xfcc_common_name(header, cn):
    assert client_certificate_cn(header) == cn


def test_certificate_identity_only_under_mtls(auth_file):
    header = 'Hash=abc;Subject="CN=robot\\, inc,O=Org"'
    identity = authorize(policy(auth_file, client_certificates=True), API + "DeleteModel", Context(x_forwarded_client_cert=header))
    assert (identity.name, identity.role, identity.credential) == ("robot, inc", ADMIN, "certificate")
    # Without a client CA nothing verified a certificate: the header is ignored.
    with pytest.raises(Unauthenticated, match="requires a credential"):
        authorize(policy(auth_file), API + "DeleteModel", Context(x_forwarded_client_cert=header))


def test_unknown_certificate_is_unauthenticated(auth_file):
    with pytest.raises(Unauthenticated, match="'mallory'"):
        authorize(policy(auth_file, client_certificates=True), API + "Status", Context(x_forwarded_client_cert='Subject="CN=mallory"'))


def test_a_token_entry_name_is_not_a_certificate(auth_file):
    with pytest.raises(Unauthenticated):
        authorize(policy(auth_file, client_certificates=True), API + "Status", Context(x_forwarded_client_cert='Subject="CN=reader-token"'))


# -- reload


def test_reload_sees_added_and_removed_tokens_after_the_interval(auth_file):
    clock = Clock()
    p = policy(auth_file, clock, check_interval_seconds=2.0)
    new_token = cf.new_token()
    cf.save(auth_file, [*entries(), cf.Entry("new", "token", ADMIN, cf.token_digest(new_token))])
    with pytest.raises(Unauthenticated):
        authorize(p, API + "DeleteModel", bearer(new_token))  # not checked again yet
    clock.now += 2.5
    assert authorize(p, API + "DeleteModel", bearer(new_token)).name == "new"
    cf.save(auth_file, entries())
    clock.now += 2.5
    with pytest.raises(Unauthenticated):
        authorize(p, API + "DeleteModel", bearer(new_token))


def test_same_size_same_mtime_rewrite_is_seen_by_inode(auth_file):
    clock = Clock()
    p = policy(auth_file, clock)
    status = os.stat(auth_file)
    replacement = [cf.Entry("reader-token", "token", ADMIN, cf.token_digest(TOKEN)), *entries()[1:]]
    cf.save(auth_file, replacement)  # a rename: a new inode
    os.utime(auth_file, ns=(status.st_atime_ns, status.st_mtime_ns))
    clock.now += 5
    assert authorize(p, API + "DeleteModel", bearer()).role == ADMIN


def test_a_broken_file_keeps_the_last_good_policy_and_logs_once(auth_file, caplog):
    clock = Clock()
    p = policy(auth_file, clock)
    auth_file.write_text('{"format": "model-registry-credentials/1", "entries": [{"name": "x", "kind": "token", "role": "read", "sha256": "LEAKED-SECRET"}]}')
    with caplog.at_level(logging.ERROR, logger="registry.access"):
        for _ in range(3):
            clock.now += 5
            assert authorize(p, API + "Status", bearer()).name == "reader-token"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping the previous credentials" in errors[0].getMessage()
    assert "LEAKED-SECRET" not in caplog.text
    auth_file.unlink()
    clock.now += 5
    assert authorize(p, API + "Status", bearer()).name == "reader-token"


# -- logging


def test_refusals_are_logged_with_peer_and_kind_never_the_value(auth_file, caplog):
    with caplog.at_level(logging.INFO, logger="registry.audit"):
        for context in (bearer("SECRET-TOKEN-VALUE"), basic("writer", "SECRET-PASSWORD")):
            with pytest.raises(Unauthenticated):
                authorize(policy(auth_file), API + "Status", context)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "peer=ipv4:127.0.0.1:5555 credential=bearer reason=unknown outcome=UNAUTHENTICATED" in lines[0]
    assert "credential=basic reason=mismatch" in lines[1]
    assert "SECRET" not in caplog.text and base64.b64encode(b"writer:SECRET-PASSWORD").decode() not in caplog.text


def test_audit_record_line(caplog):
    identity = access.Identity("alice", WRITE, "bearer")
    with caplog.at_level(logging.INFO, logger="registry.audit"):
        token = access.begin(identity, API + "CreateVersion")
        access.note(model_id='m "1"\n', version_number=3)
        access.end(token, grpc.StatusCode.OK)
        access.note(model_id="outside a call: ignored")
    assert caplog.records[0].getMessage() == (
        f'event=call identity="alice" method={API}CreateVersion model="m \\"1\\"\\n" version=3 outcome=OK trace_id=-'
    )
    assert len(caplog.records) == 1


# -- installed on a real server


def test_the_check_runs_before_decoding_and_audits_writes(auth_file, caplog):
    """On a real gRPC server: a call without a credential is refused before
    its bytes are decoded (UNAUTHENTICATED, not INVALID_ARGUMENT) and its
    handler never runs; an accepted write is audited with its outcome."""
    from grpc_health.v1 import health_pb2

    from services.common.grpc_server import bind, create_aio_server
    from services.launcher.ports import LOOPBACK

    ran = []

    async def handler(request, context):
        ran.append(request.service)
        access.note(model_id=request.service)
        return health_pb2.HealthCheckResponse()

    async def scenario():
        grpc_server = create_aio_server(4 * 1024 * 1024, access=policy(auth_file))
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                handler, health_pb2.HealthCheckRequest.FromString, health_pb2.HealthCheckResponse.SerializeToString
            )
            for name in ("RetrieveModels", "CreateOrUpdateModel")
        }
        grpc_server.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("cogmentAPI.ModelRegistrySP", handlers)])
        port = bind(grpc_server.server, LOOPBACK, 0)
        await grpc_server.server.start()
        codes = []
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            for method, body, metadata in [
                (API + "RetrieveModels", b"\x0a\x02\xff\xfe", ()),
                (API + "RetrieveModels", b"\x0a\x02\xff\xfe", (("authorization", f"Bearer {TOKEN}"),)),
                (API + "CreateOrUpdateModel", health_pb2.HealthCheckRequest(service="m1").SerializeToString(), (("authorization", f"Bearer {TOKEN}"),)),
                (API + "CreateOrUpdateModel", health_pb2.HealthCheckRequest(service="m2").SerializeToString(), basic("writer", PASSWORD)._metadata),
            ]:
                call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
                try:
                    await call(body, metadata=metadata)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
            health = await channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)(b"")
        await grpc_server.server.stop(0)
        return codes, health

    with caplog.at_level(logging.INFO, logger="registry.audit"):
        codes, health = asyncio.run(scenario())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK]
    assert health is not None  # health needs no credential
    assert ran == ["m2"]
    audit_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=call")]
    assert audit_lines == [f'event=call identity="writer" method={API}CreateOrUpdateModel model="m2" version=- outcome=OK trace_id=-']


def test_an_unknown_scheme_counts_as_other(auth_file):
    before = failures("other", "malformed")
    with pytest.raises(Unauthenticated):
        authorize(policy(auth_file), API + "Status", Context(authorization="Digest username=x"))
    assert failures("other", "malformed") == before + 1
