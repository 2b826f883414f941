"""The credentials file and `model-registry auth`, without a server; the
credential metadata the SDK sends."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import grpc
import model_registry_credentials as cf
import pytest

from model_registry_client import cli
from model_registry_client._common import call_metadata
from model_registry_client.errors import PermissionDeniedError, UnauthenticatedError

FAST = {"n": 2**4, "r": 8, "p": 1}


def run_cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_registry_client", *argv], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_add_token_prints_the_token_alone_and_stores_only_its_hash(tmp_path):
    path = tmp_path / "auth.json"
    done = run_cli("auth", "add-token", "--file", str(path), "--name", "ci", "--role", "write")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0]) >= 43
    token = lines[0]
    content = path.read_text()
    assert token not in content
    [entry] = cf.load(path)
    assert (entry.name, entry.kind, entry.role, entry.secret) == ("ci", "token", "write", cf.token_digest(token))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_new_token_never_reads_as_an_option():
    """1 in 64 URL-safe tokens would start with "-", and `--token <it>`
    would then fail (argparse takes it for an option): never made."""
    tokens = [cf.new_token() for _ in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and {len(t) for t in tokens} == {43}


def test_add_user_reads_the_password_from_stdin_and_stores_scrypt(tmp_path):
    path = tmp_path / "auth.json"
    done = run_cli("auth", "add-user", "--file", str(path), "--name", "alice", "--role", "read", "--password-stdin", stdin="s3cret pass\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "s3cret" not in path.read_text()
    [entry] = cf.load(path)
    assert entry.secret["n"] == cf.SCRYPT_N and len(base64.b64decode(entry.secret["salt"])) == cf.SALT_BYTES
    assert cf.verify_password(b"s3cret pass", entry.secret)
    assert not cf.verify_password(b"s3cret pass\n", entry.secret)


def test_ls_and_remove_never_show_secrets(tmp_path, capsys):
    path = tmp_path / "auth.json"
    cf.save(path, [
        cf.Entry("ci", "token", "write", cf.token_digest("tok")),
        cf.Entry("alice", "user", "read", cf.hash_password("pw", **FAST)),
        cf.Entry("robot", "cert", "admin"),
    ])
    assert cli.main(["auth", "ls", "--file", str(path)]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines() == ["ci\ttoken\twrite", "alice\tuser\tread", "robot\tcert\tadmin"]
    assert cf.token_digest("tok") not in listing and "scrypt" not in listing
    assert cli.main(["auth", "remove", "--file", str(path), "--name", "alice"]) == 0
    assert [e.name for e in cf.load(path)] == ["ci", "robot"]
    assert cli.main(["auth", "remove", "--file", str(path), "--name", "alice"]) == cli.EXIT_INVALID
    assert "no entry is named 'alice'" in capsys.readouterr().err


def test_names_are_unique_and_roles_checked(tmp_path, capsys):
    path = tmp_path / "auth.json"
    assert cli.main(["auth", "add-cert", "--file", str(path), "--name", "robot", "--role", "admin"]) == 0
    assert cli.main(["auth", "add-token", "--file", str(path), "--name", "robot", "--role", "read"]) == cli.EXIT_INVALID
    assert "already in the file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["auth", "add-cert", "--file", str(path), "--name", "x", "--role", "root"])
    assert len(cf.load(path)) == 1


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "auth.json"
    cf.save(path, [cf.Entry("robot", "cert", "admin")])
    before = path.read_bytes()

    def broken_fsync(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        cf.save(path, [cf.Entry("robot", "cert", "admin"), cf.Entry("other", "cert", "read")])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["auth.json"]  # no temporary file left behind


def test_save_replaces_by_rename(tmp_path):
    path = tmp_path / "auth.json"
    cf.save(path, [cf.Entry("a", "cert", "read")])
    inode = os.stat(path).st_ino
    cf.save(path, [cf.Entry("b", "cert", "read")])
    assert os.stat(path).st_ino != inode  # a new file renamed over the old: readers never see half of one


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not valid JSON"),
        ("[]", "not a credentials file"),
        ('{"format": "model-registry-credentials/1", "entries": [{"name": "a", "kind": "key", "role": "read"}]}', "kind"),
        ('{"format": "model-registry-credentials/1", "entries": [{"name": "a", "kind": "cert", "role": "root"}]}', "role"),
        ('{"format": "model-registry-credentials/1", "entries": [{"name": "a", "kind": "cert", "role": "read"}, {"name": "a", "kind": "cert", "role": "read"}]}', "twice"),
        ('{"format": "model-registry-credentials/1", "entries": [{"name": "a", "kind": "user", "role": "read", "scrypt": {"n": 1048576, "r": 8, "p": 1, "salt": "AA==", "hash": "AA=="}}]}', "memory"),
    ],
)
def test_invalid_files_are_refused_with_a_reason(content, problem):
    with pytest.raises(cf.CredentialsFileError, match=problem):
        cf.parse(content)


def test_the_format_module_and_the_cli_need_no_server_code():
    code = (
        "import sys, model_registry_client.cli, model_registry_credentials; "
        "print(sorted(m for m in sys.modules if m == 'services' or m.startswith('services.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


# -- what the SDK sends


def test_call_metadata(monkeypatch):
    monkeypatch.delenv("MODEL_REGISTRY_TOKEN", raising=False)
    monkeypatch.delenv("MODEL_REGISTRY_PASSWORD", raising=False)
    assert call_metadata(None) == ()
    assert call_metadata("tok") == (("authorization", "Bearer tok"),)
    expected = "Basic " + base64.b64encode("alice:pa:ss é".encode()).decode()
    assert call_metadata(None, "alice", "pa:ss é") == (("authorization", expected),)
    monkeypatch.setenv("MODEL_REGISTRY_PASSWORD", "pa:ss é")
    assert call_metadata("ignored", "alice") == (("authorization", expected),)
    monkeypatch.delenv("MODEL_REGISTRY_PASSWORD")
    with pytest.raises(ValueError, match="MODEL_REGISTRY_PASSWORD"):
        call_metadata(None, "alice")
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", "from-env")
    assert call_metadata(None) == (("authorization", "Bearer from-env"),)


def test_cli_credential_options_and_messages(monkeypatch):
    args = cli.build_parser().parse_args(["models", "ls", "--token", "t"])
    assert cli.client_credentials(args) == {"token": "t", "user": None, "password": None}
    monkeypatch.setenv("MODEL_REGISTRY_PASSWORD", "pw")
    args = cli.build_parser().parse_args(["--user", "alice", "models", "ls"])
    assert cli.client_credentials(args) == {"token": None, "user": "alice", "password": None}
    unauthenticated = UnauthenticatedError("this registry requires a credential", grpc.StatusCode.UNAUTHENTICATED)
    assert cli.error_line(unauthenticated).endswith("(the registry wants a credential: pass --token or --user)")
    assert cli.exit_code(unauthenticated) == cli.EXIT_NOT_ALLOWED
    denied = PermissionDeniedError("needs the role write", grpc.StatusCode.PERMISSION_DENIED)
    assert cli.error_line(denied).startswith("error: PERMISSION_DENIED: needs the role write")
    assert cli.exit_code(denied) == cli.EXIT_NOT_ALLOWED


def test_user_without_password_outside_a_terminal():
    env = {k: v for k, v in os.environ.items() if k != "MODEL_REGISTRY_PASSWORD"}
    done = subprocess.run(
        [sys.executable, "-m", "model_registry_client", "--addr", "127.0.0.1:1", "--user", "alice", "models", "ls"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == cli.EXIT_ERROR
    assert "MODEL_REGISTRY_PASSWORD" in done.stderr


def test_credentials_file_json_is_documented_shape(tmp_path):
    path = tmp_path / "auth.json"
    cf.save(path, [cf.Entry("ci", "token", "read", cf.token_digest("x"))])
    document = json.loads(path.read_text())
    assert document == {"format": cf.FORMAT, "entries": [{"name": "ci", "kind": "token", "role": "read", "sha256": cf.token_digest("x")}]}
