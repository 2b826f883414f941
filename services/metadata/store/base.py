"""The contract every metadata store fulfils.

Stores are synchronous and not thread-safe: `registry.MetadataRegistry`
calls one store from a single dedicated thread (and, for SQLite, reads from
a second, read-only store on the event loop thread). Every method is atomic (one
transaction); every write is durable when the method returns. Failures a
client can act on are raised as `services.common.errors` (InvalidArgument,
NotFound, AlreadyExists, ResourceExhausted), never as database errors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from services.metadata.records import (
    BlobRef,
    CacheUsage,
    Commit,
    DatabaseIdentity,
    Model,
    ModelPage,
    ResolvedVersion,
    Version,
    VersionBatch,
    VersionDraft,
    VersionPage,
)


class ReadDeferred(Exception):
    """A store serving reads on the event loop thread (see
    `sqlite.SqliteReader`) could not serve one without waiting; the caller
    runs it on the store thread instead, where waiting is harmless."""


class MetadataStore(ABC):
    """Models, versions, number allocation and the transient LRU.

    Version numbers of a model are allocated 1, 2, 3... at commit from a
    counter kept with the model: never reused (not after eviction, not after
    reopening), reset only by deleting the model.
    """

    @abstractmethod
    def upsert_model(self, model: Model) -> None:
        """Creates the model, or replaces its user_data (its versions and
        version counter are kept). Empty model_id: InvalidArgument."""

    @abstractmethod
    def delete_model(self, model_id: str) -> tuple[BlobRef, ...]:
        """Deletes the model and all its versions; returns their blobs, which
        the caller must delete. Unknown model: NotFound."""

    @abstractmethod
    def retrieve_models(self, model_ids: Sequence[str], count: int, handle: str) -> ModelPage:
        """Without `model_ids`: every model in creation order, `count` at a
        time (0: no limit), after the model whose position `handle` names.
        The next handle is the position of the last model returned (or the
        given handle for an empty page, "0" with none), so models created
        during a walk appear at its end and deletions shift nothing.

        With `model_ids`: exactly those models, in request order; `handle`
        is an offset into the list and the next handle the offset after the
        last one returned. An unknown id among those returned: NotFound.

        A handle the server could not have issued: InvalidArgument.
        """

    @abstractmethod
    def retrieve_versions(
        self, model_id: str, numbers: Sequence[int], count: int, handle: str
    ) -> VersionPage:
        """Without `numbers`: versions in number order from number `handle`
        (empty: 1), `count` at a time (0: all); the next handle is the last
        number returned + 1 (or the given handle for an empty page, "1" with
        none). Valid handles: 1 to last allocated number + 1.

        With `numbers`: each resolved as by `resolve_version`, in request
        order (count and handle are ignored); the next handle is the last
        number returned + 1.

        Unknown model or version: NotFound; bad handle: InvalidArgument.
        """

    @abstractmethod
    def resolve_version(self, model_id: str, number: int, *, touch: bool) -> ResolvedVersion:
        """The version `number` (n > 0), or the n-th latest existing one
        (-n), with its blob key. `touch` marks a transient version as just
        used (moves it to the back of the eviction order). Unknown model, 0,
        a number with no version, or -n beyond the count: NotFound."""

    @abstractmethod
    def commit_version(self, draft: VersionDraft, blob_key: str) -> Commit:
        """Makes a stored blob a version: allocates the next number, inserts
        the version, then evicts least-recently-used transient versions
        (global across models; never archived ones, never the new one) until
        the cache budget holds. Returns the version and the evicted blobs.

        Idempotent per `blob_key`: committing a key already committed
        returns that version, evicting nothing. Empty model_id, blob_key or
        data_hash: InvalidArgument; unknown model: NotFound; a transient
        version larger than the whole byte budget: ResourceExhausted, with
        nothing written. The key already committed for another model:
        AlreadyExists.
        """

    @abstractmethod
    def import_model(self, model: Model) -> tuple[Model, bool]:
        """Creates the model unless it exists; an existing model keeps its
        user_data. Returns the model as stored and whether it was created.
        Empty model_id: InvalidArgument."""

    @abstractmethod
    def import_version(self, version: Version, blob_key: str) -> Commit:
        """Makes a stored archived blob the version `version.number` of its
        model, with its own creation_timestamp (importing another registry's
        archive). The model's counter becomes at least that number; a number
        with no version below it (a gap) may be filled. Nothing is evicted.

        `created` is True when the version's data is `blob_key`'s (also for
        a retried import of the same key), False when that number already
        holds the same data (same data_hash and data_size): nothing changed,
        and the blob is not referenced. That number holding other data:
        AlreadyExists, nothing written. Unknown model: NotFound; number 0,
        empty data_hash or blob_key, values out of range: InvalidArgument.
        """

    @abstractmethod
    def read_latest_version(self, model_id: str) -> VersionBatch:
        """The latest existing version (none if the model has none), for a
        watcher starting from the latest. Unknown model: NotFound."""

    @abstractmethod
    def read_versions_after(self, model_id: str, after_number: int, limit: int) -> VersionBatch:
        """Up to `limit` versions numbered above `after_number`, ascending,
        for a watcher catching up. Unknown model: NotFound."""

    @abstractmethod
    def find_unreferenced_blobs(self, keys: Sequence[str]) -> tuple[str, ...]:
        """Those of `keys` (first occurrence order, no duplicates) that no
        version references."""

    @abstractmethod
    def describe_database(self) -> DatabaseIdentity:
        """The database's identity (created with its schema, never changed)
        and its version counts."""

    @abstractmethod
    def renew_replica_lease(self, replica_id: str, slot: str, lease_seconds: float, now_ns: int) -> int:
        """Records blobstore replica `replica_id`, running in `slot`, as
        alive until `now_ns` + `lease_seconds`; then forgets (deletes) the
        transient versions of every other replica recorded in that slot (it
        restarted: its memory is gone) and their leases. `lease_seconds` 0
        releases the lease: the replica's own transient versions go too.
        Returns how many versions were forgotten. A bad replica id:
        InvalidArgument."""

    @abstractmethod
    def expire_replica_leases(self, now_ns: int) -> int:
        """Forgets the transient versions of every replica whose lease
        expired before `now_ns` (dead, or frozen past its lease), and their
        leases. Returns how many versions were forgotten."""

    @abstractmethod
    def forget_lost_version(self, blob_key: str) -> bool:
        """Deletes the transient version stored under `blob_key` (its data
        is gone); True if one was deleted. Archived versions are kept."""

    @abstractmethod
    def cache_usage(self) -> CacheUsage:
        """The transient versions held and their bytes (for the metrics)."""

    @abstractmethod
    def check(self) -> None:
        """Raises if the database does not answer a trivial query (for the
        service's health: a replica whose database is gone must not look
        healthy)."""

    @abstractmethod
    def close(self) -> None:
        """Releases the database; the store is unusable afterwards."""

    def data_version(self) -> int | None:
        """A number that differs from the last one returned once any
        connection, of any process, has committed a change to the database,
        read without waiting; None where the database offers no such
        number (then nothing read from it may be kept: reply_cache.py)."""
        return None
