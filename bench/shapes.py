"""The shapes a benchmark stack can take (`python -m bench --shape`).

- default: one process each, metadata on SQLite (what `make up` starts);
- replicated: the production shape of the integration tests
  (REGISTRY_TEST_SHAPE=replicated): 2 frontends, 3 blobstores, 2 metadata
  replicas on PostgreSQL, each run on a schema of its own, dropped at the
  end. The archive stays a local directory: small calls never touch it,
  and transfers to S3 would measure the S3 server, not the registry.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Shape:
    """Launcher settings of a shape, and what to clean up after the run."""

    settings: dict[str, str] = field(default_factory=dict)
    _schema: str | None = None
    _database_url: str | None = None

    def close(self) -> None:
        if self._schema is None or self._database_url is None:
            return
        import psycopg

        with psycopg.connect(self._database_url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {self._schema} CASCADE")
        self._schema = None


def default_shape() -> Shape:
    return Shape({"FRONTEND_REPLICAS": "1", "BLOBSTORE_REPLICAS": "1", "METADATA_REPLICAS": "1"})


def replicated_shape() -> Shape:
    import psycopg

    url = os.environ.get("REGISTRY_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return Shape(
        {
            "FRONTEND_REPLICAS": "2",
            "BLOBSTORE_REPLICAS": "3",
            "METADATA_REPLICAS": "2",
            "COGMENT_MODEL_REGISTRY_METADATA_URL": f"{url}?options=-csearch_path%3D{schema}",
        },
        schema,
        url,
    )


SHAPES = {"default": default_shape, "replicated": replicated_shape}
