"""Persistence of models and versions behind one contract (`MetadataStore`).

`sql.SqlMetadataStore` holds the logic and portable SQL; `sqlite` adds the
connection, schema and the few SQLite-specific statements. A PostgreSQL
store would subclass `SqlMetadataStore` the same way.
"""

from services.metadata.store.base import MetadataStore

__all__ = ["MetadataStore"]
