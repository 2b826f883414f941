"""Drives the official Cogment SDK (cogment==2.10.1, `ModelRegistryV2`)
against a registry that requires credentials, with HTTP Basic sent the
SDK's way (`GrpcMetadata.add_http_basic_auth`, scheme `basic`): run in the
SDK's own venv by tests/integration/test_access_control.py.

    sdk_auth.py --endpoint grpc://HOST:PORT --writer USER --reader USER
    (passwords in $SDK_WRITER_PASSWORD and $SDK_READER_PASSWORD)

Prints one JSON line per step ({"step", "ok", "detail"}) and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid

import cogment
import sdk_compat
from cogment.grpc_metadata import GrpcMetadata
from sdk_compat import payload, step


async def registry_as(endpoint: str, user: str | None, password: str | None):  # type: ignore[no-untyped-def]
    metadata = GrpcMetadata()
    if user is not None:
        metadata.add_http_basic_auth(user, password)
    context = cogment.Context(user_id="sdk-auth", cog_settings=None, metadata=metadata)
    return await context.get_model_registry_v2(cogment.Endpoint(endpoint))


async def main(args: argparse.Namespace) -> None:
    writer = await registry_as(args.endpoint, args.writer, os.environ["SDK_WRITER_PASSWORD"])
    reader = await registry_as(args.endpoint, args.reader, os.environ["SDK_READER_PASSWORD"])
    nobody = await registry_as(args.endpoint, None, None)
    name = f"sdk-auth-{uuid.uuid4().hex[:8]}"
    data = payload(64 * 1024, name)

    async def writer_stores():
        info = await writer.store_model(name, data)
        assert info.size == len(data)
        return f"iteration {info.iteration} stored as {args.writer}"

    await step("store_model with add_http_basic_auth (write role)", writer_stores())

    async def reader_retrieves():
        back = await reader.retrieve_model(name, -1)
        assert back == data, f"retrieve_model gave {None if back is None else len(back)} bytes"
        return f"{len(back)} bytes back as {args.reader}"

    await step("retrieve_model with add_http_basic_auth (read role)", reader_retrieves())

    async def refused(registry, what: str, expected: str):  # type: ignore[no-untyped-def]
        try:
            await registry.store_model(name, data)
        except Exception as exc:  # noqa: BLE001 - the SDK raises the gRPC error
            assert expected in str(exc), f"{type(exc).__name__}: {exc}"
            return f"{what}: refused with {expected}"
        raise AssertionError(f"{what}: store_model was accepted")

    await step("store_model as reader is refused", refused(reader, "reader", "PERMISSION_DENIED"))
    await step("store_model without credential is refused", refused(nobody, "no credential", "UNAUTHENTICATED"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--writer", required=True)
    parser.add_argument("--reader", required=True)
    asyncio.run(main(parser.parse_args()))
    sys.exit(1 if sdk_compat.failures else 0)
