"""Protobuf messages to domain records and back: the only place that knows both."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cogmentAPI import model_registry_pb2 as api
from registry import metadata_pb2

from services.metadata.records import (
    BlobRef,
    Model,
    ModelPage,
    ResolvedVersion,
    Version,
    VersionDraft,
    VersionPage,
    WatchStart,
)


def model_from_proto(info: api.ModelInfo) -> Model:
    return Model(model_id=info.model_id, user_data=dict(info.user_data))


def model_to_proto(model: Model) -> api.ModelInfo:
    return api.ModelInfo(model_id=model.model_id, user_data=model.user_data)


def draft_from_proto(info: api.ModelVersionInfo) -> VersionDraft:
    """A commit request's version; its version_number is ignored (allocated at commit)."""
    return VersionDraft(
        model_id=info.model_id,
        archived=info.archived,
        data_hash=info.data_hash,
        data_size=info.data_size,
        user_data=dict(info.user_data),
        creation_timestamp=info.creation_timestamp,
    )


def version_from_proto(info: api.ModelVersionInfo) -> Version:
    """An imported version, number and timestamp included."""
    return Version(
        model_id=info.model_id,
        number=info.version_number,
        creation_timestamp=info.creation_timestamp,
        archived=True,
        data_hash=info.data_hash,
        data_size=info.data_size,
        user_data=dict(info.user_data),
    )


def _version_fields(version: Version) -> dict[str, Any]:
    return {
        "model_id": version.model_id,
        "version_number": version.number,
        "creation_timestamp": version.creation_timestamp,
        "archived": version.archived,
        "data_hash": version.data_hash,
        "data_size": version.data_size,
        "user_data": version.user_data,
    }


def version_to_proto(version: Version) -> api.ModelVersionInfo:
    return api.ModelVersionInfo(**_version_fields(version))


def watch_event_to_proto(event: WatchStart | Version) -> metadata_pb2.WatchVersionsReply:
    if isinstance(event, WatchStart):
        started = metadata_pb2.WatchVersionsReply.Started(
            model_incarnation=event.model_incarnation, after_version=event.after_version
        )
        return metadata_pb2.WatchVersionsReply(started=started)
    return metadata_pb2.WatchVersionsReply(version_info=version_to_proto(event))


def blob_refs_to_proto(refs: Iterable[BlobRef]) -> list[metadata_pb2.BlobRef]:
    return [metadata_pb2.BlobRef(key=ref.key, archived=ref.archived) for ref in refs]


# Pages fill their repeated fields in place (`add`): building each item as
# a message of its own, then passing the list, copies every item once more.


def model_page_to_proto(page: ModelPage) -> api.RetrieveModelsReply:
    reply = api.RetrieveModelsReply(next_model_handle=page.next_handle)
    add = reply.model_infos.add
    for model in page.models:
        add(model_id=model.model_id, user_data=model.user_data)
    return reply


def version_page_to_proto(page: VersionPage) -> api.RetrieveVersionInfosReply:
    reply = api.RetrieveVersionInfosReply(next_version_handle=page.next_handle)
    add = reply.version_infos.add
    for version in page.versions:
        add(**_version_fields(version))
    return reply


def resolved_to_proto(resolved: ResolvedVersion) -> metadata_pb2.ResolveVersionReply:
    return metadata_pb2.ResolveVersionReply(
        version_info=version_to_proto(resolved.version), blob_key=resolved.blob_key
    )
