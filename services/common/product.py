"""What this product is called and which version it is: told by the public
Version call and in the Cogment Directory registration."""

from __future__ import annotations

NAME = "model_registry"
VERSION = "0.1.0"
# The Cogment API whose cogmentAPI.ModelRegistrySP (VersionUpdate, Version,
# Status included) and Directory protocol this registry speaks.
COGMENT_API_VERSION = "2.0"
