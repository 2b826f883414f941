"""Who may call what on a public server: credentials, roles, the audit trail.

- `required_role(method)`: THE role table (deny by default: a method it
  does not name needs admin; health is open).
- `AccessSettings`: COGMENT_MODEL_REGISTRY_AUTH_FILE, _ANONYMOUS_ROLE,
  _AUTH_FILE_CHECK_SECONDS, _PASSWORD_CHECKS_WAITING, and whether mTLS is on
  (_TLS_CLIENT_CA_FILE).
- `access_control(settings)`: what a public server is given as
  `create_aio_server(..., access=...)`: `OpenAccess` without a credentials
  file (everyone is "open", as the original registry), `AccessPolicy` with one.
  The request interceptor calls `authorize` for every call before decoding
  anything, and writes the audit line of the calls `audited` names.

The credentials file's format and hashing are `model_registry_credentials`'s
(shared with the CLI that writes the file). Secrets are never logged and
never echoed in a status message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import hashlib
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import model_registry_credentials as credentials_file
from opentelemetry import trace

from services.common import config as c
from services.common import metrics, service_names, tls
from services.common.errors import PermissionDenied, ResourceExhausted, Unauthenticated

log = logging.getLogger("registry.access")
audit_log = logging.getLogger("registry.audit")

AUTH_FILE_VARIABLE = c.PREFIX + "AUTH_FILE"
ANONYMOUS_ROLE_VARIABLE = c.PREFIX + "ANONYMOUS_ROLE"
AUTH_FILE_CHECK_VARIABLE = c.PREFIX + "AUTH_FILE_CHECK_SECONDS"
PASSWORD_CHECKS_WAITING_VARIABLE = c.PREFIX + "PASSWORD_CHECKS_WAITING"
TLS_CLIENT_CA_VARIABLE = tls.CLIENT_CA_FILE_VARIABLE

READ, WRITE, ADMIN = credentials_file.ROLES
# Each role allows what the roles before it allow.
_RANK = {role: rank for rank, role in enumerate(credentials_file.ROLES)}
NO_ROLE = "none"

# -- the role table -----------------------------------------------------------------------------

# Public methods by name, under both public service names (the 1.x name
# lacks some: a name it does not serve never reaches a handler anyway).
_PUBLIC_METHOD_ROLES = {
    "RetrieveModels": READ,
    "RetrieveVersionInfos": READ,
    "RetrieveVersionData": READ,
    "VersionUpdate": READ,
    "Version": READ,
    "Status": READ,
    "CreateOrUpdateModel": WRITE,
    "CreateVersion": WRITE,
    "DeleteModel": ADMIN,
}
_REFLECTION_PREFIX = "grpc.reflection."


def required_role(method: str) -> str | None:
    """The least role that may call `method` (a gRPC path,
    ``/package.Service/Method``); None: open to everyone (health only).
    Anything this table does not name needs admin (registry.Admin's imports
    included): a method added later is closed until someone opens it here."""
    service, _, name = method.lstrip("/").partition("/")
    if service == service_names.HEALTH:
        return None
    if service in service_names.PUBLIC:
        return _PUBLIC_METHOD_ROLES.get(name, ADMIN)
    if service.startswith(_REFLECTION_PREFIX):
        return READ
    return ADMIN


def allows(role: str | None, needed: str) -> bool:
    return role is not None and role in _RANK and _RANK[role] >= _RANK[needed]


def audited(method: str) -> bool:
    """Whether a call of `method` gets an audit line: every write and delete."""
    role = required_role(method)
    return role is not None and role != READ


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessSettings:
    """How a public server checks callers (README, "Access control")."""

    # None: no credentials file, every call is allowed (identity "open").
    auth_file: str | None = None
    # The role of a call without a credential when auth_file is set.
    anonymous_role: str = NO_ROLE
    # How often, at most, the file is checked for a change (on calls).
    check_interval_seconds: float = 2.0
    # Client certificates are honoured only when mTLS is on: otherwise
    # nothing has verified one, whatever a header claims.
    client_certificates: bool = False
    # Basic passwords not verified yet (scrypt: ~50 ms of a core and 16 MiB
    # each) are checked one at a time, and at most this many wait their turn:
    # a stranger guessing passwords costs at most one core's thread, and
    # is refused beyond, while verified passwords and tokens never wait.
    password_checks_waiting: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AccessSettings:
        anonymous = c.env_str(ANONYMOUS_ROLE_VARIABLE, NO_ROLE, env).lower()
        if anonymous not in (NO_ROLE, *credentials_file.ROLES):
            raise c.ConfigError(
                f"{ANONYMOUS_ROLE_VARIABLE}={anonymous!r} is not a role: use none, {', '.join(credentials_file.ROLES)}"
            )
        interval = c.env_float(AUTH_FILE_CHECK_VARIABLE, 2.0, env)
        if not 0 <= interval <= 10:
            raise c.ConfigError(f"{AUTH_FILE_CHECK_VARIABLE}={interval} must be from 0 to 10 seconds")
        return cls(
            auth_file=c.env_str(AUTH_FILE_VARIABLE, "", env) or None,
            anonymous_role=anonymous,
            check_interval_seconds=interval,
            client_certificates=tls.public_mtls_enabled(env),
            password_checks_waiting=c.env_int(
                PASSWORD_CHECKS_WAITING_VARIABLE, cls.password_checks_waiting, env, minimum=0
            ),
        )


# -- identities ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who a call is from: an entry's name, "anonymous" or "open"; its
    role (None: none); the kind of credential it presented."""

    name: str
    role: str | None
    credential: str  # none, bearer, basic, certificate


OPEN = Identity("open", ADMIN, "none")


class AccessControl(Protocol):
    """What `create_aio_server(access=...)` takes."""

    async def authorize(self, method: str, context: grpc.aio.ServicerContext) -> Identity:
        """The caller's identity if it may call `method`; raises
        Unauthenticated or PermissionDenied otherwise."""
        ...


class OpenAccess:
    """No credentials file: every call is allowed, as in the original registry."""

    async def authorize(self, method: str, context: grpc.aio.ServicerContext) -> Identity:
        return OPEN


# -- parsing what a call presents ---------------------------------------------------------------

XFCC_HEADER = "x-forwarded-client-cert"


def _split_unquoted(text: str, separator: str) -> list[str]:
    """`text` cut at each `separator` outside double quotes (a backslash
    escapes the next character inside quotes)."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        # Envoy escapes only double quotes inside a quoted value; other
        # backslashes belong to the value (a DN's own escapes, as in `\,`).
        return value[1:-1].replace('\\"', '"')
    return value


def _dn_common_name(subject: str) -> str | None:
    """The CN of an RFC 2253 distinguished name (``CN=alice\\, jr,O=Org``)."""
    attribute, value, in_value, escaped = [], [], False, False
    for ch in subject + ",":
        if escaped:
            (value if in_value else attribute).append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",+":
            if "".join(attribute).strip().upper() == "CN":
                return "".join(value).strip()
            attribute, value, in_value = [], [], False
        elif ch == "=" and not in_value:
            in_value = True
        else:
            (value if in_value else attribute).append(ch)
    return None


def client_certificate_cn(header: str) -> str | None:
    """The subject CN of the client certificate in Envoy's
    x-forwarded-client-cert header (``Hash=…;Subject="CN=alice,O=Org"``);
    of its last element if several proxies appended one (the nearest's)."""
    elements = [e for e in _split_unquoted(header, ",") if e.strip()]
    if not elements:
        return None
    for pair in _split_unquoted(elements[-1], ";"):
        key, separator, value = pair.partition("=")
        if separator and key.strip().lower() == "subject":
            return _dn_common_name(_unquote(value))
    return None


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


# -- the policy ---------------------------------------------------------------------------------

MISSING_MESSAGE = (
    "this registry requires a credential: send the metadata 'authorization: Bearer <token>' or "
    "'authorization: Basic <base64(user:password)>' (model-registry --token or --user)"
)
REFUSED_MESSAGE = "this credential was not accepted: unknown token, or wrong user name or password"
MALFORMED_MESSAGE = (
    "the authorization metadata is neither 'Bearer <token>' nor 'Basic <base64(user:password)>'"
)
BUSY_MESSAGE = (
    f"too many password checks are waiting (at most {{}}: {PASSWORD_CHECKS_WAITING_VARIABLE}); retry later, "
    "or use a bearer token, which never waits"
)
# Successful Basic verifications kept (a call that hits pays a SHA-256, not scrypt).
BASIC_CACHE_MAX_ENTRIES = 1024
# Verified against for an unknown user, so that it costs what a wrong
# password does (no password matches it: its hash is of nothing).
_DUMMY_SCRYPT = {
    "n": credentials_file.SCRYPT_N,
    "r": credentials_file.SCRYPT_R,
    "p": credentials_file.SCRYPT_P,
    "salt": base64.b64encode(b"\0" * credentials_file.SALT_BYTES).decode("ascii"),
    "hash": base64.b64encode(b"\0" * credentials_file.SCRYPT_DKLEN).decode("ascii"),
}


class _Refused(Exception):
    def __init__(self, credential: str, reason: str, error: Exception) -> None:
        super().__init__(error)
        self.credential, self.reason, self.error = credential, reason, error


@dataclass(frozen=True)
class _Loaded:
    tokens: dict[str, credentials_file.Entry]  # by SHA-256 hex
    users: dict[str, credentials_file.Entry]
    certificates: dict[str, credentials_file.Entry]
    # (mtime_ns, size, inode) of the file they were read from.
    signature: tuple[int, int, int]


def _file_signature(path: str) -> tuple[int, int, int]:
    status = os.stat(path)
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def _read_policy(path: str) -> _Loaded:
    signature = _file_signature(path)
    entries = credentials_file.load(path)
    by_kind: dict[str, dict[str, credentials_file.Entry]] = {kind: {} for kind in credentials_file.KINDS}
    for entry in entries:
        by_kind[entry.kind][entry.secret if entry.kind == "token" else entry.name] = entry
    return _Loaded(by_kind["token"], by_kind["user"], by_kind["cert"], signature)


class AccessPolicy:
    """Checks each call's credential against the credentials file.

    The file is read at start (a missing or invalid one is a ConfigError)
    and checked for a change at most every `check_interval_seconds`, on
    calls: a change is read again; a file that became unreadable or invalid
    keeps the last good policy, with one error line (never its content).
    """

    def __init__(self, settings: AccessSettings, *, clock: Any = time.monotonic) -> None:
        assert settings.auth_file is not None
        self.settings = settings
        self._path = settings.auth_file
        self._clock = clock
        try:
            self._loaded = _read_policy(self._path)
        except OSError as exc:
            raise c.ConfigError(f"{AUTH_FILE_VARIABLE}={self._path!r} cannot be read: {exc.strerror}") from None
        except credentials_file.CredentialsFileError as exc:
            raise c.ConfigError(f"{AUTH_FILE_VARIABLE}={self._path!r} is not a usable credentials file: {exc}") from None
        self._checked_at = clock()
        # The signature of a file that failed to load: its error is logged once.
        self._failed_signature: tuple[int, int, int] | None = None
        self._basic_cache: OrderedDict[bytes, Identity] = OrderedDict()
        # One scrypt at a time (`password_checks_waiting` says why); how many hold or wait for it.
        self._password_check = asyncio.Semaphore(1)
        self._password_checks = 0

    # -- reload

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked_at < self.settings.check_interval_seconds:
            return
        self._checked_at = now
        try:
            signature = _file_signature(self._path)
        except OSError as exc:
            self._keep_last_good(None, f"cannot be read ({exc.strerror})")
            return
        if signature == self._loaded.signature or signature == self._failed_signature:
            return
        try:
            loaded = _read_policy(self._path)
        except OSError as exc:
            self._keep_last_good(signature, f"cannot be read ({exc.strerror})")
            return
        except credentials_file.CredentialsFileError as exc:
            self._keep_last_good(signature, f"is not a usable credentials file ({exc})")
            return
        self._loaded = loaded
        self._failed_signature = None
        self._basic_cache.clear()
        log.info(
            "credentials file reloaded: %d tokens, %d users, %d certificates",
            len(loaded.tokens),
            len(loaded.users),
            len(loaded.certificates),
        )

    def _keep_last_good(self, signature: tuple[int, int, int] | None, problem: str) -> None:
        if signature is None or signature != self._failed_signature:
            log.error("%s=%s %s: keeping the previous credentials", AUTH_FILE_VARIABLE, self._path, problem)
        self._failed_signature = signature if signature is not None else (-1, -1, -1)

    # -- checking a call

    async def authorize(self, method: str, context: grpc.aio.ServicerContext) -> Identity:
        """The caller's identity if it may call `method`; Unauthenticated or
        PermissionDenied (counted, logged with the peer) otherwise."""
        needed = required_role(method)
        if needed is None:
            return OPEN
        self._refresh()
        try:
            identity = await self._identify(context)
            if not allows(identity.role, needed):
                raise _Refused(identity.credential, "forbidden", PermissionDenied(_forbidden_message(method, needed, identity)))
        except _Refused as refused:
            metrics.authentication_failed(refused.credential, refused.reason)
            _log_refusal(method, context, refused)
            raise refused.error from None
        return identity

    async def _identify(self, context: grpc.aio.ServicerContext) -> Identity:
        authorization = _metadata_value(context, "authorization")
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            scheme = scheme.lower()
            if scheme == "bearer":
                return self._bearer(value.strip())
            if scheme == "basic":
                return await self._basic(value.strip())
            # A scheme of no kind we know: counted (and logged) as "other".
            raise _Refused("other", "malformed", Unauthenticated(MALFORMED_MESSAGE))
        if self.settings.client_certificates:
            header = _metadata_value(context, XFCC_HEADER)
            if header is not None:
                return self._certificate(header)
        if self.settings.anonymous_role == NO_ROLE:
            raise _Refused("none", "missing", Unauthenticated(MISSING_MESSAGE))
        return Identity("anonymous", self.settings.anonymous_role, "none")

    def _bearer(self, token: str) -> Identity:
        if not token:
            raise _Refused("bearer", "malformed", Unauthenticated(MALFORMED_MESSAGE))
        digest = credentials_file.token_digest(token)
        # Looked up by the SHA-256 of a random 256-bit token: the lookup's
        # timing tells nothing usable about the token itself; the final
        # comparison is constant-time all the same.
        entry = self._loaded.tokens.get(digest)
        if entry is None or not hmac.compare_digest(entry.secret, digest):
            raise _Refused("bearer", "unknown", Unauthenticated(REFUSED_MESSAGE))
        return Identity(entry.name, entry.role, "bearer")

    async def _basic(self, encoded: str) -> Identity:
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _Refused("basic", "malformed", Unauthenticated(MALFORMED_MESSAGE)) from None
        user_bytes, separator, password = decoded.partition(b":")
        try:
            user = user_bytes.decode("utf-8")
        except UnicodeDecodeError:
            user = None
        if not separator or not user:
            raise _Refused("basic", "malformed", Unauthenticated(MALFORMED_MESSAGE))
        entry = self._loaded.users.get(user)
        stored = entry.secret if entry is not None else _DUMMY_SCRYPT
        # The stored hash in the key: a changed password never matches an old entry.
        key = hashlib.sha256(decoded + b"\0" + stored["hash"].encode("ascii")).digest()
        cached = self._cached_basic(key)
        if cached is not None:
            return cached
        limit = self.settings.password_checks_waiting
        if self._password_checks > limit:  # one running, `limit` waiting
            raise _Refused("basic", "busy", ResourceExhausted(BUSY_MESSAGE.format(limit)))
        self._password_checks += 1
        try:
            async with self._password_check:
                # The same credential may have been verified while this call waited.
                cached = self._cached_basic(key)
                if cached is not None:
                    return cached
                # scrypt takes tens of ms: off the event loop, so other calls go on.
                matches = await asyncio.to_thread(credentials_file.verify_password, password, stored)
        finally:
            self._password_checks -= 1
        if entry is None or not matches:
            raise _Refused("basic", "unknown" if entry is None else "mismatch", Unauthenticated(REFUSED_MESSAGE))
        identity = Identity(entry.name, entry.role, "basic")
        self._basic_cache[key] = identity
        if len(self._basic_cache) > BASIC_CACHE_MAX_ENTRIES:
            self._basic_cache.popitem(last=False)
        return identity

    def _cached_basic(self, key: bytes) -> Identity | None:
        """A Basic credential verified before (and now the most recently used)."""
        cached = self._basic_cache.get(key)
        if cached is not None:
            self._basic_cache.move_to_end(key)
        return cached

    def _certificate(self, header: str) -> Identity:
        name = client_certificate_cn(header)
        if not name:
            raise _Refused("certificate", "malformed", Unauthenticated("the client certificate has no subject CN"))
        entry = self._loaded.certificates.get(name)
        if entry is None:
            raise _Refused(
                "certificate",
                "unknown",
                Unauthenticated(f"no credentials file entry of kind cert has the client certificate's CN {name!r}"),
            )
        return Identity(entry.name, entry.role, "certificate")


def _forbidden_message(method: str, needed: str, identity: Identity) -> str:
    if identity.name == "anonymous":
        return (
            f"{method} needs the role {needed}; calls without a credential have the role {identity.role} "
            f"({ANONYMOUS_ROLE_VARIABLE}): pass a credential with that role"
        )
    return f"{method} needs the role {needed}; {identity.name!r} has the role {identity.role}"


def _trace_id(context: grpc.aio.ServicerContext | None = None) -> str:
    """The call's trace id: its span's when tracing is on, else the one
    the caller's W3C `traceparent` names (so a client's trace still finds
    the line), else "-"."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return format(span_context.trace_id, "032x")
    traceparent = _metadata_value(context, "traceparent") if context is not None else None
    if traceparent is not None:
        parts = traceparent.strip().split("-")
        if len(parts) >= 4 and len(parts[1]) == 32 and all(ch in "0123456789abcdef" for ch in parts[1]):
            return parts[1]
    return "-"


def _peer(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or "-"
    forwarded = _metadata_value(context, "x-forwarded-for")
    return f"{peer} forwarded_for={forwarded}" if forwarded else peer


def _log_refusal(method: str, context: grpc.aio.ServicerContext, refused: _Refused) -> None:
    # The credential's kind and why, never its value.
    audit_log.warning(
        "event=refused method=%s peer=%s credential=%s reason=%s outcome=%s trace_id=%s",
        method,
        _peer(context),
        refused.credential,
        refused.reason,
        refused.error.code.name,
        _trace_id(context),
    )


def access_control(settings: AccessSettings) -> AccessControl:
    """The check a public server runs: OpenAccess without a credentials
    file, else the file's AccessPolicy (ConfigError if it is unusable)."""
    return OpenAccess() if settings.auth_file is None else AccessPolicy(settings)


# -- the audit trail ----------------------------------------------------------------------------

MODEL_ID_LOGGED_MAX = 200


@dataclass
class AuditRecord:
    """What one audited call's line says; use cases fill in what they learn
    (`note`) while the request interceptor runs the call."""

    identity: Identity
    method: str
    trace_id: str = "-"
    model_id: str | None = None
    version_number: int | None = None

    def line(self, outcome: grpc.StatusCode) -> str:
        model = "-" if self.model_id is None else json.dumps(self.model_id[:MODEL_ID_LOGGED_MAX])
        version = "-" if self.version_number is None else str(self.version_number)
        return (
            f"event=call identity={json.dumps(self.identity.name)} method={self.method} model={model} "
            f"version={version} outcome={outcome.name} trace_id={self.trace_id}"
        )


# The audit record of the call running in this task (None: not audited).
_current: contextvars.ContextVar[AuditRecord | None] = contextvars.ContextVar("audit_record", default=None)


def begin(
    identity: Identity, method: str, context: grpc.aio.ServicerContext | None = None
) -> contextvars.Token[AuditRecord | None]:
    """Starts the audit record of the call running in this task; returns
    the token `end` takes."""
    return _current.set(AuditRecord(identity, method, _trace_id(context)))


def end(token: contextvars.Token[AuditRecord | None], outcome: grpc.StatusCode) -> None:
    record = _current.get()
    try:
        _current.reset(token)
    except ValueError:  # ended in another context than it began: nothing to restore
        pass
    if record is not None:
        audit_log.info("%s", record.line(outcome))


def note(*, model_id: str | None = None, version_number: int | None = None) -> None:
    """Tells the current call's audit record (if the call is audited) the
    model and version it is about."""
    record: AuditRecord | None = _current.get()
    if record is None:
        return
    if model_id is not None:
        record.model_id = model_id
    if version_number is not None:
        record.version_number = version_number
