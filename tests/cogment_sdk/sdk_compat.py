"""Drives the official Cogment SDK (cogment==2.10.1, `ModelRegistryV2`)
against a registry, the way a Cogment 2.x training job uses it: run in the
SDK's own venv (tests/cogment_sdk/setup_venv.sh) by
tests/integration/test_cogment_deployment.py.

    sdk_compat.py --directory grpc://HOST:PORT [--token T] --expect grpc://HOST:PORT

The registry is found through the Cogment Directory (`cogment://discover`),
as the SDK does by default. Prints one JSON line per step
({"step", "ok", "detail"}) and exits 1 if any failed.

The last step imports this repository's client (`model_registry_client`,
on PYTHONPATH) into the same process as the SDK, which defines the same
`cogmentAPI` messages under another file name.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import traceback
import uuid

import cogment
from cogment.grpc_metadata import GrpcMetadata

KIB, MIB = 1024, 1024 * 1024
failures = 0


def report(step: str, ok: bool, detail: str = "") -> None:
    global failures
    failures += not ok
    print(json.dumps({"step": step, "ok": ok, "detail": detail}), flush=True)


async def step(name: str, coroutine, timeout: float = 120.0) -> None:
    try:
        detail = await asyncio.wait_for(coroutine, timeout)
        report(name, True, detail or "")
    except Exception as exc:  # noqa: BLE001 - every failure is a result
        report(name, False, f"{type(exc).__name__}: {exc} {traceback.format_exc(limit=3)}")


def payload(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


async def main(args: argparse.Namespace) -> None:
    # The SDK's directory_auth_token is broken in 2.10.1 (GrpcMetadata.add
    # returns None): the token goes in the context's metadata instead.
    metadata = GrpcMetadata()
    if args.token:
        metadata.add("authentication-token", args.token)
    context = cogment.Context(
        user_id="sdk-compat", cog_settings=None, directory_endpoint=cogment.Endpoint(args.directory), metadata=metadata
    )
    registry = await context.get_model_registry_v2()
    prefix = f"sdk-{uuid.uuid4().hex[:8]}"

    async def discovered():
        assert registry._endpoint_url == args.expect, f"resolved {registry._endpoint_url}, expected {args.expect}"
        return f"cogment://discover resolved to {registry._endpoint_url}"

    await step("discover the registry through the directory", discovered())

    for label, size in (("1 KiB", KIB), ("8 MiB", 8 * MIB), ("24 MiB", 24 * MIB)):
        for how in ("store_model", "publish_model"):
            name = f"{prefix}-{how}-{label.replace(' ', '')}"

            async def round_trip(name=name, size=size, how=how):
                data = payload(size, name)
                info = await getattr(registry, how)(name, data)
                assert info.size == size and info.stored == (how == "store_model"), info
                back = await registry.retrieve_model(name, info.iteration)
                assert back == data, f"retrieve_model gave {None if back is None else len(back)} bytes"
                latest = await registry.retrieve_model(name, -1)
                assert latest == data, "retrieve_model(-1) differs"
                return f"iteration {info.iteration}, {size} bytes back intact"

            await step(f"{how} + retrieve_model {label}", round_trip())

    async def listing():
        names = {f"{prefix}-list-{i}" for i in range(12)}
        for name in names:
            await registry.update_model_info(name, {"i": "x"})
        listed = {model.name for model in await registry.list_models()}
        assert names <= listed, f"missing {sorted(names - listed)}"
        iterations = []
        for i in range(12):
            iterations.append((await registry.publish_model(f"{prefix}-list-0", payload(16, str(i)))).iteration)
        got = [info.iteration for info in await registry.list_iterations(f"{prefix}-list-0")]
        assert got == iterations, f"list_iterations {got}, published {iterations}"
        return "list_models over pages, list_iterations of 12"

    await step("list_models, list_iterations", listing())

    async def tracking():
        name = f"{prefix}-track"
        first = await registry.publish_model(name, payload(KIB, "v1"))
        latest = await registry.track_latest_model(name)
        model, info = await asyncio.wait_for(latest.get(), 30)
        assert info.iteration == first.iteration and model == payload(KIB, "v1")
        stored = await registry.store_model(name, payload(8 * MIB, "v2"))
        await asyncio.wait_for(latest.wait_for_newer(first.iteration), 30)
        model, info = latest.get_no_wait()
        assert info.iteration == stored.iteration and model == payload(8 * MIB, "v2"), f"iteration {info.iteration}"
        return f"followed iterations {first.iteration} then {stored.iteration} (8 MiB, stored)"

    await step("track_latest_model", tracking())

    async def both_in_one_process():
        name = f"{prefix}-both"
        data = payload(3 * MIB, name)
        await registry.store_model(name, data)
        from model_registry_client import RegistryClient  # beside cogment.api.model_registry_pb2

        with RegistryClient(args.expect.removeprefix("grpc://"), token="") as client:
            assert client.pull(name, -1) == data
        return "model_registry_client and the SDK imported and used in one process"

    await step("this repository's client beside the SDK", both_in_one_process())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--directory", required=True)
    parser.add_argument("--token", default=os.environ.get("SDK_DIRECTORY_TOKEN", ""))
    parser.add_argument("--expect", required=True, help="the registry endpoint discovery must resolve to")
    asyncio.run(main(parser.parse_args()))
    sys.exit(1 if failures else 0)
