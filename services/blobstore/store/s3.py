"""The S3 tier: archived blobs as objects of an S3-compatible bucket,
verified against their SHA-256 on every read.

Layout: `<prefix>/<key[:2]>/<key>` in the bucket (`<key[:2]>/<key>` without
a prefix); listing and sweeping ignore any other object.

- Writes: a blob of at most one part is buffered and sent by one PutObject
  at commit; a larger one goes up as a multipart upload, in parts of at
  least `part_size` bytes (8 MiB) accumulated from the incoming chunks, with
  at most two parts in flight: an upload holds at most three parts in
  memory. The object appears at PutObject / CompleteMultipartUpload only
  (atomic in S3), and never replaces another: the key is checked
  (HeadObject) when the upload starts, and the final request is conditional
  (`If-None-Match: *`) unless the store refuses conditional writes. An
  aborted upload is AbortMultipartUpload'ed: nothing stays.
- Reads: one streaming GetObject, re-chunked and verified by
  `VerifyingReader`; it keeps streaming the object it started on even if
  the blob is deleted meanwhile.
- Abandoned multipart uploads (a blobstore that died mid-upload) are
  aborted once neither they nor any of their parts is younger than the
  grace period: at `open` and by the sweeper. Replicas share the bucket, so
  activity, not ownership, tells an abandoned upload from a live one.

Endpoint, credentials, region, retries and checksums are boto3's business,
set by the standard AWS_* variables and files (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION...). The
botocore client is thread-safe: one per tier, called from the tier's
threads, with one pooled connection per thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)
from opentelemetry import trace

from services.blobstore.store.base import BlobReader, BlobWriter, Chunk, StoredBlob, not_found
from services.blobstore.store.blocking import ThreadedTier, VerifyingReader
from services.common.config import MIB
from services.common.errors import Aborted, AlreadyExists, DataLoss, ResourceExhausted, Unavailable

log = logging.getLogger("registry.blobstore")

T = TypeVar("T")

DEFAULT_PART_SIZE = 8 * MIB
# S3's limits: parts of at least 5 MiB (but the last), 10,000 parts, objects of 5 TiB.
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024**4
PARTS_IN_FLIGHT = 2
DEFAULT_IO_THREADS = 64
# User metadata naming the upload that wrote an object: tells our own
# object (a request retried after it succeeded, a commit cancelled after it
# happened) from another upload's.
UPLOAD_METADATA = "registry-upload"

# A blob's object name after the prefix: `<key[:2]>/<key>`.
_OBJECT_NAME = re.compile(r"([A-Za-z0-9_-]{1,2})/([A-Za-z0-9_-]{1,128})")
# A blob's publication record after the prefix: an empty object written
# once the blob's object exists, whose LastModified is the time the sweeper
# ages the blob from (the blob's own LastModified is, for a multipart
# upload, the time the upload started).
PUBLISHED_PREFIX = ".published/"
# The id of the metadata database the sweeper last swept against.
SWEPT_DATABASE_OBJECT = ".swept-database"
# Failures worth retrying later: the store or the network, not the request.
_TRANSIENT = (ConnectionError, HTTPClientError, IncompleteReadError, NoCredentialsError)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_missing(exc: ClientError) -> bool:
    # HEAD responses have no body: their code is the HTTP status.
    return _code(exc) in ("NoSuchKey", "404", "NotFound")


def _storage_error(exc: BotoCoreError | ClientError, doing: str) -> Exception | None:
    """The domain error for a failed S3 call; None for an unexpected answer
    (a bug or a misconfiguration: passed on as it is)."""
    if isinstance(exc, ClientError):
        code, status = _code(exc), _http_status(exc)
        if code == "NoSuchUpload":
            return Aborted(f"{doing} failed: the archive no longer has the upload (aborted as abandoned?)")
        if status >= 500 or code in ("SlowDown", "RequestTimeout"):
            return Unavailable(f"{doing} failed: the archive answered {code or status}")
        return None
    if isinstance(exc, _TRANSIENT):
        return Unavailable(f"{doing} failed: {exc}")
    return None


def _raise_storage_error(exc: BotoCoreError | ClientError, doing: str) -> NoReturn:
    error = _storage_error(exc, doing)
    if error is None:
        raise exc
    raise error from exc


def _explain_bucket_error(exc: BotoCoreError | ClientError) -> str:
    if isinstance(exc, ClientError):
        status = _http_status(exc)
        if status == 404:
            return "HTTP 404: no such bucket, or AWS_ENDPOINT_URL is not an S3 endpoint"
        if status == 403:
            return "HTTP 403: access denied, check the credentials and the bucket's policy"
        if status == 301:
            return "HTTP 301: the bucket is in another region, set AWS_DEFAULT_REGION"
    return f"{type(exc).__name__}: {exc}"


def _request_body(chunks: list[Chunk]) -> bytes:
    """One request's body from received chunks: botocore takes bytes, not
    views, so a lone view is copied like a join would."""
    if len(chunks) == 1 and isinstance(chunks[0], bytes):
        return chunks[0]
    return b"".join(chunks)


class S3Tier(ThreadedTier):
    """Blobs as objects under `prefix` in `bucket` (see the module's doc)."""

    name = "archive"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        abandoned_upload_grace_seconds: float = 600.0,
        io_threads: int = DEFAULT_IO_THREADS,
        bucket_retry_seconds: tuple[float, float] = (0.5, 30.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts are at least {MIN_PART_SIZE} bytes, not {part_size}")
        super().__init__(io_threads=io_threads, thread_name_prefix="s3-io")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.part_size = part_size
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        self._grace = abandoned_upload_grace_seconds
        self._bucket_retry_seconds = bucket_retry_seconds
        self._clock = clock
        self._client: Any = None
        # The checksum botocore adds to uploads ("CRC32"), if it adds one:
        # a multipart upload must then announce it and list it per part.
        self._checksum_algorithm: str | None = None
        # Cleared if the store refuses `If-None-Match: *`.
        self._conditional_writes = True

    # -- calls --------------------------------------------------------------

    @staticmethod
    async def _storage_call(doing: str, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (BotoCoreError, ClientError) as exc:
            _raise_storage_error(exc, doing)

    async def _call(self, doing: str, fn: Callable[..., T], *args: Any) -> T:
        return await self._storage_call(doing, self._run(fn, *args))

    # -- layout ---------------------------------------------------------------

    def object_key(self, key: str) -> str:
        return f"{self._key_prefix}{key[:2]}/{key}"

    def record_key(self, key: str) -> str:
        """The object holding the publication record of `key`."""
        return f"{self._key_prefix}{PUBLISHED_PREFIX}{key[:2]}/{key}"

    def _blob_key(self, object_key: str) -> str | None:
        """The blob key stored at `object_key`, None if it is not a blob's."""
        if not object_key.startswith(self._key_prefix):
            return None
        match = _OBJECT_NAME.fullmatch(object_key[len(self._key_prefix) :])
        if match is None or match[2][:2] != match[1]:
            return None
        return match[2]

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        """Returns once the bucket is reachable (retrying with backoff, and
        logging why, until it is): the blobstore is NOT_SERVING until then."""
        if self._client is None:
            # Loads botocore's service models: off the event loop. A bad
            # setting (AWS_ENDPOINT_URL...) raises here, and is not retried.
            self._client, probe = await self._run(self._make_clients)
        else:
            probe = self._client
        delay, max_delay = self._bucket_retry_seconds
        failures = 0
        try:
            while True:
                try:
                    await self._run(lambda: probe.head_bucket(Bucket=self.bucket))
                    break
                except (BotoCoreError, ClientError) as exc:
                    failures += 1
                    log.warning(
                        "archive bucket %s not reachable (%s): retrying in %.1fs",
                        self.location,
                        _explain_bucket_error(exc),
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(2 * delay, max_delay)
        finally:
            if probe is not self._client:
                probe.close()
        if failures:
            log.info("archive bucket %s reachable after %d failed attempts", self.location, failures)
        try:
            removed = await self.remove_abandoned_uploads()
        except Exception as exc:  # noqa: BLE001 - not needed to serve
            log.warning("could not look for abandoned uploads in %s (the sweeper will): %s", self.location, exc)
        else:
            if removed:
                log.info("aborted %d multipart uploads abandoned in %s", removed, self.location)

    def _make_clients(self) -> tuple[Any, Any]:
        """The tier's client, and one for probing the bucket: single attempts,
        short timeouts, so that `open` logs every failure and a shutdown
        meanwhile is not held up by botocore's retries."""
        session = boto3.session.Session()
        config = Config(
            max_pool_connections=self.io_threads,
            connect_timeout=10,
            user_agent_extra="cogment-model-registry",
        )
        client = session.client("s3", config=config)
        if client.meta.config.request_checksum_calculation == "when_supported":
            self._checksum_algorithm = "CRC32"  # botocore's default, as s3transfer does
        probe_config = config.merge(Config(connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 1}))
        return client, session.client("s3", config=probe_config)

    async def close(self) -> None:
        await super().close()
        if self._client is not None:
            self._client.close()

    # -- operations ---------------------------------------------------------

    def part_size_for(self, size: int) -> int | None:
        """The part size of a blob of `size` bytes; None for a single PutObject."""
        if size <= self.part_size:
            return None
        return max(self.part_size, math.ceil(size / MAX_PARTS))

    async def _open_writer(self, key: str, size: int) -> BlobWriter:
        if size > MAX_OBJECT_SIZE:
            raise ResourceExhausted(
                f"blob {key} of {size} bytes is larger than the archive's largest object ({MAX_OBJECT_SIZE} bytes)"
            )
        object_key = self.object_key(key)
        await self._call(f"starting the upload of blob {key}", self._refuse_existing, key, object_key)
        return S3Writer(self, key, size, object_key)

    async def _open_reader(self, key: str, *, expected_sha256: bytes | None, chunk_size: int) -> BlobReader:
        body, size = await self._storage_call(
            f"reading blob {key}", self._open_source(self._get, key, self.object_key(key))
        )
        return S3Reader(self, key, body, size, expected_sha256, chunk_size)

    async def _delete(self, key: str) -> bool:
        return await self._call(f"deleting blob {key}", self._delete_object, self.object_key(key))

    async def list_blobs(self) -> list[StoredBlob]:
        return await self._call(f"listing {self.location}", self._list)

    async def remove_abandoned_uploads(self) -> int:
        # This process's own uploads are never aborted, however slow.
        in_progress = self.uploads_in_progress()
        return await self._call(f"sweeping the uploads of {self.location}", self._remove_abandoned, in_progress)

    async def record_published(self, keys: list[str]) -> None:
        await self._call(f"recording blobs as published in {self.location}", self._record_published_sync, keys)

    async def swept_database_id(self) -> str | None:
        return await self._call(f"reading {SWEPT_DATABASE_OBJECT} in {self.location}", self._read_swept_database_id)

    async def record_swept_database_id(self, database_id: str) -> None:
        await self._call(
            f"writing {SWEPT_DATABASE_OBJECT} in {self.location}", self._write_swept_database_id, database_id
        )

    # -- blocking calls (on the tier's threads) -----------------------------

    def _head(self, object_key: str) -> dict[str, Any] | None:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise

    def _written_by(self, object_key: str, token: str) -> bool:
        head = self._head(object_key)
        return head is not None and head.get("Metadata", {}).get(UPLOAD_METADATA) == token

    def _refuse_existing(self, key: str, object_key: str) -> None:
        if self._head(object_key) is not None:
            raise AlreadyExists(f"blob {key} already exists")

    def _create_upload(self, object_key: str, token: str) -> str:
        extra = {"ChecksumAlgorithm": self._checksum_algorithm} if self._checksum_algorithm else {}
        reply = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=object_key, Metadata={UPLOAD_METADATA: token}, **extra
        )
        return reply["UploadId"]

    def _upload_part(self, object_key: str, upload_id: str, number: int, chunks: list[Chunk]) -> dict[str, Any]:
        body = _request_body(chunks)
        algorithm = self._checksum_algorithm
        extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
        reply = self._client.upload_part(
            Bucket=self.bucket, Key=object_key, UploadId=upload_id, PartNumber=number, Body=body, **extra
        )
        part = {"PartNumber": number, "ETag": reply["ETag"]}
        if algorithm and f"Checksum{algorithm}" in reply:
            part[f"Checksum{algorithm}"] = reply[f"Checksum{algorithm}"]
        return part

    def _put_object(self, key: str, object_key: str, token: str, chunks: list[Chunk]) -> None:
        body = _request_body(chunks)
        self._publish(
            key,
            object_key,
            token,
            lambda condition: self._client.put_object(
                Bucket=self.bucket, Key=object_key, Body=body, Metadata={UPLOAD_METADATA: token}, **condition
            ),
        )
        self._record_publication(key)

    def _complete_upload(self, key: str, object_key: str, token: str, upload_id: str, parts: list[dict]) -> None:
        self._publish(
            key,
            object_key,
            token,
            lambda condition: self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
            ),
        )
        self._record_publication(key)

    def _publish(self, key: str, object_key: str, token: str, request: Callable[[dict[str, str]], object]) -> None:
        """Makes the object visible by `request`, never over another object."""
        if self._conditional_writes:
            try:
                request({"IfNoneMatch": "*"})
                return
            except ClientError as exc:
                code = _code(exc)
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchUpload"):
                    if self._written_by(object_key, token):
                        return  # botocore retried our request after it had succeeded
                    if code == "NoSuchUpload":
                        raise
                    raise AlreadyExists(f"blob {key} already exists") from None
                if code != "NotImplemented" and _http_status(exc) != 501:
                    raise
                self._conditional_writes = False
                log.warning(
                    "%s refuses conditional writes (If-None-Match): checking that a key is free just before "
                    "storing it instead (two uploads of one key could then both succeed)",
                    self.location,
                )
        self._refuse_existing(key, object_key)
        request({})

    def _record_publication(self, key: str) -> None:
        try:
            self._write_record(key)
        except (BotoCoreError, ClientError) as exc:
            # The blob is stored and acknowledged either way: without a
            # record it ages from the next sweep (which writes one).
            log.warning("could not record the publication of blob %s (the sweeper will): %s", key, exc)

    def _abort_upload(self, object_key: str, upload_id: str) -> bool:
        """Aborts a multipart upload; False if it was gone already."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                return False
            raise
        return True

    def _get(self, key: str, object_key: str) -> tuple[Any, int]:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if _is_missing(exc):
                raise not_found(key) from None
            raise
        return reply["Body"], reply["ContentLength"]

    def _delete_object(self, object_key: str) -> bool:
        # DeleteObject succeeds on a missing key: ask first, to tell.
        if self._head(object_key) is None:
            return False
        self._client.delete_object(Bucket=self.bucket, Key=object_key)
        key = self._blob_key(object_key)
        if key is not None:
            # After the blob: a blob never loses its record while it exists.
            self._client.delete_object(Bucket=self.bucket, Key=self.record_key(key))
        return True

    def _write_record(self, key: str) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self.record_key(key), Body=b"")

    def _record_published_sync(self, keys: list[str]) -> None:
        for key in keys:
            if self._head(self.object_key(key)) is not None:
                self._write_record(key)

    def _read_swept_database_id(self) -> str | None:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self._key_prefix + SWEPT_DATABASE_OBJECT)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        with reply["Body"] as body:
            return body.read().decode("utf-8").strip() or None

    def _write_swept_database_id(self, database_id: str) -> None:
        # One PutObject: atomic, as every S3 write.
        self._client.put_object(
            Bucket=self.bucket, Key=self._key_prefix + SWEPT_DATABASE_OBJECT, Body=(database_id + "\n").encode()
        )

    def _list(self) -> list[StoredBlob]:
        # Records and blobs share the prefix: one listing has both.
        sizes: dict[str, int] = {}
        recorded: dict[str, float] = {}
        record_prefix = self._key_prefix + PUBLISHED_PREFIX
        objects = self._client.get_paginator("list_objects_v2")
        for page in objects.paginate(Bucket=self.bucket, Prefix=self._key_prefix):
            for item in page.get("Contents", ()):
                object_key = item["Key"]
                if object_key.startswith(record_prefix):
                    name = object_key[len(record_prefix) :]
                    match = _OBJECT_NAME.fullmatch(name)
                    if match is not None:
                        recorded[match[2]] = item["LastModified"].timestamp()
                    continue
                key = self._blob_key(object_key)
                if key is not None:
                    sizes[key] = item["Size"]
        return [StoredBlob(key, size, recorded.get(key)) for key, size in sizes.items()]

    def _remove_abandoned(self, in_progress: frozenset[str] = frozenset()) -> int:
        cutoff = self._clock() - self._grace
        removed = 0
        uploads = self._client.get_paginator("list_multipart_uploads")
        for page in uploads.paginate(Bucket=self.bucket, Prefix=self._key_prefix):
            for upload in page.get("Uploads", ()):
                object_key, upload_id = upload["Key"], upload["UploadId"]
                key = self._blob_key(object_key)
                if key is None or key in in_progress or upload["Initiated"].timestamp() > cutoff:
                    continue
                if self._last_part_time(object_key, upload_id) > cutoff:
                    continue  # still receiving parts
                removed += self._abort_upload(object_key, upload_id)
        return removed

    def _last_part_time(self, object_key: str, upload_id: str) -> float:
        latest = 0.0
        parts = self._client.get_paginator("list_parts")
        try:
            for page in parts.paginate(Bucket=self.bucket, Key=object_key, UploadId=upload_id):
                for part in page.get("Parts", ()):
                    latest = max(latest, part["LastModified"].timestamp())
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                return math.inf  # completed or aborted meanwhile: nothing to do
            raise
        return latest


class S3Writer(BlobWriter):
    """An upload into the S3 tier: one PutObject at commit, or a multipart
    upload fed part by part (see the module's doc)."""

    def __init__(self, tier: S3Tier, key: str, size: int, object_key: str) -> None:
        super().__init__(key, size)
        self._tier = tier
        self._object_key = object_key
        self._token = uuid.uuid4().hex
        self._part_size = tier.part_size_for(size)
        # Received chunks not sent yet (a part in the making).
        self._buffer: list[Chunk] = []
        self._buffered = 0
        # The multipart upload's creation, then its parts in flight (oldest
        # first) and those stored (in order).
        self._creating: concurrent.futures.Future[str] | None = None
        self._upload_id: str | None = None
        self._uploading: deque[concurrent.futures.Future[dict[str, Any]]] = deque()
        self._parts: list[dict[str, Any]] = []
        # The PutObject / CompleteMultipartUpload, once sent.
        self._publishing: concurrent.futures.Future[None] | None = None

    def _doing(self) -> str:
        return f"storing blob {self.key}"

    async def _write(self, chunk: Chunk) -> None:
        if not chunk:
            return
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._part_size is not None and self._buffered >= self._part_size:
            await self._send_part()

    async def _send_part(self) -> None:
        tier = self._tier
        if self._upload_id is None:
            if self._creating is None:
                self._creating = tier._submit(tier._create_upload, self._object_key, self._token)
            self._upload_id = await tier._storage_call(self._doing(), asyncio.wrap_future(self._creating))
        while len(self._uploading) >= PARTS_IN_FLIGHT:
            await self._collect_part()
        chunks, self._buffer, self._buffered = self._buffer, [], 0
        number = len(self._parts) + len(self._uploading) + 1
        self._uploading.append(tier._submit(tier._upload_part, self._object_key, self._upload_id, number, chunks))

    async def _collect_part(self) -> None:
        # Stays in `_uploading` until done: an abort waits for it.
        part = await self._tier._storage_call(self._doing(), asyncio.wrap_future(self._uploading[0]))
        self._uploading.popleft()
        self._parts.append(part)

    async def _commit(self) -> None:
        tier = self._tier
        if self._part_size is None:
            chunks, self._buffer = self._buffer, []
            started = time.perf_counter()
            self._publishing = tier._submit(tier._put_object, self.key, self._object_key, self._token, chunks)
        else:
            if self._buffer:
                await self._send_part()
            while self._uploading:
                await self._collect_part()
            started = time.perf_counter()
            self._publishing = tier._submit(
                tier._complete_upload, self.key, self._object_key, self._token, self._upload_id, self._parts
            )
        await tier._storage_call(self._doing(), asyncio.wrap_future(self._publishing))
        trace.get_current_span().set_attributes(
            {"complete_ms": (time.perf_counter() - started) * 1000, "parts": max(1, len(self._parts))}
        )

    async def _abort(self) -> None:
        self._buffer = []
        # Never abort an upload under a part being sent.
        await self._tier._clean_up_after([self._creating, *self._uploading, self._publishing], self._discard)

    def _discard(self) -> None:
        tier = self._tier
        try:
            if self._publishing is not None:
                # The commit failed, or was cancelled, perhaps after the
                # object appeared: the caller was told it failed, so it goes.
                if tier._written_by(self._object_key, self._token):
                    tier._client.delete_object(Bucket=tier.bucket, Key=self._object_key)
                    tier._client.delete_object(Bucket=tier.bucket, Key=tier.record_key(self.key))
            creating = self._creating
            if creating is not None and not creating.cancelled() and creating.exception() is None:
                tier._abort_upload(self._object_key, creating.result())
        except (BotoCoreError, ClientError) as exc:
            # Not raised: the upload's own error matters more. The sweeper
            # aborts what is left once the grace period has passed.
            log.warning("could not clean up the failed upload of blob %s in %s: %s", self.key, tier.location, exc)


class S3Reader(VerifyingReader):
    """Streams one GetObject response."""

    source_noun = "object"

    def __init__(
        self, tier: S3Tier, key: str, body: Any, size: int, expected_sha256: bytes | None, chunk_size: int
    ) -> None:
        super().__init__(tier, key, body, size, expected_sha256, chunk_size)
        self._received = 0

    def _read_source(self, size: int) -> bytes:
        try:
            data = self._source.read(size)
            if 0 < len(data) < size:
                # A short read (rare: urllib3 reads until `size` or the end):
                # gather the rest and join once, not by repeated concatenation.
                pieces, received = [data], len(data)
                while received < size:
                    more = self._source.read(size - received)
                    if not more:
                        break
                    pieces.append(more)
                    received += len(more)
                data = b"".join(pieces)
            self._received += len(data)
            if self._received == self.size:
                # Reading past the end lets botocore check the length and
                # the checksum the store recorded, if any.
                self._source.read(1)
        except FlexibleChecksumError as exc:
            raise DataLoss(f"stored data of blob {self._key} is corrupt: {exc}") from exc
        except (BotoCoreError, ClientError) as exc:
            _raise_storage_error(exc, f"reading blob {self._key}")
        return data

