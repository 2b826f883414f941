"""Python client of the model registry (`cogmentAPI.ModelRegistrySP`).

    from model_registry_client import RegistryClient

    with RegistryClient("localhost:9000") as registry:
        registry.create_model("policy", {"type": "ppo"})
        info = registry.push("policy", "checkpoint.pt", archived=True)
        data = registry.pull("policy", -1)

`AsyncRegistryClient` has the same methods for asyncio. The `model-registry`
command line is `model_registry_client.cli`.
"""

from .aio import AsyncRegistryClient
from .client import RegistryClient
from .errors import (
    DataIntegrityError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    UnauthenticatedError,
    UnavailableError,
)
from .records import ModelInfo, VersionInfo

__all__ = [
    "AsyncRegistryClient",
    "DataIntegrityError",
    "InvalidArgumentError",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "RegistryClient",
    "RegistryError",
    "UnauthenticatedError",
    "UnavailableError",
    "VersionInfo",
]
__version__ = "0.1.0"
