"""Importing the original Cogment Model Registry's archive directory
(`model-registry import-cogment-archive DIR`).

The layout (the same in Cogment 0.6 and 2.x)::

    DIR/<model_id>/<model_id>.yaml            model_id, user_data
    DIR/<model_id>/<model_id>-v000001.yaml    model_id, version_number, creation_timestamp
                                              (RFC 3339, nanoseconds), data_hash (base64
                                              SHA-256), data_size, user_data
    DIR/<model_id>/<model_id>-v000001.data    the version's bytes

Only archived versions are there, so numbers have gaps (the original's
transient versions never reached the disk); they are kept. Each version is
looked up first: the same number with the same data_hash is "already
imported" (its file is not even read), other data under that number is
skipped. Otherwise its bytes are streamed once, hashed on the way, and the
registry stores them only if they match data_size and data_hash.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import NotFoundError, RegistryError
from .progress import format_bytes
from .records import ModelInfo, VersionInfo

_VERSION_FILE = re.compile(r"-v(\d{6,})\.yaml$")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_NANOS = 10**9


class ArchiveError(ValueError):
    """A file of the archive cannot be read as the original wrote it."""


def parse_timestamp(value: str) -> int:
    """An RFC 3339 time (``2026-12-01T09:39:55.621187979Z``, any offset, up
    to nanoseconds) or a number of nanoseconds → nanoseconds since the epoch."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ArchiveError(f"creation_timestamp {value!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ArchiveError(f"creation_timestamp {value!r}: {exc}") from None
    seconds = calendar.timegm(moment.timetuple())
    if match.group(9):
        offset = (int(match.group(10)) * 60 + int(match.group(11))) * 60
        seconds -= offset if match.group(9) == "+" else -offset
    fraction = (match.group(7) or "").ljust(9, "0")
    return seconds * _NANOS + int(fraction)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml  # only this command needs it

    try:
        # BaseLoader: every scalar stays the string written (no timestamps
        # rounded to microseconds, no "10" turned into an int in user_data).
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ArchiveError(f"{path.name}: cannot be read: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict):
        raise ArchiveError(f"{path.name}: not a YAML mapping")
    return document


def _user_data(document: dict[str, Any], path: Path) -> dict[str, str]:
    value = document.get("user_data") or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ArchiveError(f"{path.name}: user_data is not a map of strings")
    return dict(value)


def _number(document: dict[str, Any], key: str, path: Path) -> int:
    value = document.get(key)
    if not isinstance(value, str) or not value.isdigit():
        raise ArchiveError(f"{path.name}: {key} {value!r} is not a number")
    return int(value)


@dataclass(frozen=True)
class ArchivedVersion:
    """One version of the archive: its info and where its bytes are."""

    info: VersionInfo
    data_path: Path


@dataclass(frozen=True)
class Skipped:
    """Something not imported, and why."""

    what: str
    reason: str


@dataclass
class ArchivedModel:
    model: ModelInfo
    versions: list[ArchivedVersion] = field(default_factory=list)


def read_archive(directory: Path) -> tuple[list[ArchivedModel], list[Skipped]]:
    """The models and versions of an archive directory, in order, with what
    cannot be read (and why)."""
    if not directory.is_dir():
        raise ArchiveError(f"{directory} is not a directory")
    models: list[ArchivedModel] = []
    skipped: list[Skipped] = []
    for model_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        model_file = model_dir / f"{model_dir.name}.yaml"
        if not model_file.is_file():
            skipped.append(Skipped(f"model {model_dir.name!r}", f"no {model_file.name} in {model_dir}"))
            continue
        try:
            document = _load_yaml(model_file)
            model_id = document.get("model_id") or model_dir.name
            if model_id != model_dir.name:
                raise ArchiveError(f"{model_file.name}: model_id {model_id!r} is not the directory's name")
            archived = ArchivedModel(ModelInfo(model_id, _user_data(document, model_file)))
        except ArchiveError as exc:
            skipped.append(Skipped(f"model {model_dir.name!r}", str(exc)))
            continue
        models.append(archived)
        for version_file in sorted(model_dir.glob(f"{model_dir.name}-v*.yaml")):
            match = _VERSION_FILE.search(version_file.name)
            if match is None or version_file.name != f"{model_dir.name}-v{match.group(1)}.yaml":
                continue
            what = f"version {int(match.group(1))} of model {model_id!r}"
            try:
                archived.versions.append(_read_version(version_file, model_id, int(match.group(1))))
            except ArchiveError as exc:
                skipped.append(Skipped(what, str(exc)))
        archived.versions.sort(key=lambda version: version.info.version_number)
    return models, skipped


def _read_version(path: Path, model_id: str, number: int) -> ArchivedVersion:
    document = _load_yaml(path)
    if document.get("model_id", model_id) != model_id:
        raise ArchiveError(f"{path.name}: model_id {document.get('model_id')!r} is not {model_id!r}")
    if _number(document, "version_number", path) != number:
        raise ArchiveError(f"{path.name}: version_number {document.get('version_number')} is not {number}")
    data_hash = document.get("data_hash")
    if not isinstance(data_hash, str) or not data_hash:
        raise ArchiveError(f"{path.name}: no data_hash")
    info = VersionInfo(
        model_id=model_id,
        version_number=number,
        creation_timestamp=parse_timestamp(str(document.get("creation_timestamp", ""))),
        archived=True,
        data_hash=data_hash,
        data_size=_number(document, "data_size", path),
        user_data=_user_data(document, path),
    )
    return ArchivedVersion(info, path.with_suffix(".data"))


@dataclass
class ImportSummary:
    """What an import did, for the closing report and the exit code."""

    models_created: list[str] = field(default_factory=list)
    # Existing models keep their own user_data, even when the archive's differs.
    models_kept: list[str] = field(default_factory=list)
    imported: list[VersionInfo] = field(default_factory=list)
    already_imported: list[VersionInfo] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def bytes_imported(self) -> int:
        return sum(info.data_size for info in self.imported)

    @property
    def nothing_new(self) -> bool:
        return not self.models_created and not self.imported


Progress = Callable[[str], Callable[[int, int], None] | None]
"""Given a label, a progress(done, total) callback (or None) for one version."""


class ArchiveImporter:
    """Imports an archive through a client's `import_model`,
    `get_version` and `import_version` (a `RegistryClient`)."""

    def __init__(self, client: Any, *, progress: Progress | None = None, log: Callable[[str], None] = print) -> None:
        self._client = client
        self._progress = progress
        self._log = log

    def run(self, directory: Path) -> ImportSummary:
        models, unreadable = read_archive(directory)
        summary = ImportSummary(skipped=list(unreadable))
        for archived in models:
            self._import_model(archived, summary)
        return summary

    def _import_model(self, archived: ArchivedModel, summary: ImportSummary) -> None:
        model_id = archived.model.model_id
        try:
            stored, created = self._client.import_model(model_id, archived.model.user_data)
        except RegistryError as exc:
            summary.skipped.append(Skipped(f"model {model_id!r} and its {len(archived.versions)} versions", str(exc)))
            return
        (summary.models_created if created else summary.models_kept).append(model_id)
        if not created and stored.user_data != archived.model.user_data:
            self._log(f"model {model_id!r} exists: it keeps its own user_data, not the archive's")
        for version in archived.versions:
            self._import_version(version, summary)

    def _import_version(self, version: ArchivedVersion, summary: ImportSummary) -> None:
        info = version.info
        what = f"version {info.version_number} of model {info.model_id!r}"
        for existing in self._existing(info):
            if (existing.data_hash, existing.data_size) == (info.data_hash, info.data_size):
                summary.already_imported.append(existing)
            else:
                summary.skipped.append(
                    Skipped(what, f"the registry already has a version {info.version_number} with other data")
                )
            return
        try:
            size = version.data_path.stat().st_size
        except OSError as exc:
            summary.skipped.append(Skipped(what, f"{version.data_path.name}: {exc.strerror}"))
            return
        if size != info.data_size:
            summary.skipped.append(
                Skipped(what, f"{version.data_path.name} has {size} bytes, its data_size says {info.data_size}")
            )
            return
        progress = self._progress(f"{info.model_id} v{info.version_number}") if self._progress else None
        try:
            stored, already = self._client.import_version(info, version.data_path, progress=progress)
        except (RegistryError, OSError) as exc:
            summary.skipped.append(Skipped(what, str(exc)))
            return
        finally:
            close = getattr(progress, "close", None)
            if close is not None:
                close()
        (summary.already_imported if already else summary.imported).append(stored)

    def _existing(self, info: VersionInfo) -> Iterator[VersionInfo]:
        try:
            yield self._client.get_version(info.model_id, info.version_number)
        except NotFoundError:
            return


def summary_dict(summary: ImportSummary) -> dict[str, Any]:
    """The closing report for `--json`."""
    return {
        "models_created": summary.models_created,
        "models_kept": summary.models_kept,
        "imported": [info.to_dict() for info in summary.imported],
        "already_imported": [info.to_dict() for info in summary.already_imported],
        "bytes_imported": summary.bytes_imported,
        "skipped": [{"what": item.what, "reason": item.reason} for item in summary.skipped],
    }


def summary_lines(summary: ImportSummary) -> list[str]:
    """The closing report, one line each."""
    lines = [
        f"models: {len(summary.models_created)} created, {len(summary.models_kept)} already there "
        "(an existing model keeps its own user_data)",
        f"versions: {len(summary.imported)} imported ({format_bytes(summary.bytes_imported)}), "
        f"{len(summary.already_imported)} already imported",
        f"skipped: {len(summary.skipped)}",
    ]
    lines += [f"skipped {item.what}: {item.reason}" for item in summary.skipped]
    if summary.nothing_new and not summary.skipped:
        lines.append("nothing new to import: the registry already has this archive")
    return lines
