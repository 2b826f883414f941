"""`model-registry` as a user runs it (a subprocess), against a whole registry."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest


def blob_files(stack) -> set:
    """The archive's blob files: not the blobstore's own records (temp
    files, publication records), whose names start with "." as no key does."""
    blobs = stack.archive_dir / "blobs"
    return {
        p for p in blobs.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(blobs).parts)
    }


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err


def test_models_push_versions_pull_round_trip(cli, model_id, big_file, tmp_path):
    created = cli("models", "create", f"{model_id}-x", "--meta", "type=ppo", "--meta", "lr=0.1", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout) == {"model_id": f"{model_id}-x", "user_data": {"type": "ppo", "lr": "0.1"}}
    listed = cli("models", "ls", "--json")
    assert {"model_id": f"{model_id}-x", "user_data": {"type": "ppo", "lr": "0.1"}} in json.loads(listed.stdout)
    assert f"{model_id}-x  lr=0.1,type=ppo" in cli("models", "ls").stdout.decode()

    pushed = cli("push", model_id, str(big_file), "--archive", "--meta", "step=100", "--json")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stderr == b""  # no progress bar: stderr is not a terminal
    info = json.loads(pushed.stdout)
    assert (info["version_number"], info["archived"], info["data_size"]) == (1, True, 32 * 1024 * 1024)
    assert info["user_data"] == {"step": "100"}
    cli("push", model_id, "-", input=b"from stdin")

    versions = json.loads(cli("versions", "ls", model_id, "--json").stdout)
    assert [v["version_number"] for v in versions] == [1, 2]
    assert versions[1]["data_size"] == len(b"from stdin")
    table = cli("versions", "ls", model_id).stdout.decode().splitlines()
    assert table[0].split()[:4] == ["1", table[0].split()[1], "archived", "32.0"]
    assert json.loads(cli("versions", "show", model_id, "-2", "--json").stdout) == versions[0]
    assert "version:   2" in cli("versions", "show", model_id, "2").stdout.decode()

    out = tmp_path / "pulled.bin"
    pulled = cli("pull", model_id, "1", "-o", str(out), "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert out.read_bytes() == big_file.read_bytes()
    assert json.loads(pulled.stdout)["path"] == str(out)
    assert cli("pull", model_id, "-o", "-").stdout == b"from stdin"

    assert cli("models", "rm", f"{model_id}-x").returncode == 0
    assert_one_line_error(cli("models", "rm", f"{model_id}-x"), 3)


def test_watch_prints_each_new_version_as_json(stack, cli, model_id):
    cli("push", model_id, "-", input=b"one")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_REGISTRY_")}
    watch = subprocess.Popen(
        [sys.executable, "-m", "model_registry_client", "--addr", stack.address, "watch", model_id, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in watch.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [line["version_number"] for line in lines] == [1]
        cli("push", model_id, "-", input=b"two")
        cli("push", model_id, "-", "--archive", input=b"three")
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(line["version_number"], line["archived"]) for line in lines] == [(1, False), (2, False), (3, True)]
        assert all(line["model_id"] == model_id for line in lines)
    finally:
        watch.terminate()
        watch.wait(timeout=10)


def test_unknown_model_exits_3_with_one_line(cli, tmp_path):
    for args in (
        ["versions", "ls", "no-such-model"],
        ["versions", "show", "no-such-model", "-1"],
        ["pull", "no-such-model", "-o", str(tmp_path / "x")],
        ["watch", "no-such-model"],
    ):
        result = cli(*args)
        assert_one_line_error(result, 3, "error: NOT_FOUND: model 'no-such-model' not found")
        assert result.stdout == b""
    assert os.listdir(tmp_path) == []


def test_unknown_version_exits_3(cli, model_id):
    assert_one_line_error(cli("versions", "show", model_id, "5"), 3, "NOT_FOUND")


def test_invalid_argument_exits_4(cli):
    assert_one_line_error(cli("models", "create", ""), 4, "error: INVALID_ARGUMENT: ")


def test_usage_errors_exit_2(cli):
    for args in (["pull", "m"], ["frobnicate"], ["versions", "show", "m", "latest"]):
        assert cli(*args).returncode == 2


def test_corrupt_archived_data_exits_5(stack, cli, model_id, tmp_path):
    before = blob_files(stack)
    assert cli("push", model_id, "-", "--archive", input=b"precious weights" * 1000).returncode == 0
    (blob,) = blob_files(stack) - before
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = cli("pull", model_id, "-o", str(tmp_path / "out.bin"))
    assert_one_line_error(result, 5, "error: DATA_LOSS: ")
    assert os.listdir(tmp_path) == []


def test_unreachable_registry_exits_1(cli):
    assert_one_line_error(cli("--addr", "127.0.0.1:1", "models", "ls"), 1, "error: UNAVAILABLE: ")


@pytest.mark.parametrize("command", ["push", "pull"])
def test_progress_bar_only_on_a_terminal(stack, model_id, big_file, tmp_path, command):
    if command == "pull":
        subprocess.run(
            [sys.executable, "-m", "model_registry_client", "--addr", stack.address, "push", model_id, str(big_file)],
            check=True,
            capture_output=True,
        )
        args = ["pull", model_id, "-o", str(tmp_path / "out.bin")]
    else:
        args = ["push", model_id, str(big_file)]
    main_fd, terminal_fd = pty.openpty()
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    process = subprocess.Popen(
        [sys.executable, "-m", "model_registry_client", "--addr", stack.address, *args],
        stdout=subprocess.PIPE,
        stderr=terminal_fd,
    )
    os.close(terminal_fd)
    seen = b""
    while True:
        ready, _, _ = select.select([main_fd], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the terminal closed: the process exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert process.wait(timeout=30) == 0
    last = seen.decode().replace("\r\n", "\n").split("\r")[-1]
    assert f"{command} {model_id} [" in last
    assert "100%  32.0 MiB/32.0 MiB" in last and "/s ETA " in last
    assert len(last.rstrip("\n")) < 100
