"""The metadata service: models, versions, version-number allocation,
pagination, the transient LRU and version notifications.

It implements `registry.MetadataService` (proto/registry/metadata.proto) for
the frontend. State lives in an embedded SQLite database (WAL,
`synchronous=FULL`) reached through `store.MetadataStore`; `registry` runs
every store call on one dedicated thread and owns the watch hub; `servicer`
only converts between protobuf and the domain (`convert`).
"""
