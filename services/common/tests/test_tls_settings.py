"""Which TLS files the public port uses, from the environment."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError
from services.common.tls import (
    CERT_FILE_VARIABLE,
    CLIENT_CA_FILE_VARIABLE,
    KEY_FILE_VARIABLE,
    PublicTlsFiles,
    public_tls_enabled,
)


@pytest.fixture
def pem_files(tmp_path):
    files = {}
    for name in ("cert", "key", "ca"):
        path = tmp_path / f"{name}.pem"
        path.write_text("-----BEGIN X-----\n")
        files[name] = path
    return files


def test_off_when_nothing_is_set():
    assert PublicTlsFiles.from_env({}) is None
    assert not public_tls_enabled({})


def test_tls_and_mtls(pem_files):
    env = {CERT_FILE_VARIABLE: str(pem_files["cert"]), KEY_FILE_VARIABLE: str(pem_files["key"])}
    tls = PublicTlsFiles.from_env(env)
    assert tls == PublicTlsFiles(pem_files["cert"].resolve(), pem_files["key"].resolve(), None)
    assert not tls.mutual and public_tls_enabled(env)
    mtls = PublicTlsFiles.from_env({**env, CLIENT_CA_FILE_VARIABLE: str(pem_files["ca"])})
    assert mtls.mutual and mtls.client_ca_file == pem_files["ca"].resolve()


@pytest.mark.parametrize(
    "env, named",
    [
        ({KEY_FILE_VARIABLE: "k"}, KEY_FILE_VARIABLE),
        ({CLIENT_CA_FILE_VARIABLE: "c"}, CLIENT_CA_FILE_VARIABLE),
        ({CERT_FILE_VARIABLE: "c"}, KEY_FILE_VARIABLE),
    ],
)
def test_a_partial_set_names_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        PublicTlsFiles.from_env(env)


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_a_missing_or_empty_file_names_its_variable(pem_files, which, tmp_path):
    variable = {"cert": CERT_FILE_VARIABLE, "key": KEY_FILE_VARIABLE, "ca": CLIENT_CA_FILE_VARIABLE}[which]
    env = {
        CERT_FILE_VARIABLE: str(pem_files["cert"]),
        KEY_FILE_VARIABLE: str(pem_files["key"]),
        CLIENT_CA_FILE_VARIABLE: str(pem_files["ca"]),
    }
    with pytest.raises(ConfigError, match=f"^{variable}=.*cannot be read"):
        PublicTlsFiles.from_env({**env, variable: str(tmp_path / "absent.pem")})
    pem_files[which].write_text("")
    with pytest.raises(ConfigError, match=f"^{variable}=.*empty"):
        PublicTlsFiles.from_env(env)
