"""Persistence of models and versions behind one contract (`MetadataStore`).

`sql.SqlMetadataStore` holds the logic and portable SQL; `sqlite` and
`postgres` add the connection, schema and the few statements specific to
their database (`postgres` also announces changes to the other replicas,
whose `services.metadata.change_feed` hears them).
"""

from services.metadata.store.base import MetadataStore

__all__ = ["MetadataStore"]
