"""TLS and mTLS to the registry's public port: channel credentials from PEM
files, and what a refused handshake means in words a person can act on.

The files come from the arguments (`ca_cert=`, `cert=`, `key=`; the CLI's
``--ca-cert``, ``--cert``, ``--key``), else from $MODEL_REGISTRY_CA_CERT,
$MODEL_REGISTRY_CERT and $MODEL_REGISTRY_KEY. None of them set: plaintext.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import grpc

# Also in _common (which imports errors, which imports this module).
PathLike = str | os.PathLike[str]

CA_CERT_ENV = "MODEL_REGISTRY_CA_CERT"
CERT_ENV = "MODEL_REGISTRY_CERT"
KEY_ENV = "MODEL_REGISTRY_KEY"

def _read(path: PathLike | None) -> bytes | None:
    if path is None or str(path) == "":
        return None
    return Path(path).expanduser().read_bytes()


def tls_credentials(
    ca_cert: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> grpc.ChannelCredentials | None:
    """Channel credentials for TLS (with `ca_cert`, the CA bundle the
    server's certificate must chain to; without it, the system's roots) and
    mTLS (`cert` and `key`: this client's certificate chain and private key).
    Each argument defaults to its environment variable; None when none is
    set (plaintext). Raises ValueError for a certificate without its key (or
    the reverse) and OSError for a file that cannot be read."""
    env = os.environ if env is None else env
    ca_cert = ca_cert if ca_cert is not None else env.get(CA_CERT_ENV) or None
    cert = cert if cert is not None else env.get(CERT_ENV) or None
    key = key if key is not None else env.get(KEY_ENV) or None
    if (cert is None) != (key is None):
        given, missing = ("--cert", "--key") if cert is not None else ("--key", "--cert")
        raise ValueError(
            f"{given} was given without {missing}: a client certificate needs both "
            f"(${CERT_ENV} and ${KEY_ENV})"
        )
    if ca_cert is None and cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_cert), private_key=_read(key), certificate_chain=_read(cert)
    )


# What gRPC's UNAVAILABLE details say when the handshake fails (observed
# with grpcio against Envoy 1.40), and what to do about it.
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("WRONG_VERSION_NUMBER",),
        "the registry speaks plaintext here, not TLS: drop --ca-cert/--cert/--key "
        f"(${CA_CERT_ENV}, ${CERT_ENV}, ${KEY_ENV})",
    ),
    (
        ("CERTIFICATE_VERIFY_FAILED", "Peer name", "not in peer certificate"),
        "the registry's certificate is not trusted: pass the CA that signed it with --ca-cert FILE "
        f"(${CA_CERT_ENV}), and use an address its certificate names",
    ),
    (
        ("TSI_DATA_CORRUPTED", "CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE"),
        "the registry wants a client certificate (mTLS) signed by a CA it trusts and did not accept this "
        f"client's: pass --cert FILE --key FILE (${CERT_ENV}, ${KEY_ENV})",
    ),
    (
        ("Socket closed",),
        "the connection was closed during set-up: if the registry requires TLS, pass --ca-cert FILE "
        f"(${CA_CERT_ENV}; for mTLS also --cert/--key)",
    ),
)


def transport_hint(details: str) -> str | None:
    """A sentence saying what to do about an UNAVAILABLE caused by TLS (or
    its absence), or None when `details` shows no such cause."""
    for markers, hint in _HINTS:
        if any(marker in details for marker in markers):
            return hint
    return None
