"""The blobstore: immutable blobs, streamed in and out in chunks.

It implements the internal `registry.BlobStore` API for the frontend, with
two tiers chosen per call by the `archived` flag:

- the memory tier (transient versions): a hard byte budget, reserved when an
  upload starts, before any byte is accepted;
- the file tier (archived versions): written atomically under
  `<archive_dir>/blobs/` and verified against its SHA-256 on every read.

A sweeper removes blobs orphaned by a frontend that died between storing a
blob and committing its version (asked to metadata, after a grace period).
"""
