"""Persistence of models and versions behind one contract (`MetadataStore`).

`sql.SqlMetadataStore` holds the logic and portable SQL; `sqlite` and
`postgres` add the connection, schema and the few statements specific to
their database (`postgres` also the listener that carries notifications
between replicas).
"""

from services.metadata.store.base import MetadataStore

__all__ = ["MetadataStore"]
