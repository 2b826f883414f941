"""Version and Status of `cogmentAPI.ModelRegistrySP`: what this registry
is, and how loaded this frontend is (the Cogment Directory health-checks a
registered service with `Status(names=["overall_load"])`, and its load
balancing prefers the entry with the lowest figure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from cogment import model_registry_pb2 as legacy_api_pb2
from cogmentAPI import model_registry_pb2 as api_pb2
from registry import admin_pb2

from services.common import product
from services.common.grpc_server import InFlightCalls

OVERALL_LOAD = "overall_load"
EVERY_STATUS = "*"
# What the Cogment Directory reads as "cannot serve" (it parses the figure
# as an unsigned 8-bit integer; with load balancing it drops such entries).
UNSERVICEABLE = 255

# Calls that are not work: subscriptions idle for hours, and the calls that
# only describe the registry.
_NOT_LOAD = frozenset({"VersionUpdate", "Version", "Status"})


def _load_methods() -> frozenset[str]:
    """Paths of the calls that make up the load: every public and admin
    call that requests something or moves data."""
    paths = set()
    for module, service in ((api_pb2, "ModelRegistrySP"), (legacy_api_pb2, "ModelRegistrySP"), (admin_pb2, "Admin")):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        paths.update(f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods if m.name not in _NOT_LOAD)
    return frozenset(paths)


class RegistryStatus:
    """The answers of Version and Status.

    `overall_load` is this frontend's calls in flight that request
    something or move data (not VersionUpdate subscriptions, not health or
    Version/Status calls), as a percentage of `full_load_calls`: "0" idle,
    "100" at that many calls, at most "254"; "255" while this frontend
    cannot serve (draining, or the stack behind it is not healthy).
    Through Envoy, RetrieveModels and RetrieveVersionInfos never reach a
    frontend (metadata answers them: docs/design.md, section 15), so the
    load is that of writes, transfers and the calls a frontend does serve.
    """

    def __init__(self, in_flight: InFlightCalls, *, full_load_calls: int, serving: Callable[[], bool]) -> None:
        self._in_flight = in_flight
        self._full_load_calls = full_load_calls
        self._serving = serving
        self._load_methods = _load_methods()

    def versions(self) -> list[tuple[str, str]]:
        """(name, version) pairs: this product, the Cogment API it speaks, gRPC."""
        return [
            (product.NAME, product.VERSION),
            ("cogment_api", product.COGMENT_API_VERSION),
            ("grpc", grpc.__version__),
        ]

    def overall_load(self) -> int:
        if not self._serving():
            return UNSERVICEABLE
        by_method = self._in_flight.by_method
        busy = sum(by_method.get(method, 0) for method in self._load_methods)
        return min(UNSERVICEABLE - 1, round(100 * busy / self._full_load_calls))

    def statuses(self, names: Sequence[str]) -> dict[str, str]:
        """The statuses asked for by name ("*": all of them); names this
        registry does not know are left out, as Cogment's services do."""
        wanted = set(names)
        if EVERY_STATUS in wanted or OVERALL_LOAD in wanted:
            return {OVERALL_LOAD: str(self.overall_load())}
        return {}
