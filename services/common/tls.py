"""TLS of the public port: which files, and whether it is on at all.

TLS terminates in Envoy (docs/design.md, "Where does TLS terminate?"): the
Python services never read a certificate. This module is the one place
that decides, from the environment, whether the public port speaks TLS
(and mTLS); the launcher renders Envoy's configuration from it, the
frontend announces GRPC_SSL to a Cogment Directory from it, and the access
check takes client certificates as identities only under mTLS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import config as c

CERT_FILE_VARIABLE = c.PREFIX + "TLS_CERT_FILE"
KEY_FILE_VARIABLE = c.PREFIX + "TLS_KEY_FILE"
CLIENT_CA_FILE_VARIABLE = c.PREFIX + "TLS_CLIENT_CA_FILE"


def public_tls_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the public port speaks TLS: its certificate file is set."""
    return bool(c.env_str(CERT_FILE_VARIABLE, "", env))


def public_mtls_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the public port requires client certificates (mTLS): its
    client CA file is set. Only then is Envoy's x-forwarded-client-cert an
    identity (services/common/access.py)."""
    return bool(c.env_str(CLIENT_CA_FILE_VARIABLE, "", env))


def _readable_file(variable: str, value: str) -> Path:
    path = Path(value).expanduser().resolve()
    try:
        with open(path, "rb") as handle:
            if not handle.read(1):
                raise c.ConfigError(f"{variable}={value!r} is an empty file (expected PEM)")
    except IsADirectoryError:
        raise c.ConfigError(f"{variable}={value!r} is a directory, not a PEM file") from None
    except OSError as exc:
        raise c.ConfigError(f"{variable}={value!r} cannot be read: {exc.strerror}") from None
    return path


@dataclass(frozen=True)
class PublicTlsFiles:
    """The PEM files of the public port's TLS: Envoy's certificate chain and
    private key, and with `client_ca_file` the CA bundle that client
    certificates must chain to (mTLS: a client without one is refused)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PublicTlsFiles | None:
        """None when TLS is off. Raises ConfigError naming the variable when a
        file is missing or unreadable, or when only part of the set is given."""
        env = os.environ if env is None else env
        cert = c.env_str(CERT_FILE_VARIABLE, "", env)
        key = c.env_str(KEY_FILE_VARIABLE, "", env)
        client_ca = c.env_str(CLIENT_CA_FILE_VARIABLE, "", env)
        if not cert:
            for variable, value in ((KEY_FILE_VARIABLE, key), (CLIENT_CA_FILE_VARIABLE, client_ca)):
                if value:
                    raise c.ConfigError(f"{variable} is set but {CERT_FILE_VARIABLE} is not: TLS needs both")
            return None
        if not key:
            raise c.ConfigError(f"{CERT_FILE_VARIABLE} is set but {KEY_FILE_VARIABLE} is not: TLS needs both")
        return cls(
            cert_file=_readable_file(CERT_FILE_VARIABLE, cert),
            key_file=_readable_file(KEY_FILE_VARIABLE, key),
            client_ca_file=_readable_file(CLIENT_CA_FILE_VARIABLE, client_ca) if client_ca else None,
        )
