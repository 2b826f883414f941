"""`model-registry import-cogment-archive DIR` against the stack: an archive
written here in exactly the original registry's layout (SPEC §5) imports
with every number, timestamp, user_data and byte intact; a corrupted
version is reported and skipped, never imported wrong; a second run
imports nothing new and says so."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api

from conftest import create_version, read_data

T1_TEXT, T1_NS = "2026-12-01T09:39:55.621187979Z", 1796117995621187979
T3_TEXT, T3_NS = "2026-12-02T11:00:00.1234567+02:00", 1796202000123456700  # 09:00:00 UTC


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def write_model(archive: Path, model_id: str, user_data: dict[str, str]) -> Path:
    directory = archive / model_id
    directory.mkdir(parents=True)
    lines = [f"model_id: {model_id}", "user_data:" + ("" if user_data else " {}")]
    lines += [f'  {key}: "{value}"' for key, value in user_data.items()]
    (directory / f"{model_id}.yaml").write_text("\n".join(lines) + "\n")
    return directory


def write_version(
    directory: Path, number: int, data: bytes, timestamp: str, user_data: dict[str, str], *, stored: bytes | None = None
) -> None:
    """A version as the original writes it; `stored` replaces the bytes on
    disk (a corrupted file) while the YAML describes `data`."""
    model_id = directory.name
    lines = [
        f"model_id: {model_id}",
        f"version_number: {number}",
        f"creation_timestamp: {timestamp}",
        "archived: true",
        f"data_hash: {sha(data)}",
        f"data_size: {len(data)}",
        "user_data:" + ("" if user_data else " {}"),
        *(f'  {key}: "{value}"' for key, value in user_data.items()),
    ]
    (directory / f"{model_id}-v{number:06d}.yaml").write_text("\n".join(lines) + "\n")
    (directory / f"{model_id}-v{number:06d}.data").write_bytes(data if stored is None else stored)


def run_import(stack, archive: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_REGISTRY_")}
    return subprocess.run(
        [sys.executable, "-m", "model_registry_client", "import-cogment-archive", str(archive), "--addr", stack.address, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def infos(registry, model_id: str) -> list[api.ModelVersionInfo]:
    return list(registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id)).version_infos)


def user_data_of(registry, model_id: str) -> dict[str, str]:
    reply = registry.RetrieveModels(api.RetrieveModelsRequest(model_ids=[model_id]))
    return dict(reply.model_infos[0].user_data)


def test_an_original_archive_imports_intact_and_only_once(stack, registry, tmp_path):
    tag = uuid.uuid4().hex[:8]
    alpha, empty, beta = f"alpha-{tag}", f"empty-{tag}", f"beta-{tag}"
    archive = tmp_path / "archive"
    one, three, four = os.urandom(3 * 1024 * 1024 + 17), b"chunk_1chunk_2", os.urandom(1000)
    directory = write_model(archive, alpha, {"type": "ppo", "step": "10"})
    write_version(directory, 1, one, T1_TEXT, {"iteration": "1"})
    # 2 was transient in the original: never on disk, a gap to keep.
    write_version(directory, 3, three, T3_TEXT, {})
    write_version(directory, 4, four, T1_TEXT, {}, stored=bytes(reversed(four)))  # rotted on disk
    write_model(archive, empty, {"note": "no versions yet"})
    # beta already lives in the registry, with its own user_data and a version 1.
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=beta, user_data={"owner": "ours"})))
    ours = create_version(registry, beta, b"ours", archived=True)
    directory = write_model(archive, beta, {"owner": "theirs"})
    write_version(directory, 1, b"theirs", T1_TEXT, {})
    write_version(directory, 2, b"second", T3_TEXT, {"k": "v"})

    first = run_import(stack, archive)
    assert first.returncode == 1, first.stdout + first.stderr  # something was skipped
    report = first.stdout
    assert f"skipped version 4 of model '{alpha}'" in report and "does not match" in report, report
    assert f"skipped version 1 of model '{beta}'" in report and "other data" in report, report
    assert "models: 2 created, 1 already there" in report, report
    assert "versions: 3 imported" in report, report

    stored = infos(registry, alpha)
    assert [info.version_number for info in stored] == [1, 3]
    assert [info.creation_timestamp for info in stored] == [T1_NS, T3_NS]
    assert [dict(info.user_data) for info in stored] == [{"iteration": "1"}, {}]
    assert [(info.data_hash, info.data_size, info.archived) for info in stored] == [
        (sha(one), len(one), True),
        (sha(three), len(three), True),
    ]
    assert read_data(registry, alpha, 1) == one and read_data(registry, alpha, 3) == three
    assert user_data_of(registry, alpha) == {"type": "ppo", "step": "10"}
    # The next version created gets the highest imported number + 1.
    assert create_version(registry, alpha, b"new").version_number == 4

    assert user_data_of(registry, empty) == {"note": "no versions yet"} and infos(registry, empty) == []
    # An existing model keeps its user_data and its version; the free number is imported.
    assert user_data_of(registry, beta) == {"owner": "ours"}
    assert [(i.version_number, i.data_hash) for i in infos(registry, beta)] == [(1, ours.data_hash), (2, sha(b"second"))]

    # Again: nothing new (the rotted version is still skipped, and said so).
    second = run_import(stack, archive, "--json")
    assert second.returncode == 1
    summary = json.loads(second.stdout)
    assert summary["imported"] == [] and summary["models_created"] == []
    assert len(summary["already_imported"]) == 3 and len(summary["skipped"]) == 2

    # Without the versions that cannot be imported: exit 0, and it says nothing was new.
    for name in (f"{alpha}/{alpha}-v000004", f"{beta}/{beta}-v000001"):
        (archive / f"{name}.yaml").unlink()
        (archive / f"{name}.data").unlink()
    third = run_import(stack, archive)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "nothing new to import" in third.stdout
    assert [info.version_number for info in infos(registry, alpha)] == [1, 3, 4]


def test_an_import_call_cannot_store_wrong_bytes_or_overwrite(stack, registry, model_id):
    """registry.Admin/ImportVersion itself (what the command calls) checks
    the bytes against the header and never replaces a stored version."""
    from registry import admin_pb2_grpc

    admin = admin_pb2_grpc.AdminStub(stack.channel())

    def chunks(number: int, data: bytes, data_hash: str):
        info = api.ModelVersionInfo(
            model_id=model_id, version_number=number, creation_timestamp=T1_NS, archived=True,
            data_hash=data_hash, data_size=len(data),
        )
        yield api.CreateVersionRequestChunk(header=api.CreateVersionRequestChunk.Header(version_info=info))
        yield api.CreateVersionRequestChunk(body=api.CreateVersionRequestChunk.Body(data_chunk=data))

    with pytest.raises(grpc.RpcError) as refused:
        admin.ImportVersion(chunks(7, b"rotten", sha(b"fresh!")))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert infos(registry, model_id) == []

    reply = admin.ImportVersion(chunks(7, b"fresh!", sha(b"fresh!")))
    assert not reply.already_imported and reply.version_info.creation_timestamp == T1_NS
    assert admin.ImportVersion(chunks(7, b"fresh!", sha(b"fresh!"))).already_imported
    with pytest.raises(grpc.RpcError) as taken:
        admin.ImportVersion(chunks(7, b"other!", sha(b"other!")))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert read_data(registry, model_id, 7) == b"fresh!"
    # The public CreateVersion still allocates: highest + 1, whatever the header says.
    assert create_version(registry, model_id, b"x", creation_timestamp=5).version_number == 8
