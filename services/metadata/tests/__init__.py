"""Tests of the metadata service: the store without network, the registry,
and the servicer through a real in-process gRPC server."""
