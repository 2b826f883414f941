"""`python -m services.blobstore` as a process: start-up errors and stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.blobstore.tests.tiers import AWS_ENV, AWS_UNSET, S3Server

ROOT = Path(__file__).resolve().parents[3]


def blobstore_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGMENT_MODEL_REGISTRY_", "OTEL_"))}
    for name in AWS_UNSET:
        env.pop(name, None)
    env.update(
        COGMENT_MODEL_REGISTRY_BIND_HOST="127.0.0.1",
        COGMENT_MODEL_REGISTRY_BLOBSTORE_PORT="0",
        COGMENT_MODEL_REGISTRY_ARCHIVE_DIR=str(tmp_path),
    )
    env.update(extra)
    return env


def test_an_unusable_archive_url_stops_the_start(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "services.blobstore"],
        cwd=ROOT,
        env=blobstore_env(tmp_path, COGMENT_MODEL_REGISTRY_ARCHIVE_URL="/srv/archive"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "blobstore: COGMENT_MODEL_REGISTRY_ARCHIVE_URL='/srv/archive' is not usable: it has no scheme "
        "(expected s3://bucket or s3://bucket/prefix; leave it unset to archive in the archive directory)"
    )


def test_a_stop_while_waiting_for_the_bucket_is_clean(tmp_path: Path, s3_server: S3Server):
    log_path = tmp_path / "blobstore.log"
    env = blobstore_env(
        tmp_path,
        COGMENT_MODEL_REGISTRY_ARCHIVE_URL=f"s3://{s3_server.new_bucket_name()}/models",
        AWS_ENDPOINT_URL=s3_server.endpoint,
        **AWS_ENV,
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.blobstore"], cwd=ROOT, env=env, stderr=log, stdout=log
        )
    try:
        deadline = time.monotonic() + 30
        while b"not reachable (HTTP 404" not in log_path.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert b"stopped" in log_path.read_bytes()
