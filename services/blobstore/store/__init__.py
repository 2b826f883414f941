"""Storage tiers of the blobstore: the contract (`base`) and its
implementations. The S3 tier (`store.s3`) is imported where it is used, so
that boto3 is loaded only by a blobstore archiving to S3."""

from services.blobstore.store.base import BlobReader, BlobTier, BlobWriter, StoredBlob, validate_key
from services.blobstore.store.filesystem import FileTier
from services.blobstore.store.memory import MemoryTier

__all__ = ["BlobReader", "BlobTier", "BlobWriter", "FileTier", "MemoryTier", "StoredBlob", "validate_key"]
