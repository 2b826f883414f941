"""Drives the official Cogment SDK (cogment==2.10.1) against a registry
whose public port speaks TLS (or mTLS), with the endpoint form README shows
("Running it on a shared network"): `grpc://` plus `use_ssl=True` and the
PEM files given to `Endpoint.set_from_files`. Run in the SDK's own venv by
tests/integration/test_tls.py.

    sdk_tls.py --endpoint grpc://localhost:PORT --ca-cert CA [--cert C --key K]

Prints one JSON line ({"ok", "detail"}) and exits 1 on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

import cogment


async def main(args: argparse.Namespace) -> str:
    context = cogment.Context(user_id="sdk-tls", cog_settings=None)
    endpoint = cogment.Endpoint(args.endpoint, use_ssl=True)
    endpoint.set_from_files(
        root_certificates_file=args.ca_cert, private_key_file=args.key, certificate_chain_file=args.cert
    )
    registry = await context.get_model_registry_v2(endpoint)
    name = f"sdk-tls-{uuid.uuid4().hex[:8]}"
    data = os.urandom(3 * 1024 * 1024 + 11)
    info = await registry.store_model(name, data)
    back = await registry.retrieve_model(name, info.iteration)
    assert back == data, f"retrieve_model gave {None if back is None else len(back)} bytes"
    return f"store_model + retrieve_model of {len(data)} bytes over TLS, iteration {info.iteration}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    try:
        detail = asyncio.run(asyncio.wait_for(main(parser.parse_args()), 120))
    except Exception as exc:  # noqa: BLE001 - every failure is the result
        print(json.dumps({"ok": False, "detail": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)
    print(json.dumps({"ok": True, "detail": detail}), flush=True)
