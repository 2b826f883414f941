"""The names the registry's gRPC services answer to (and are health-checked
under), read once from the generated descriptors so that no module retypes
them."""

from __future__ import annotations

from cogment import model_registry_pb2 as legacy_api_pb2
from cogmentAPI import model_registry_pb2 as api_pb2
from grpc_health.v1 import health_pb2
from registry import admin_pb2, blobstore_pb2, metadata_pb2

BLOBSTORE = blobstore_pb2.DESCRIPTOR.services_by_name["BlobStore"].full_name
METADATA = metadata_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name
MODEL_REGISTRY = api_pb2.DESCRIPTOR.services_by_name["ModelRegistrySP"].full_name
# The 1.x name of the same API, still served for older clients.
LEGACY_MODEL_REGISTRY = legacy_api_pb2.DESCRIPTOR.services_by_name["ModelRegistrySP"].full_name
PUBLIC = (MODEL_REGISTRY, LEGACY_MODEL_REGISTRY)
# The public methods metadata answers itself, under each name in PUBLIC:
# Envoy routes them straight to metadata's public reads listener
# (services/metadata/public_reads.py), every other public call to a frontend.
PUBLIC_READS = ("RetrieveModels", "RetrieveVersionInfos")
# The registry's own administration calls (importing another registry's archive).
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# A health name only, no service of that name exists: what Envoy checks a
# frontend with. It says this process is up and knows its blobstores, not
# that its upstreams are, so a metadata outage does not eject every frontend.
FRONTEND_LIVENESS = "registry.Frontend"

# The name each kind of service is health-checked under, by Envoy and by
# its container's HEALTHCHECK (metadata's public reads listener answers
# the same health as its internal one, and is checked under the same name).
HEALTH_CHECKED = {"frontend": FRONTEND_LIVENESS, "metadata": METADATA, "blobstore": BLOBSTORE}
