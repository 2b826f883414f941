"""A Cogment 2.x deployment, as it runs: a stack started with default
settings through the launcher (`make up`'s path; only its port and
directories are chosen, so that it runs beside the session's stack), a
Cogment Directory (the in-process fake, answering like Cogment's), clients
left at gRPC's defaults, and the official Cogment SDK in its own venv.

The session's stack is no use here: it runs with a 1 MiB reply chunk and
other tuned settings a user would not have.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cogmentAPI import common_pb2
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from conftest import REPLICATED, REPO_ROOT, Stack, version_chunks
from fake_directory import DirectoryThread, FakeDirectory
from services.frontend.directory import outbound_ipv4
from services.launcher.ports import free_port

pytestmark = pytest.mark.skipif(REPLICATED, reason="default settings are the single shape; run once")

MIB = 1024 * 1024
TOKEN = "directory-secret"
PROPERTIES = "team=rl,stage=prod"
SDK_VENV = REPO_ROOT / ".venv-cogment-sdk"
# The directory's own check interval is the registry's default (5 s); a
# re-registration is due within that, plus a Register.
REREGISTERED_WITHIN = 20.0


def default_env(port: int, base: Path, directory: str) -> dict[str, str]:
    """Default settings: no COGMENT_MODEL_REGISTRY_* but the stack's own
    port and directories, and the Cogment 2.x directory variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGMENT_", "OTEL_", "AWS_")) and not k.endswith("_REPLICAS")}
    env.update(
        {
            "COGMENT_MODEL_REGISTRY_PORT": str(port),
            "COGMENT_MODEL_REGISTRY_ARCHIVE_DIR": str(base / "archive"),
            "COGMENT_MODEL_REGISTRY_RUN_DIR": str(base / "run"),
            "COGMENT_DIRECTORY_ENDPOINT": f"grpc://{directory}",
            "COGMENT_DIRECTORY_AUTHENTICATION_TOKEN": TOKEN,
            "COGMENT_MODEL_REGISTRY_DIRECTORY_REGISTRATION_PROPERTIES": PROPERTIES,
        }
    )
    return env


@pytest.fixture(scope="module")
def directory() -> Iterator[DirectoryThread]:
    with DirectoryThread() as served:
        yield served


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, directory: DirectoryThread) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("default-stack")
    port = free_port()
    running = Stack(default_env(port, base, directory.fake.address), port, base / "archive", base / "run")
    running.up()
    try:
        yield running
    finally:
        if running.launcher("status").returncode == 0:
            running.down()


def registered(fake: FakeDirectory) -> list:
    return [entry for entry in fake.listed() if entry.request.endpoint.port]


def default_stub(stack: Stack) -> api_grpc.ModelRegistrySPStub:
    # No options: gRPC's default 4 MiB receive limit, as the Cogment SDK's channel.
    return api_grpc.ModelRegistrySPStub(grpc.insecure_channel(stack.address))


@pytest.mark.parametrize("archived", [True, False], ids=["archived", "transient"])
def test_a_default_client_pulls_24_mib_whatever_chunks_were_uploaded(deployment, archived):
    registry = default_stub(deployment)
    model_id = f"default-client-{archived}"
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id)))
    data = os.urandom(24 * MIB)
    # 5 MiB upload chunks: the memory tier keeps what it received, and still
    # answers in chunks a default client accepts.
    info = registry.CreateVersion(version_chunks(model_id, data, archived=archived, chunk_size=5 * MIB)).version_info
    chunks = [c.data_chunk for c in registry.RetrieveVersionData(api.RetrieveVersionDataRequest(model_id=model_id, version_number=info.version_number))]
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) == 2 * MIB  # the default reply chunk


def test_the_register_request_as_the_directory_received_it(deployment, directory):
    directory.wait_for(lambda fake: registered(fake))
    *replaced, call = directory.fake.calls_of("Register")
    print("Register request as the fake directory received it:\n" + json.dumps(call, indent=2, sort_keys=True))
    print(f"Register calls: {len(replaced) + 1}; health checks: {[c['health_check'] for c in (*replaced, call)]}")
    # A Register before the last is right only if the directory's check of
    # it failed: it then hides the entry, and the registry, finding it no
    # longer listed, registers again. Not because Envoy routed to no
    # frontend yet: the registry registers once its public endpoint serves.
    for each in replaced:
        check = each["health_check"]
        assert not check["healthy"] and "no healthy upstream" not in check["how"], json.dumps(each, indent=2, sort_keys=True)
    for each in (*replaced, call):
        request = each["request"]
        assert request["endpoint"] == {"protocol": "GRPC", "host": outbound_ipv4(), "port": deployment.port}
        assert request["details"]["type"] == "MODEL_REGISTRY_SERVICE"
        assert request["details"]["properties"] == {
            "team": "rl",
            "stage": "prod",
            "__registration_source": "Self-Implicit",
            "__version": "0.1.0",
        }
        assert request.get("permanent", False) is False
        assert each["metadata"]["authentication-token"] == TOKEN
    # The directory's own health check (Status(overall_load) through Envoy) passed.
    (entry,) = registered(directory.fake)
    assert entry.healthy and entry.load is not None and entry.last_check.startswith("Status"), entry.last_check


def test_version_and_status_answer_on_the_public_port(deployment):
    registry = default_stub(deployment)
    versions = {v.name: v.version for v in registry.Version(common_pb2.VersionRequest()).versions}
    assert versions["model_registry"] == "0.1.0" and versions["cogment_api"] == "2.0"
    # Idle: "0" (once the calls of the tests before have ended on the wire).
    deadline = time.monotonic() + 10
    while (load := dict(registry.Status(common_pb2.StatusRequest(names=["overall_load"])).statuses)) != {"overall_load": "0"}:
        assert time.monotonic() < deadline, load
        time.sleep(0.2)


def test_registers_again_when_the_directory_forgets_the_entry(deployment, directory):
    directory.wait_for(lambda fake: registered(fake))
    (before,) = registered(directory.fake)
    directory._run(_forget, directory.fake)
    started = time.monotonic()
    directory.wait_for(lambda fake: registered(fake), timeout=REREGISTERED_WITHIN)
    (after,) = registered(directory.fake)
    assert after.service_id != before.service_id
    assert after.request == before.request
    print(f"registered again {time.monotonic() - started:.1f} s after the directory forgot the entry")


async def _forget(fake: FakeDirectory) -> None:
    fake.forget()


def test_registers_again_when_the_directory_restarts(deployment, directory):
    directory.wait_for(lambda fake: registered(fake))
    directory.stop()
    time.sleep(6)  # a check of the registration finds the directory down meanwhile
    directory.restart()
    started = time.monotonic()
    directory.wait_for(lambda fake: registered(fake), timeout=REREGISTERED_WITHIN)
    print(f"registered again {time.monotonic() - started:.1f} s after the directory restarted")


def test_the_official_cogment_sdk_finds_and_uses_the_registry(deployment, directory):
    setup = subprocess.run(
        ["bash", str(REPO_ROOT / "tests/cogment_sdk/setup_venv.sh"), str(SDK_VENV)],
        capture_output=True, text=True, timeout=600,
    )
    if setup.returncode == 3:
        pytest.skip(f"the official Cogment SDK cannot be installed, PyPI is unreachable: {setup.stderr.strip()}")
    assert setup.returncode == 0, setup.stderr
    directory.wait_for(lambda fake: registered(fake))
    started = time.monotonic()
    run = subprocess.run(
        [
            str(SDK_VENV / "bin/python"),
            str(REPO_ROOT / "tests/cogment_sdk/sdk_compat.py"),
            "--directory", f"grpc://{directory.fake.address}",
            "--token", TOKEN,
            "--expect", f"grpc://{outbound_ipv4()}:{deployment.port}",
        ],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "client/src")},
    )
    steps = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    print(f"official SDK: {len(steps)} steps in {time.monotonic() - started:.1f} s")
    for result in steps:
        print(("PASS " if result["ok"] else "FAIL ") + result["step"] + ": " + result["detail"].splitlines()[0])
    failed = [result for result in steps if not result["ok"]]
    assert run.returncode == 0 and steps and not failed, (failed, run.stderr[-3000:])
    assert len(steps) == 10


def test_deregisters_at_sigterm(deployment, directory):
    directory.wait_for(lambda fake: registered(fake))
    (entry,) = registered(directory.fake)
    started = time.monotonic()
    deployment.down()
    print(f"make down took {time.monotonic() - started:.2f} s, Deregister included")
    (call,) = [c for c in directory.fake.calls_of("Deregister") if c["request"]["service_id"] == str(entry.service_id)]
    assert call["request"]["secret"] == entry.secret
    assert call["metadata"]["authentication-token"] == TOKEN
    assert directory.fake.entries == {}


def test_a_directory_that_is_down_does_not_delay_shutdown(deployment, directory):
    deployment.up()
    directory.wait_for(lambda fake: registered(fake))
    directory.stop()
    deployment.down()
    log = (deployment.run_dir / "frontend-0.log").read_text().splitlines()
    began = [line for line in log if "shutting down" in line][-1]
    ended = [line for line in log if line.endswith(" stopped")][-1]
    seconds = _log_time(ended) - _log_time(began)
    print(f"the frontend stopped {seconds:.2f} s after SIGTERM with the directory down")
    assert seconds < 2.5, f"the frontend took {seconds:.1f} s to stop"
    assert any("could not deregister" in line for line in log)


def _log_time(line: str) -> float:
    stamp = " ".join(line.split()[:2])  # 2026-12-01 11:23:53,509
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000
