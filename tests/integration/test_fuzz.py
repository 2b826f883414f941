"""Model-based fuzzing of the public API through Envoy (hypothesis, stateful).

Random sequences of every public RPC — good and bad ids, user_data, sizes,
hashes, version numbers (0, ±n, int32 extremes), counts, handles, chunkings,
cancellations — run against the stack, and each reply is checked against
`Reference`, a small model of the semantics (numbering, -n resolution, the
transient LRU, pagination walks, bytes). Never INTERNAL or UNKNOWN, never
wrong bytes, never a reply the reference disagrees with.

`make test` runs a short pass (FUZZ_EXAMPLES, default 25 examples); `make
fuzz` runs at least 10,000 and prints how many ran.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.common.limits import RequestLimits

from conftest import CACHE_MAX_ITEMS, version_chunks

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
STEPS = int(os.environ.get("FUZZ_STEPS", "12"))
LIMITS = RequestLimits()
INT32 = (-(2**31), 2**31 - 1)
TIMEOUT = 20

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

COUNTS = {"examples": 0, "steps": 0}


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@dataclass
class Version:
    info: api.ModelVersionInfo
    data: bytes


@dataclass
class Model:
    user_data: dict[str, str]
    last_number: int = 0
    versions: dict[int, Version] = field(default_factory=dict)

    def existing(self) -> list[int]:
        return sorted(self.versions)


class Reference:
    """What the registry must answer, for the models this run created.

    The transient cache is global, but every transient version of other
    tests is older than any of this run's (nothing else runs meanwhile):
    they are evicted first, so this run's transient versions are evicted
    exactly when more than CACHE_MAX_ITEMS of them exist, least recently
    used first.
    """

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.lru: list[tuple[str, int]] = []  # transient versions, least recently used first

    def resolve(self, model_id: str, number: int) -> int | None:
        model = self.models[model_id]
        existing = model.existing()
        if number > 0:
            return number if number in model.versions else None
        if number < 0 and -number <= len(existing):
            return existing[number]
        return None

    def touch(self, model_id: str, number: int) -> None:
        if (model_id, number) in self.lru:
            self.lru.remove((model_id, number))
            self.lru.append((model_id, number))

    def commit(self, model_id: str, version: Version) -> None:
        self.models[model_id].versions[version.info.version_number] = version
        if not version.info.archived:
            self.lru.append((model_id, version.info.version_number))
            while len(self.lru) > CACHE_MAX_ITEMS:
                evicted_model, evicted = self.lru.pop(0)
                del self.models[evicted_model].versions[evicted]

    def delete(self, model_id: str) -> None:
        del self.models[model_id]
        self.lru = [entry for entry in self.lru if entry[0] != model_id]


def id_valid(model_id: str) -> bool:
    return 0 < len(model_id.encode("utf-8", "surrogatepass")) <= LIMITS.model_id_max_bytes and "\0" not in model_id


def outcome(call):
    """(status code, reply) of a call; the reply is None unless OK."""
    try:
        return OK, call()
    except grpc.RpcError as error:
        assert error.code() not in NEVER, f"{error.code()}: {error.details()}"
        return error.code(), None


user_data = st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3)
numbers = st.one_of(
    st.integers(-4, 8), st.sampled_from([0, *INT32, INT32[0] + 1, INT32[1] - 1]), st.integers(*INT32)
)
counts = st.one_of(st.integers(0, 4), st.sampled_from([2**32 - 1]))
garbage_handles = st.one_of(
    st.sampled_from(["-1", "x", "1.5", " 1", "9" * 40, "99999999999999999999999", "0x10", "١"]),
    # Decimal text is a handle the server may well have issued: not garbage.
    st.text(max_size=6).filter(lambda text: not (text.isascii() and text.isdigit())),
)


class RegistryMachine(RuleBasedStateMachine):
    """One run: a few models of its own, random calls, each checked."""

    registry = None  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.ref = Reference()
        self.prefix = f"fz{uuid.uuid4().hex[:8]}"
        COUNTS["examples"] += 1
        if COUNTS["examples"] % 1000 == 0:
            print(f"fuzz: {COUNTS['examples']} examples so far", flush=True)

    def name(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def teardown(self) -> None:
        for model_id in list(self.ref.models):
            outcome(lambda: self.registry.DeleteModel(api.DeleteModelRequest(model_id=model_id), timeout=TIMEOUT))

    def step(self) -> None:
        COUNTS["steps"] += 1

    def model_ids(self) -> st.SearchStrategy[str]:
        return st.sampled_from([self.name(i) for i in range(3)])

    # -- models -------------------------------------------------------------

    @initialize(index=st.integers(0, 2), data=user_data)
    def first_model(self, index, data):
        self.create_model(index, data)

    @rule(index=st.integers(0, 2), data=user_data)
    def create_model(self, index, data):
        self.step()
        model_id = self.name(index)
        code, _ = outcome(
            lambda: self.registry.CreateOrUpdateModel(
                api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id, user_data=data)), timeout=TIMEOUT
            )
        )
        assert code == OK
        if model_id in self.ref.models:
            self.ref.models[model_id].user_data = data
        else:
            self.ref.models[model_id] = Model(user_data=data)

    @rule(model_id=st.one_of(st.just(""), st.just("x" * (LIMITS.model_id_max_bytes + 1)), st.text(max_size=4).map(lambda t: t + "\0")))
    def create_model_with_a_bad_id(self, model_id):
        self.step()
        code, _ = outcome(
            lambda: self.registry.CreateOrUpdateModel(
                api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id)), timeout=TIMEOUT
            )
        )
        assert code == INVALID

    @rule(index=st.integers(0, 3))
    def delete_model(self, index):
        self.step()
        model_id = self.name(index)
        code, _ = outcome(lambda: self.registry.DeleteModel(api.DeleteModelRequest(model_id=model_id), timeout=TIMEOUT))
        if model_id in self.ref.models:
            assert code == OK
            self.ref.delete(model_id)
        else:
            assert code == NOT_FOUND

    @rule(indices=st.lists(st.integers(0, 3), max_size=4), count=counts, handle=st.one_of(st.none(), st.integers(0, 5), garbage_handles))
    def retrieve_models_by_id(self, indices, count, handle):
        self.step()
        ids = [self.name(i) for i in indices]
        text = "" if handle is None else str(handle)
        code, reply = outcome(
            lambda: self.registry.RetrieveModels(
                api.RetrieveModelsRequest(model_ids=ids, models_count=count, model_handle=text), timeout=TIMEOUT
            )
        )
        if not ids:
            return  # the whole listing: see walk_models
        offset = 0
        if text:
            if not (text.isascii() and text.isdigit()) or int(text) > len(ids):
                assert code == INVALID
                return
            offset = int(text)
        selected = ids[offset : offset + count] if count else ids[offset:]
        if any(model_id not in self.ref.models for model_id in selected):
            assert code == NOT_FOUND
            return
        assert code == OK
        assert [(m.model_id, dict(m.user_data)) for m in reply.model_infos] == [
            (m, self.ref.models[m].user_data) for m in selected
        ]
        assert reply.next_model_handle == str(offset + len(selected))

    @rule(count=st.integers(0, 3))
    def walk_models(self, count):
        """A walk of every model sees ours once each, in creation order."""
        self.step()
        seen, handle = [], ""
        for _ in range(10_000):
            reply = self.registry.RetrieveModels(api.RetrieveModelsRequest(models_count=count, model_handle=handle), timeout=TIMEOUT)
            if not reply.model_infos:
                break
            assert count == 0 or len(reply.model_infos) <= count
            seen += [(m.model_id, dict(m.user_data)) for m in reply.model_infos if m.model_id.startswith(self.prefix)]
            handle = reply.next_model_handle
        assert sorted(seen) == sorted((m, model.user_data) for m, model in self.ref.models.items())
        assert len({m for m, _ in seen}) == len(seen)

    @rule(handle=garbage_handles)
    def list_models_with_a_garbage_handle(self, handle):
        self.step()
        code, _ = outcome(lambda: self.registry.RetrieveModels(api.RetrieveModelsRequest(model_handle=handle), timeout=TIMEOUT))
        assert code == INVALID if handle else code == OK

    # -- versions -----------------------------------------------------------

    @rule(
        index=st.integers(0, 3),
        archived=st.booleans(),
        data=st.binary(max_size=3000),
        chunk=st.integers(1, 4096),
        hash_kind=st.sampled_from(["none", "right", "wrong", "garbage"]),
        size_delta=st.sampled_from([0, 0, 0, 1, -1]),
        stamp=st.sampled_from([0, 1, 2**63 - 1]),
        meta=user_data,
        cancel=st.booleans(),
    )
    def create_version(self, index, archived, data, chunk, hash_kind, size_delta, stamp, meta, cancel):
        self.step()
        model_id = self.name(index)
        data_hash = {"none": "", "right": sha(data), "wrong": sha(data + b"!"), "garbage": "not base64!"}[hash_kind]
        data_size = max(0, len(data) + size_delta)
        messages = list(
            version_chunks(
                model_id, data, archived=archived, chunk_size=chunk, data_size=data_size, data_hash=data_hash,
                user_data=meta, creation_timestamp=stamp,
            )
        )
        if cancel and len(messages) > 1:
            self.cancelled_upload(messages)
            return
        code, reply = outcome(lambda: self.registry.CreateVersion(iter(messages), timeout=TIMEOUT))
        # The frontend's order: the header (a data_hash that is no digest),
        # then the model, then the bytes (their size, then their hash).
        if hash_kind == "garbage":
            assert code == INVALID, code
            return
        if model_id not in self.ref.models:
            assert code == NOT_FOUND, code
            return
        if hash_kind == "wrong" or data_size != len(data):
            assert code == INVALID, code
            return
        assert code == OK, code
        model = self.ref.models[model_id]
        model.last_number += 1
        info = reply.version_info
        expected = api.ModelVersionInfo(
            model_id=model_id, version_number=model.last_number, archived=archived, data_hash=sha(data),
            data_size=len(data), user_data=meta, creation_timestamp=stamp or info.creation_timestamp,
        )
        assert info == expected
        assert stamp or abs(info.creation_timestamp - time.time_ns()) < 120 * 10**9
        self.ref.commit(model_id, Version(info, data))

    def cancelled_upload(self, messages) -> None:
        """Sends all but the last message, then cancels: nothing is stored,
        no number consumed."""
        sent_enough = threading.Event()
        release = threading.Event()

        def requests():
            yield from messages[:-1]
            sent_enough.set()
            release.wait(TIMEOUT)

        future = self.registry.CreateVersion.future(requests(), timeout=TIMEOUT)
        sent_enough.wait(TIMEOUT)
        time.sleep(0.01)
        future.cancel()
        release.set()
        try:
            future.result()
        except grpc.FutureCancelledError:
            pass
        except grpc.RpcError as error:
            # Refused before the cancel landed (unknown model, bad header...).
            assert error.code() not in NEVER, error.details()

    @rule(index=st.integers(0, 3), asked=st.lists(numbers, max_size=4), count=counts, handle=st.one_of(st.none(), st.integers(0, 12), garbage_handles))
    def retrieve_version_infos(self, index, asked, count, handle):
        self.step()
        model_id = self.name(index)
        text = "" if handle is None else str(handle)
        code, reply = outcome(
            lambda: self.registry.RetrieveVersionInfos(
                api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=asked, versions_count=count, version_handle=text),
                timeout=TIMEOUT,
            )
        )
        if model_id not in self.ref.models:
            assert code == NOT_FOUND
            return
        model = self.ref.models[model_id]
        if asked:
            resolved = [self.ref.resolve(model_id, n) for n in asked]
            if None in resolved:
                assert code == NOT_FOUND
                return
            assert code == OK
            assert [v.version_number for v in reply.version_infos] == resolved
            assert list(reply.version_infos) == [model.versions[n].info for n in resolved]
            return
        start = 1
        if text:
            if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= model.last_number + 1:
                assert code == INVALID, (text, code)
                return
            start = int(text)
        page = [n for n in model.existing() if n >= start]
        page = page[:count] if count else page
        assert code == OK
        assert list(reply.version_infos) == [model.versions[n].info for n in page]
        assert reply.next_version_handle == str(page[-1] + 1 if page else start)

    @rule(index=st.integers(0, 2), count=st.integers(1, 3))
    def walk_versions(self, index, count):
        self.step()
        model_id = self.name(index)
        if model_id not in self.ref.models:
            return
        seen, handle = [], ""
        while True:
            reply = self.registry.RetrieveVersionInfos(
                api.RetrieveVersionInfosRequest(model_id=model_id, versions_count=count, version_handle=handle), timeout=TIMEOUT
            )
            seen += [v.version_number for v in reply.version_infos]
            handle = reply.next_version_handle
            if len(reply.version_infos) < count:
                break
        assert seen == self.ref.models[model_id].existing()

    @rule(index=st.integers(0, 3), number=numbers)
    def retrieve_version_data(self, index, number):
        self.step()
        model_id = self.name(index)

        def read() -> bytes:
            request = api.RetrieveVersionDataRequest(model_id=model_id, version_number=number)
            return b"".join(chunk.data_chunk for chunk in self.registry.RetrieveVersionData(request, timeout=TIMEOUT))

        code, data = outcome(read)
        if model_id not in self.ref.models:
            assert code == NOT_FOUND
            return
        resolved = self.ref.resolve(model_id, number)
        if resolved is None:
            assert code == NOT_FOUND
            return
        assert code == OK
        assert data == self.ref.models[model_id].versions[resolved].data, "wrong bytes"
        self.ref.touch(model_id, resolved)

    @precondition(lambda self: any(model.versions for model in self.ref.models.values()))
    @rule(index=st.integers(0, 2))
    def version_update_sends_the_latest_first(self, index):
        self.step()
        model_id = self.name(index)
        call = self.registry.VersionUpdate(api.VersionUpdateRequest(model_id=model_id), timeout=TIMEOUT)
        try:
            if model_id not in self.ref.models:
                with pytest.raises(grpc.RpcError) as error:
                    next(call)
                assert error.value.code() == NOT_FOUND
                return
            model = self.ref.models[model_id]
            if not model.versions:
                return
            first = next(call).version_info
            assert first == model.versions[model.existing()[-1]].info
        finally:
            call.cancel()

    @invariant()
    def numbers_are_never_reused(self):
        for model in self.ref.models.values():
            assert all(n <= model.last_number for n in model.versions)


def test_the_registry_agrees_with_its_reference_model(registry):
    RegistryMachine.registry = registry
    run = RegistryMachine.TestCase
    run.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=os.environ.get("FUZZ_SEED") is None and EXAMPLES <= 100,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    before = dict(COUNTS)
    run().runTest()
    examples = COUNTS["examples"] - before["examples"]
    print(f"\nfuzz: {examples} examples, {COUNTS['steps'] - before['steps']} calls checked, 0 failures")
    assert examples >= min(EXAMPLES, 1)
