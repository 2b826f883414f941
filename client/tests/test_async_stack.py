"""The asyncio SDK against a whole registry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from contextlib import aclosing

import pytest

from model_registry_client import AsyncRegistryClient, NotFoundError


async def test_32_mib_round_trip_from_an_async_iterable(stack, model_id, tmp_path):
    pieces = [os.urandom(1024 * 1024) for _ in range(32)]
    expected = b"".join(pieces)

    async def produce():
        for piece in pieces:
            await asyncio.sleep(0)
            yield piece

    async with AsyncRegistryClient(stack.address) as client:
        info = await client.push(model_id, produce(), archived=True)
        assert (info.version_number, info.data_size) == (1, len(expected))
        assert info.data_hash == base64.b64encode(hashlib.sha256(expected).digest()).decode()
        assert await client.pull(model_id, -1) == expected
        dest = tmp_path / "pulled.bin"
        progress: list[int] = []
        assert await client.pull(model_id, 1, dest=dest, progress=lambda d, t: progress.append(d)) == info
        assert dest.read_bytes() == expected
        assert progress[0] == 0 and progress[-1] == len(expected)


async def test_32_mib_file_round_trip(stack, model_id, big_file, tmp_path):
    async with AsyncRegistryClient(stack.address) as client:
        info = await client.push(model_id, big_file)
        assert info.data_size == big_file.stat().st_size
        dest = tmp_path / "pulled.bin"
        await client.pull(model_id, dest=dest)
        assert dest.read_bytes() == big_file.read_bytes()


async def test_models_versions_and_negative_numbers(stack, model_id):
    async with AsyncRegistryClient(stack.address) as client:
        assert (await client.get_model(model_id)).user_data == {"owner": "client-tests"}
        assert model_id in [m.model_id async for m in client.list_models(page_size=1)]
        for i in range(1, 4):
            await client.push(model_id, f"v{i}".encode(), user_data={"i": str(i)})
        assert [v.version_number async for v in client.list_versions(model_id, page_size=2)] == [1, 2, 3]
        assert (await client.get_version(model_id, -2)).user_data == {"i": "2"}
        assert await client.pull(model_id, -3) == b"v1"
        await client.update_model(model_id, {"owner": "async"})
        assert (await client.get_model(model_id)).user_data == {"owner": "async"}
        await client.delete_model(model_id)
        with pytest.raises(NotFoundError):
            await client.get_version(model_id, -1)


async def test_follow_sees_new_versions(stack, model_id):
    async with AsyncRegistryClient(stack.address) as client:
        await client.push(model_id, b"1")
        async with aclosing(client.follow(model_id)) as follow:
            assert (await asyncio.wait_for(anext(follow), 10)).version_number == 1
            await client.push(model_id, b"2")
            assert (await asyncio.wait_for(anext(follow), 10)).version_number == 2


async def test_follow_of_an_unknown_model_is_not_found(stack):
    async with AsyncRegistryClient(stack.address) as client:
        with pytest.raises(NotFoundError):
            async for _ in client.follow("no-such-model"):
                pass
