"""The registry's credentials file (COGMENT_MODEL_REGISTRY_AUTH_FILE): its
format, how secrets are hashed, and how it is written.

One module for both sides: the `model-registry auth` commands write the
file, the frontend reads it (services/common/access.py). It is a package of
its own, standard library only, so that the client installed alone can
manage a file without the server's code, and the server's images can carry
it without the client SDK and its generated stubs.

The file is JSON::

    {
      "format": "model-registry-credentials/1",
      "entries": [
        {"name": "ci", "kind": "token", "role": "write", "sha256": "<hex of SHA-256(token)>"},
        {"name": "alice", "kind": "user", "role": "read",
         "scrypt": {"n": 16384, "r": 8, "p": 1, "salt": "<base64>", "hash": "<base64>"}},
        {"name": "robot.example.com", "kind": "cert", "role": "admin"}
      ]
    }

Names are unique in a file (whatever their kind): `remove` takes a name.
Tokens are random (secrets.token_urlsafe(32), 256 bits), so a plain SHA-256
is enough to store them; passwords are chosen by people, so they get scrypt
with a salt of their own. A certificate entry holds no secret: the subject
CN of a client certificate that Envoy verified against the client CA.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "model-registry-credentials/1"

# Roles from the least to the most allowed: each allows what the previous ones do.
ROLES = ("read", "write", "admin")
KINDS = ("token", "user", "cert")

# scrypt's parameters for new passwords: 16 MiB of memory and ~50 ms per
# verification on one core of the reference machine (OWASP's minimum is
# n=2^17 with r=8; n=2^14 keeps a cache miss affordable on 2 shared cores,
# and the server caches successful verifications). Stored per entry, so
# raising them later leaves existing entries valid.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SALT_BYTES = 16
# scrypt needs 128 * n * r bytes; allow what a stored entry may ask for, bounded.
SCRYPT_MAXMEM = 64 * 1024 * 1024
TOKEN_BYTES = 32


class CredentialsFileError(ValueError):
    """The file cannot be read as a credentials file; the message says why
    (and never quotes a secret)."""


@dataclass(frozen=True)
class Entry:
    """One identity: its name, kind (token, user, cert), role, and the
    stored form of its secret (None for a cert)."""

    name: str
    kind: str
    role: str
    # token: hex SHA-256; user: {"n","r","p","salt","hash"}; cert: None.
    secret: Any = None

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"name": self.name, "kind": self.kind, "role": self.role}
        if self.kind == "token":
            value["sha256"] = self.secret
        elif self.kind == "user":
            value["scrypt"] = dict(self.secret)
        return value


def token_digest(token: str) -> str:
    """How a token is stored: hex of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A random token (256 bits, URL-safe base64) that does not start with
    "-": one that did (1 in 64) would read as an option in `--token <token>`
    on a command line."""
    while (token := secrets.token_urlsafe(TOKEN_BYTES)).startswith("-"):
        pass
    return token


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> dict[str, Any]:
    """The stored form of a password: scrypt with a random salt, parameters included."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    derived = _scrypt(password.encode("utf-8"), salt, n, r, p)
    return {
        "n": n,
        "r": r,
        "p": p,
        "salt": base64.b64encode(salt).decode("ascii"),
        "hash": base64.b64encode(derived).decode("ascii"),
    }


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=SCRYPT_DKLEN, maxmem=SCRYPT_MAXMEM)


def verify_password(password: bytes, stored: dict[str, Any]) -> bool:
    """Whether `password` matches the stored scrypt form (compared in constant time)."""
    derived = _scrypt(password, base64.b64decode(stored["salt"]), stored["n"], stored["r"], stored["p"])
    return hmac.compare_digest(derived, base64.b64decode(stored["hash"]))


def _check_entry(raw: Any, position: int) -> Entry:
    where = f"entry {position + 1}"
    if not isinstance(raw, dict):
        raise CredentialsFileError(f"{where} is not an object")
    name, kind, role = raw.get("name"), raw.get("kind"), raw.get("role")
    if not isinstance(name, str) or not name:
        raise CredentialsFileError(f"{where} has no name")
    where = f"entry {position + 1} ({name!r})"
    if kind not in KINDS:
        raise CredentialsFileError(f"{where}: kind must be one of {', '.join(KINDS)}")
    if role not in ROLES:
        raise CredentialsFileError(f"{where}: role must be one of {', '.join(ROLES)}")
    if kind == "token":
        digest = raw.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise CredentialsFileError(f"{where}: sha256 must be 64 lowercase hex digits")
        return Entry(name, kind, role, digest)
    if kind == "user":
        stored = raw.get("scrypt")
        if not isinstance(stored, dict):
            raise CredentialsFileError(f"{where}: a user entry needs scrypt parameters")
        for key in ("n", "r", "p"):
            if not isinstance(stored.get(key), int) or stored[key] < 1:
                raise CredentialsFileError(f"{where}: scrypt.{key} must be a positive integer")
        if 128 * stored["n"] * stored["r"] > SCRYPT_MAXMEM // 2:
            raise CredentialsFileError(f"{where}: scrypt parameters need more memory than allowed")
        for key in ("salt", "hash"):
            try:
                if not base64.b64decode(str(stored.get(key, "")), validate=True):
                    raise ValueError
            except ValueError:
                raise CredentialsFileError(f"{where}: scrypt.{key} must be non-empty base64") from None
        return Entry(name, kind, role, {k: stored[k] for k in ("n", "r", "p", "salt", "hash")})
    return Entry(name, kind, role, None)


def parse(text: str | bytes) -> list[Entry]:
    """The entries of a credentials file's content; CredentialsFileError if
    it is not one (messages name the entry, never its secret)."""
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialsFileError(f"not valid JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CredentialsFileError(f'not a credentials file (expected an object with "format": "{FORMAT}")')
    raw_entries = document.get("entries", [])
    if not isinstance(raw_entries, list):
        raise CredentialsFileError('"entries" must be a list')
    entries = [_check_entry(raw, i) for i, raw in enumerate(raw_entries)]
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise CredentialsFileError(f"the name {entry.name!r} appears twice")
        seen.add(entry.name)
    return entries


def load(path: str | os.PathLike[str]) -> list[Entry]:
    """The entries of the file at `path` (OSError if unreadable, CredentialsFileError if invalid)."""
    return parse(Path(path).read_bytes())


def load_or_empty(path: str | os.PathLike[str]) -> list[Entry]:
    """As `load`, an absent file being an empty one (the CLI creates it)."""
    try:
        return load(path)
    except FileNotFoundError:
        return []


def dumps(entries: Iterable[Entry]) -> str:
    return json.dumps({"format": FORMAT, "entries": [e.to_json() for e in entries]}, indent=2) + "\n"


def save(path: str | os.PathLike[str], entries: Iterable[Entry]) -> None:
    """Writes the file atomically with mode 0600: a temporary file in the
    same directory, fsynced, renamed over the old one (a reader sees the old
    file or the new one, never half of one), then the directory fsynced."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    content = dumps(entries).encode("utf-8")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(descriptor, 0o600)  # mkstemp already creates it 0600; say so
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise CredentialsFileError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def added(entries: list[Entry], entry: Entry) -> list[Entry]:
    """`entries` with `entry` appended; CredentialsFileError if its name is taken."""
    check_role(entry.role)
    if not entry.name or entry.name != entry.name.strip():
        raise CredentialsFileError("a name must be non-empty, without leading or trailing spaces")
    if entry.kind == "user" and ":" in entry.name:
        raise CredentialsFileError("a user name cannot contain ':' (HTTP Basic separates it from the password)")
    if any(existing.name == entry.name for existing in entries):
        raise CredentialsFileError(f"the name {entry.name!r} is already in the file (remove it first)")
    return [*entries, entry]


def removed(entries: list[Entry], name: str) -> list[Entry]:
    """`entries` without the one named `name`; CredentialsFileError if none is."""
    remaining = [e for e in entries if e.name != name]
    if len(remaining) == len(entries):
        raise CredentialsFileError(f"no entry is named {name!r}")
    return remaining
