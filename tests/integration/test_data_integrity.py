"""Archived data is verified when read: corrupt, truncated or missing bytes
are DATA_LOSS, never wrong bytes and never a successful stream."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from conftest import create_version, read_data


class Archive:
    """The stored objects of archived versions, wherever the archive is
    (local directory or S3 bucket)."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.url = stack.env.get("COGMENT_MODEL_REGISTRY_ARCHIVE_URL", "")

    def _s3(self):
        import boto3

        env = self.stack.env
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
        return client, bucket, prefix

    def objects(self) -> set[str]:
        """The blobs' objects or files (not the blobstore's own records:
        names with a part starting with ".", such as publication records)."""
        if self.url.startswith("s3://"):
            client, bucket, prefix = self._s3()
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            names = {o["Key"] for page in pages for o in page.get("Contents", [])}
            return {name for name in names if not any(part.startswith(".") for part in name.split("/"))}
        blobs = self.stack.archive_dir / "blobs"
        return {
            str(p)
            for p in blobs.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(blobs).parts)
        }

    def replace(self, name: str, data: bytes) -> None:
        if self.url.startswith("s3://"):
            client, bucket, _ = self._s3()
            client.put_object(Bucket=bucket, Key=name, Body=data)
        else:
            Path(name).write_bytes(data)

    def remove(self, name: str) -> None:
        if self.url.startswith("s3://"):
            client, bucket, _ = self._s3()
            client.delete_object(Bucket=bucket, Key=name)
        else:
            Path(name).unlink()


def expect_data_loss(registry, model_id: str, number: int) -> str:
    with pytest.raises(grpc.RpcError) as error:
        read_data(registry, model_id, number)
    assert error.value.code() == grpc.StatusCode.DATA_LOSS, error.value.details()
    return error.value.details()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing"])
def test_damaged_archive_is_data_loss(stack, registry, model_id, damage):
    archive = Archive(stack)
    before = archive.objects()
    data = os.urandom(3 * 1024 * 1024 + 17)
    info = create_version(registry, model_id, data, archived=True)
    (stored,) = archive.objects() - before
    if damage == "flipped byte":
        corrupt = bytearray(data)
        corrupt[len(data) // 2] ^= 0xFF
        archive.replace(stored, bytes(corrupt))
    elif damage == "truncated":
        archive.replace(stored, data[:-1])
    else:
        archive.remove(stored)
    details = expect_data_loss(registry, model_id, info.version_number)
    assert details
    # The info is untouched: the version exists, its data is what was lost.
    assert create_version(registry, model_id, b"next", archived=True).version_number == info.version_number + 1



