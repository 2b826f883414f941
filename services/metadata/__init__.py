"""The metadata service: models, versions, version-number allocation,
pagination, the transient LRU and version notifications.

It implements `registry.MetadataService` (proto/registry/metadata.proto) for
the frontend. State lives in an embedded SQLite database (WAL,
`synchronous=FULL`; one replica), or in PostgreSQL shared by several
replicas (COGMENT_MODEL_REGISTRY_METADATA_URL), reached through
`store.MetadataStore`; `registry` runs every store call on one dedicated
thread and owns the watch hub, which LISTEN/NOTIFY (`change_feed`) keeps
informed of other replicas' commits; `servicer` only converts between protobuf and the domain
(`convert`).
"""
