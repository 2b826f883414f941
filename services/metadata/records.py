"""Plain data exchanged by the store, the registry and the servicer.

Independent of protobuf and of the database: `convert` maps these to and
from messages, the stores map them to and from rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CacheBudget:
    """Limits of the transient version cache, global across models."""

    max_items: int
    max_bytes: int


@dataclass(frozen=True)
class CacheUsage:
    """What the transient version cache holds now (every model)."""

    versions: int
    bytes: int


@dataclass(frozen=True)
class DatabaseIdentity:
    """Which metadata database this is, and how much it holds (for the
    blobstore's sweeper, which refuses to sweep against another database or
    an empty one)."""

    # Random, created with the database and kept in it: a restore of the
    # same database keeps it, a new (empty or other) database has another.
    database_id: str
    archived_versions: int
    transient_versions: int


@dataclass(frozen=True)
class Model:
    """A model: its id and free-form user data."""

    model_id: str
    user_data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Version:
    """A committed version, as clients see it."""

    model_id: str
    number: int
    creation_timestamp: int  # nanoseconds since the Unix epoch
    archived: bool
    data_hash: str
    data_size: int
    user_data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionDraft:
    """What a commit asks for; the number is allocated by the store."""

    model_id: str
    archived: bool
    data_hash: str
    data_size: int
    user_data: Mapping[str, str] = field(default_factory=dict)
    creation_timestamp: int = 0  # 0: the time of the commit


@dataclass(frozen=True)
class BlobRef:
    """A blob whose data the caller must delete (or, for sweeps, may)."""

    key: str
    archived: bool


@dataclass(frozen=True)
class ResolvedVersion:
    """A version and the key of the blob holding its data."""

    version: Version
    blob_key: str


@dataclass(frozen=True)
class Commit:
    """The outcome of `commit_version`.

    `created` is False when the blob key was already committed (a retried
    commit): `version` is then the existing version and nothing was evicted.
    """

    version: Version
    evicted: tuple[BlobRef, ...]
    created: bool


@dataclass(frozen=True)
class ModelPage:
    models: tuple[Model, ...]
    next_handle: str


@dataclass(frozen=True)
class VersionPage:
    versions: tuple[Version, ...]
    next_handle: str


@dataclass(frozen=True)
class WatchStart:
    """The first event of a watch: it is registered (no commit from now on
    can be missed), and follows this incarnation of the model."""

    model_incarnation: int
    # Every version numbered above this one follows.
    after_version: int


@dataclass(frozen=True)
class VersionBatch:
    """Versions read for a watcher, with the identity of the model they
    belong to: `model_seq` changes when a model is deleted and re-created
    under the same id, which a long-lived watcher must notice."""

    model_seq: int
    versions: tuple[Version, ...]
