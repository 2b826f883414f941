"""The command line without a server: parsing, exit codes, error lines."""

from __future__ import annotations

import grpc
import pytest

from model_registry_client import cli
from model_registry_client.errors import (
    DataIntegrityError,
    InvalidArgumentError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def test_every_command_parses():
    assert parse("models", "ls").action == "ls"
    args = parse("models", "create", "m", "--meta", "type=ppo", "--meta", "a=b=c")
    assert (args.model_id, cli.parse_meta(args.meta)) == ("m", {"type": "ppo", "a": "b=c"})
    assert parse("models", "rm", "m").model_id == "m"
    args = parse("push", "m", "f.bin", "--archive", "--meta", "k=v")
    assert (args.model_id, args.file, args.archive, args.meta) == ("m", "f.bin", True, ["k=v"])
    assert parse("push", "m", "f.bin").archive is False
    args = parse("pull", "m", "-o", "out.bin")
    assert (args.version, args.output) == (-1, "out.bin")
    assert parse("pull", "m", "-2", "-o", "out.bin").version == -2
    assert parse("pull", "m", "7", "--output", "out.bin").version == 7
    assert parse("versions", "ls", "m").model_id == "m"
    args = parse("versions", "show", "m", "-1")
    assert (args.model_id, args.version) == ("m", -1)
    assert parse("watch", "m").model_id == "m"


def test_global_options_go_before_or_after_the_command():
    args = parse("--addr", "host:1", "--json", "models", "ls")
    assert (args.addr, args.json) == ("host:1", True)
    args = parse("versions", "ls", "m", "--json", "--addr", "host:2")
    assert (args.addr, args.json) == ("host:2", True)
    args = parse("--json", "watch", "m")
    assert args.json is True
    assert not hasattr(parse("watch", "m"), "json")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["models"],
        ["models", "frobnicate"],
        ["pull", "m"],  # -o is required
        ["pull", "m", "latest", "-o", "f"],
        ["versions", "show", "m"],
        ["push", "m"],
        ["models", "create", "m", "--meta", "novalue"],
        ["models", "create", "m", "--meta", "=v"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_parse_meta():
    assert cli.parse_meta(None) == {}
    assert cli.parse_meta(["a=1", "b=", "a=2"]) == {"a": "2", "b": ""}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cli.parse_meta(["x"])


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFoundError("model 'x' not found"), 3),
        (InvalidArgumentError("bad"), 4),
        (DataIntegrityError("corrupt"), 5),
        (DataIntegrityError("lost", grpc.StatusCode.DATA_LOSS), 5),
        (UnavailableError("down"), 1),
        (RegistryError("boom", grpc.StatusCode.INTERNAL), 1),
        (FileNotFoundError(2, "No such file or directory", "f.bin"), 1),
    ],
)
def test_exit_codes(error, code):
    assert cli.exit_code(error) == code


def test_error_lines_are_one_line():
    assert cli.error_line(NotFoundError("model 'x' not found")) == "error: NOT_FOUND: model 'x' not found"
    assert cli.error_line(RegistryError("two\nlines", grpc.StatusCode.INTERNAL)) == "error: INTERNAL: two lines"
    assert cli.error_line(FileNotFoundError(2, "No such file or directory", "f.bin")) == "error: f.bin: No such file or directory"


def test_unreachable_registry_is_one_line_and_exit_1(capsys):
    # Nothing listens on port 1: UNAVAILABLE at once.
    assert cli.main(["--addr", "127.0.0.1:1", "models", "ls"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ")
    assert err.count("\n") == 1


def test_missing_file_to_push_is_one_line_and_exit_1(tmp_path, capsys):
    assert cli.main(["--addr", "127.0.0.1:1", "push", "m", str(tmp_path / "nope.bin")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.bin'}: No such file or directory\n"
