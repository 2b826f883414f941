"""The blobstore: immutable blobs, streamed in and out in chunks.

It implements the internal `registry.BlobStore` API for the frontend, with
two tiers chosen per call by the `archived` flag:

- the memory tier (transient versions): a hard byte budget, reserved when an
  upload starts, before any byte is accepted;
- the archive tier (archived versions), verified against their SHA-256 on
  every read: files written atomically under `<archive_dir>/blobs/`, or,
  with `COGMENT_MODEL_REGISTRY_ARCHIVE_URL=s3://bucket/prefix`, objects of
  an S3-compatible bucket (multipart uploads, never overwritten).

A sweeper removes blobs orphaned by a frontend that died between storing a
blob and committing its version (asked to metadata, after a grace period),
and the leftovers of uploads whose blobstore died.
"""
