"""Issue 12's table, row by row, through Envoy on a stack with default
limits (but for the idle timeouts and the stream limit: stacks of their own
with small ones): each abuse gets a clear, documented answer and the stack
keeps serving everyone else."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import grpc
import pytest
from cogmentAPI import model_registry_pb2 as api
from cogmentAPI import model_registry_pb2_grpc as api_grpc

from services.common import service_names
from services.common.limits import DOWNLOAD_IDLE_TIMEOUT_SECONDS, UPLOAD_IDLE_TIMEOUT_SECONDS, RequestLimits

from conftest import MESSAGE_LIMIT, create_version, read_data, single_shape_only, version_chunks

LIMITS = RequestLimits()  # the defaults: the stack under test runs with them
# Field 1 (a string in every public request) holding bytes that are not
# UTF-8, and a message cut in the middle of a field.
BAD_UTF8 = b"\x0a\x02\xff\xfe"
TRUNCATED = b"\x0a\x09ab"


def small_calls_answer(registry, model_id: str) -> None:
    """The calls everyone else makes still answer, promptly."""
    started = time.monotonic()
    registry.RetrieveModels(api.RetrieveModelsRequest(model_ids=[model_id]), timeout=10)
    info = create_version(registry, model_id, b"still served")
    assert read_data(registry, model_id, info.version_number) == b"still served"
    assert time.monotonic() - started < 10


# -- 1,100 VersionUpdate subscriptions ----------------------------------------


def test_1100_version_update_subscriptions_are_held_and_every_one_gets_the_next_version(stack, registry, model_id):
    subscribers = 1100
    create_version(registry, model_id, b"v1")

    async def follow_all() -> None:
        channels = [grpc.aio.insecure_channel(stack.address) for _ in range(4)]
        stubs = [api_grpc.ModelRegistrySPStub(channel) for channel in channels]
        received: dict[int, int] = {}
        errors: list[grpc.aio.AioRpcError] = []

        async def follow(stub) -> None:
            try:
                async for reply in stub.VersionUpdate(api.VersionUpdateRequest(model_id=model_id)):
                    number = reply.version_info.version_number
                    received[number] = received.get(number, 0) + 1
            except grpc.aio.AioRpcError as error:
                errors.append(error)

        tasks = [asyncio.create_task(follow(stubs[i % 4])) for i in range(subscribers)]
        try:
            deadline = time.monotonic() + 90
            while received.get(1, 0) < subscribers:
                assert not errors, f"{len(errors)} subscriptions refused: {errors[0].code()} {errors[0].details()}"
                assert time.monotonic() < deadline, f"only {received.get(1, 0)} subscriptions held"
                await asyncio.sleep(0.1)
            # While they are held, everyone else is served.
            await asyncio.to_thread(small_calls_answer, registry, model_id)
            deadline = time.monotonic() + 30
            while received.get(2, 0) < subscribers:
                assert time.monotonic() < deadline, f"only {received.get(2, 0)} subscribers received version 2"
                await asyncio.sleep(0.1)
            assert not errors
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()

    asyncio.run(follow_all())


# -- 1,000,000 version_numbers / model_ids --------------------------------------


@pytest.mark.parametrize("field", ["version_numbers", "model_ids"])
def test_a_request_with_1000000_entries_is_invalid_argument_at_once(registry, model_id, field):
    if field == "version_numbers":
        call = registry.RetrieveVersionInfos.future(
            api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=range(1, 1_000_001))
        )
        variable = "COGMENT_MODEL_REGISTRY_MAX_VERSION_NUMBERS"
    else:
        call = registry.RetrieveModels.future(api.RetrieveModelsRequest(model_ids=["m"] * 1_000_000))  # 3 MB
        variable = "COGMENT_MODEL_REGISTRY_MAX_MODEL_IDS"
    started = time.monotonic()
    # Someone else's small call meanwhile is not held up.
    small_calls_answer(registry, model_id)
    with pytest.raises(grpc.RpcError) as error:
        call.result(timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1000000 entries" in error.value.details() and variable in error.value.details()
    assert time.monotonic() - started < 10


def test_many_version_numbers_within_the_limit_are_answered_in_order(registry, model_id):
    for i in range(5):
        create_version(registry, model_id, f"{i}".encode(), archived=True)
    numbers = [-1, 2, -5, 4] * (LIMITS.max_version_numbers // 4)
    infos = registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=numbers))
    assert [info.version_number for info in infos.version_infos] == [5, 2, 1, 4] * (LIMITS.max_version_numbers // 4)


# -- a pagination handle of 5,000 digits -------------------------------------------


def test_a_pagination_handle_of_5000_digits_is_invalid_argument(registry, model_id):
    for request, call in (
        (api.RetrieveModelsRequest(model_handle="9" * 5000), registry.RetrieveModels),
        (api.RetrieveVersionInfosRequest(model_id=model_id, version_handle="9" * 5000), registry.RetrieveVersionInfos),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
        assert "was not issued by this server" in error.value.details()
        assert len(error.value.details()) < 500


# -- malformed protobuf, invalid UTF-8 ------------------------------------------------


def public_methods() -> list[tuple[str, object]]:
    """Every method of every service on the public port, by full path."""
    from cogment import model_registry_pb2 as legacy
    from grpc_health.v1 import health_pb2

    methods = []
    for module, name in (
        (api, service_names.MODEL_REGISTRY),
        (legacy, service_names.LEGACY_MODEL_REGISTRY),
        (health_pb2, service_names.HEALTH),
    ):
        service = module.DESCRIPTOR.services_by_name[name.rsplit(".", 1)[1]]
        methods += [(f"/{name}/{method.name}", method) for method in service.methods]
    return methods


@pytest.mark.parametrize("raw", [BAD_UTF8, TRUNCATED], ids=["invalid-utf8", "truncated"])
@pytest.mark.parametrize("path,method", public_methods(), ids=[path for path, _ in public_methods()])
def test_malformed_protobuf_or_invalid_utf8_is_invalid_argument_on_every_rpc(stack, path, method, raw):
    channel = stack.channel()
    if method.client_streaming and method.server_streaming:
        call = lambda: list(channel.stream_stream(path)(iter([raw]), timeout=10))  # noqa: E731
    elif method.client_streaming:
        call = lambda: channel.stream_unary(path)(iter([raw]), timeout=10)  # noqa: E731
    elif method.server_streaming:
        call = lambda: list(channel.unary_stream(path)(raw, timeout=10))  # noqa: E731
    else:
        call = lambda: channel.unary_unary(path)(raw, timeout=10)  # noqa: E731
    first_field = method.input_type.fields_by_number.get(1)
    if raw is BAD_UTF8 and (first_field is None or first_field.type != first_field.TYPE_STRING):
        # Valid bytes for this request (an unknown field): any answer but UNKNOWN or INTERNAL.
        try:
            call()
        except grpc.RpcError as error:
            assert error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), error.details()
        return
    with pytest.raises(grpc.RpcError) as error:
        call()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.value.code(), error.value.details())


def test_a_malformed_body_after_a_valid_header_is_invalid_argument_and_stores_nothing(stack, registry, model_id):
    header = next(version_chunks(model_id, b"abc")).SerializeToString()
    upload = stack.channel().stream_unary(f"/{service_names.MODEL_REGISTRY}/CreateVersion")
    with pytest.raises(grpc.RpcError) as error:
        upload(iter([header, b"\x12\x05\x0a\x03ab"]), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id)).version_infos


# -- an unknown model id of 20,000 characters --------------------------------------------


def test_an_unknown_model_id_of_20000_characters_is_invalid_argument_with_a_short_message(registry):
    long_id = "x" * 20_000
    calls = [
        lambda: registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=long_id)),
        lambda: registry.RetrieveModels(api.RetrieveModelsRequest(model_ids=[long_id])),
        lambda: registry.DeleteModel(api.DeleteModelRequest(model_id=long_id)),
        lambda: registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=long_id))),
        lambda: read_data(registry, long_id, 1),
        lambda: next(iter(registry.VersionUpdate(api.VersionUpdateRequest(model_id=long_id)))),
        lambda: create_version(registry, long_id, b"x"),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
        assert "COGMENT_MODEL_REGISTRY_MODEL_ID_MAX_BYTES" in error.value.details()
        assert "(20000 characters)" in error.value.details() and len(error.value.details()) < 1000


def test_an_unknown_model_id_at_the_limit_is_not_found_with_its_id_cut_short(registry):
    long_id = "y" * LIMITS.model_id_max_bytes
    with pytest.raises(grpc.RpcError) as error:
        registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=long_id))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.value.details()) < 400


def test_a_model_id_with_a_nul_is_invalid_argument(registry):
    with pytest.raises(grpc.RpcError) as error:
        registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id="a\0b")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in error.value.details()


# -- absurd declared sizes ----------------------------------------------------------------------


def header_then_silence(model_id: str, *, archived: bool, data_size: int, stop: threading.Event):
    yield next(version_chunks(model_id, b"", archived=archived, data_size=data_size))
    stop.wait(60)


@pytest.mark.parametrize(
    "archived,data_size,code,words",
    [
        (True, 2**63, grpc.StatusCode.INVALID_ARGUMENT, "beyond the largest size"),
        (True, 2**62, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        (False, 2**63, grpc.StatusCode.INVALID_ARGUMENT, "beyond the largest size"),
        (False, 2**40, grpc.StatusCode.RESOURCE_EXHAUSTED, "VERSION_CACHE_MAX_BYTES"),
    ],
)
def test_an_absurd_declared_size_is_refused_at_once_not_with_a_deadline(registry, model_id, archived, data_size, code, words):
    stop = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as error:
            registry.CreateVersion(header_then_silence(model_id, archived=archived, data_size=data_size, stop=stop), timeout=20)
    finally:
        stop.set()
    assert error.value.code() == code, error.value.details()
    assert words in error.value.details()
    assert time.monotonic() - started < 10, "refused only once the client gave up"


# -- stalled uploads, stopped readers -------------------------------------------------------------


# The idle timeouts of the stack below: the mechanism under test, short
# enough not to hold the suite for the default's 30 s (each service reads
# them as any other limit: RequestLimits.from_env, unit-tested there).
SHORT_IDLE_TIMEOUT_SECONDS = 4
SHORT_IDLE = RequestLimits(
    upload_idle_timeout_seconds=SHORT_IDLE_TIMEOUT_SECONDS, download_idle_timeout_seconds=SHORT_IDLE_TIMEOUT_SECONDS
)


@pytest.fixture
def short_idle_registry(tmp_path):
    """A registry on a stack of its own whose idle timeouts are short."""
    from conftest import running_stack

    timeouts = {variable: str(SHORT_IDLE_TIMEOUT_SECONDS) for variable in (UPLOAD_IDLE_TIMEOUT_SECONDS, DOWNLOAD_IDLE_TIMEOUT_SECONDS)}
    with running_stack(tmp_path, **timeouts) as running:
        registry = api_grpc.ModelRegistrySPStub(running.channel())
        registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id="idle")))
        yield registry


@single_shape_only
def test_stalled_uploads_and_a_reader_that_stops_are_ended_after_the_idle_timeout(short_idle_registry):
    """Three transient uploads announcing 200 MiB send one chunk and go
    quiet; a reader of a 64 MiB version stops reading. Meanwhile others are
    served (the stalled uploads hold what they sent, not 600 MiB); after the
    idle timeouts all four are ended with DEADLINE_EXCEEDED naming the
    variable, and nothing of the uploads is kept."""
    registry, model_id, limits = short_idle_registry, "idle", SHORT_IDLE
    data = bytes(range(256)) * (256 * 1024)  # 64 MiB
    archived = create_version(registry, model_id, data, archived=True)
    stop = threading.Event()
    outcomes: list[grpc.RpcError | object] = []

    def stalled_upload() -> None:
        def messages():
            chunks = version_chunks(model_id, b"x" * (1024 * 1024), data_size=200 * 1024 * 1024)
            yield next(chunks)
            yield next(chunks)
            stop.wait(120)

        try:
            outcomes.append(registry.CreateVersion(messages(), timeout=120))
        except grpc.RpcError as error:
            outcomes.append(error)

    uploads = [threading.Thread(target=stalled_upload, daemon=True) for _ in range(3)]
    started = time.monotonic()
    for upload in uploads:
        upload.start()
    download = iter(registry.RetrieveVersionData(
        api.RetrieveVersionDataRequest(model_id=model_id, version_number=archived.version_number), timeout=120
    ))
    first = next(download).data_chunk
    try:
        # Everyone else is served meanwhile.
        small_calls_answer(registry, model_id)
        for upload in uploads:
            upload.join(limits.upload_idle_timeout_seconds + 30)
        elapsed = time.monotonic() - started
        assert len(outcomes) == 3
        for outcome in outcomes:
            assert isinstance(outcome, grpc.RpcError), outcome
            assert outcome.code() == grpc.StatusCode.DEADLINE_EXCEEDED, outcome.details()
            assert f"for {SHORT_IDLE_TIMEOUT_SECONDS} s ({UPLOAD_IDLE_TIMEOUT_SECONDS})" in outcome.details()
        assert limits.upload_idle_timeout_seconds <= elapsed < limits.upload_idle_timeout_seconds + 20
        time.sleep(max(0.0, limits.download_idle_timeout_seconds + 2 - (time.monotonic() - started)))
        # The reader comes back: it gets what was in flight, then the end.
        received = bytearray(first)
        with pytest.raises(grpc.RpcError) as error:
            for chunk in download:
                received += chunk.data_chunk
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.value.details()
        assert f"for {SHORT_IDLE_TIMEOUT_SECONDS} s ({DOWNLOAD_IDLE_TIMEOUT_SECONDS})" in error.value.details()
        assert len(received) < len(data) and bytes(received) == data[: len(received)]
    finally:
        stop.set()
    infos = registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id)).version_infos
    assert [info.version_number for info in infos] == [archived.version_number, archived.version_number + 1]
    assert read_data(registry, model_id, archived.version_number) == data


# -- replies over the message limit ----------------------------------------------------------------


def test_24_models_with_1_mib_of_user_data_list_in_pages_with_models_count_0(stack, registry):
    """RetrieveModels(models_count=0) used to answer RESOURCE_EXHAUSTED (a
    19 MB reply). Now it answers a page that fits a default client's 4 MiB,
    with a handle; walking the handles lists every model once."""
    prefix = f"big-{uuid.uuid4().hex[:8]}"
    user_data = {"blob": "u" * (LIMITS.user_data_max_bytes - 10)}
    ids = [f"{prefix}-{i}" for i in range(24)]
    for model_id in ids:
        registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=model_id, user_data=user_data)))
    try:
        # A client with gRPC's default 4 MiB receive limit, as the Cogment SDK has.
        default_client = api_grpc.ModelRegistrySPStub(grpc.insecure_channel(stack.address))
        seen, handle, pages = [], "", 0
        while True:
            page = default_client.RetrieveModels(api.RetrieveModelsRequest(models_count=0, model_handle=handle))
            if not page.model_infos:
                break
            pages += 1
            seen += [info.model_id for info in page.model_infos]
            handle = page.next_model_handle
        assert [m for m in seen if m.startswith(prefix)] == ids
        assert len(seen) == len(set(seen)) and pages >= 8
        # An exact count that cannot fit one reply says how many would.
        with pytest.raises(grpc.RpcError) as error:
            registry.RetrieveModels(api.RetrieveModelsRequest(model_ids=ids, models_count=24))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "COGMENT_MODEL_REGISTRY_REPLY_MAX_BYTES" in error.value.details() and "at most 3" in error.value.details()
        # user_data over its own limit is refused when stored.
        with pytest.raises(grpc.RpcError) as error:
            registry.CreateOrUpdateModel(
                api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id=ids[0], user_data={"blob": "u" * (2 * LIMITS.user_data_max_bytes)}))
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "COGMENT_MODEL_REGISTRY_USER_DATA_MAX_BYTES" in error.value.details()
    finally:
        for model_id in ids:
            registry.DeleteModel(api.DeleteModelRequest(model_id=model_id))


def test_message_limit_is_bigger_than_any_page(stack):
    assert LIMITS.reply_max_bytes < 4 * 1024 * 1024 < MESSAGE_LIMIT


# -- the frontend's stream limit --------------------------------------------------------------------


@pytest.fixture
def small_stack(tmp_path):
    """A stack whose frontends hold at most 50 streams each: the limit under
    test, small enough to reach (its default is 20,000)."""
    from conftest import running_stack

    with running_stack(tmp_path, COGMENT_MODEL_REGISTRY_MAX_STREAMS="50", FRONTEND_REPLICAS="1") as running:
        yield running


def test_streams_beyond_a_frontends_limit_are_resource_exhausted_naming_the_variable(small_stack):
    registry = api_grpc.ModelRegistrySPStub(small_stack.channel())
    registry.CreateOrUpdateModel(api.CreateOrUpdateModelRequest(model_info=api.ModelInfo(model_id="watched")))
    create_version(registry, "watched", b"1")
    calls = [registry.VersionUpdate(api.VersionUpdateRequest(model_id="watched")) for _ in range(50)]
    for call in calls:
        assert next(call).version_info.version_number == 1
    refused = registry.VersionUpdate(api.VersionUpdateRequest(model_id="watched"))
    with pytest.raises(grpc.RpcError) as error:
        next(refused)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "COGMENT_MODEL_REGISTRY_MAX_STREAMS=50" in error.value.details()
    # Unary calls are not streams: still served; and a slot given back is taken again.
    registry.RetrieveModels(api.RetrieveModelsRequest(model_ids=["watched"]))
    calls.pop().cancel()
    deadline = time.monotonic() + 10
    while True:
        again = registry.VersionUpdate(api.VersionUpdateRequest(model_id="watched"))
        try:
            assert next(again).version_info.version_number == 1
            break
        except grpc.RpcError as retry:
            assert retry.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.1)
    for call in [*calls, again]:
        call.cancel()
