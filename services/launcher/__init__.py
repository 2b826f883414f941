"""Runs the whole stack as local processes: Envoy, frontend, metadata and
blobstore (any number of replicas each). `make run`/`up`/`down` call this;
so do the integration tests and the benchmark, through the same code path."""
