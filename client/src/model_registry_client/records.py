"""Plain, typed views of the registry's messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._proto import pb


@dataclass(frozen=True)
class ModelInfo:
    """A model: its id and free-form string metadata."""

    model_id: str
    user_data: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, message: Any) -> ModelInfo:
        return cls(model_id=message.model_id, user_data=dict(message.user_data))

    def to_proto(self) -> Any:
        return pb.ModelInfo(model_id=self.model_id, user_data=self.user_data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the field names of the gRPC API."""
        return {"model_id": self.model_id, "user_data": dict(self.user_data)}


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model, as the registry describes it.

    `data_hash` is the base64 of the SHA-256 of the data; `creation_timestamp`
    is in nanoseconds since the Unix epoch.
    """

    model_id: str
    version_number: int
    creation_timestamp: int
    archived: bool
    data_hash: str
    data_size: int
    user_data: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, message: Any) -> VersionInfo:
        return cls(
            model_id=message.model_id,
            version_number=message.version_number,
            creation_timestamp=message.creation_timestamp,
            archived=message.archived,
            data_hash=message.data_hash,
            data_size=message.data_size,
            user_data=dict(message.user_data),
        )

    @property
    def created(self) -> datetime:
        """`creation_timestamp` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.creation_timestamp / 1e9, tz=timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the field names of the gRPC API."""
        return {
            "model_id": self.model_id,
            "version_number": self.version_number,
            "creation_timestamp": self.creation_timestamp,
            "archived": self.archived,
            "data_hash": self.data_hash,
            "data_size": self.data_size,
            "user_data": dict(self.user_data),
        }
