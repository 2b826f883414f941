"""The tiers under test (memory, files, S3), and what tests do to them behind
their back.

`S3Server` is a real moto server, in a subprocess, started once per test
session (S3 tests skip if moto is not installed). Each test gets its own
bucket; the tier finds the server through AWS_ENDPOINT_URL and dummy
credentials in the environment, as a deployment would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pytest

from services.blobstore.store import BlobTier, FileTier, MemoryTier
from services.blobstore.tests.helpers import blob_files, temp_files
from services.launcher.ports import free_port

# Nothing of the developer's AWS setup may leak into the tests.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL_S3")



class S3Server:
    """A moto S3 server subprocess on 127.0.0.1."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_listening(timeout=30)
        import boto3

        # The tests' own client, configured explicitly (not by the environment).
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the moto server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the moto server did not start listening")

    def set_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Points boto3 at this server, through the standard variables only."""
        for name in AWS_UNSET:
            monkeypatch.delenv(name, raising=False)
        for name, value in AWS_ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", self.endpoint)

    def new_bucket_name(self) -> str:
        return f"test-{uuid.uuid4().hex[:16]}"

    def create_bucket(self, name: str) -> None:
        self.client.create_bucket(Bucket=name)

    def remove_bucket(self, name: str) -> None:
        """Empties and deletes a bucket (moto keeps everything in memory)."""
        client = self.client
        try:
            for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", ()):
                client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for item in page.get("Contents", ()):
                    client.delete_object(Bucket=name, Key=item["Key"])
            client.delete_bucket(Bucket=name)
        except client.exceptions.NoSuchBucket:
            pass

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class TierUnderTest(ABC):
    """An opened tier and a view of its storage, for assertions."""

    tier: BlobTier

    @abstractmethod
    def stored(self) -> list[str]:
        """Keys of the blobs visible in storage."""

    @abstractmethod
    def pending(self) -> int:
        """What uploads in progress hold in storage: temp files or multipart
        uploads (archives), reserved bytes (memory); 0 once nothing is left."""


class MemoryUnderTest(TierUnderTest):
    def __init__(self, tier: MemoryTier) -> None:
        self.tier = tier

    def stored(self) -> list[str]:
        return sorted(self.tier._blobs)

    def pending(self) -> int:
        return self.tier._reserved_bytes


class Archive(TierUnderTest):
    """An archive tier under test: its stored bytes can rot."""

    @abstractmethod
    def replace(self, key: str, data: bytes) -> None:
        """Replaces a stored blob's bytes, as rot or an operator would."""


class FileArchive(Archive):
    def __init__(self, tier: FileTier, archive_dir: Path) -> None:
        self.tier = tier
        self.archive_dir = archive_dir

    def stored(self) -> list[str]:
        return sorted(name.split("/")[-1] for name in blob_files(self.archive_dir))

    def pending(self) -> int:
        return len(temp_files(self.archive_dir))

    def replace(self, key: str, data: bytes) -> None:
        Path(self.tier.path_of(key)).write_bytes(data)


class S3Archive(Archive):
    def __init__(self, tier: Any, server: S3Server) -> None:
        self.tier = tier
        self.server = server
        self.client = server.client
        self.bucket = tier.bucket

    def objects(self) -> list[str]:
        """Every blob object name in the bucket (not the tier's own records:
        names with a part starting with ".")."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        names = (item["Key"] for page in pages for item in page.get("Contents", ()))
        return sorted(name for name in names if not any(part.startswith(".") for part in name.split("/")))

    def stored(self) -> list[str]:
        return sorted(name.split("/")[-1] for name in self.objects())

    def uploads(self) -> list[dict[str, Any]]:
        return self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])

    def pending(self) -> int:
        return len(self.uploads())

    def replace(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.tier.object_key(key), Body=data)
