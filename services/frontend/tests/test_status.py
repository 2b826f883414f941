"""Status and Version (services/frontend/status.py): what overall_load
counts, and how the Cogment Directory reads it."""

from __future__ import annotations

import grpc

from services.common.grpc_server import InFlightCalls
from services.frontend.status import RegistryStatus


class FinishedContext:
    """A ServicerContext whose done callbacks the test runs."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def add_done_callback(self, callback) -> None:  # noqa: ANN001
        self.callbacks.append(callback)

    def finish(self) -> None:
        """Ends the call (once, as gRPC does)."""
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback(self)


def status(in_flight: InFlightCalls, serving: bool = True) -> RegistryStatus:
    return RegistryStatus(in_flight, full_load_calls=4, serving=lambda: serving)


def test_load_counts_requests_and_transfers_not_subscriptions_or_probes():
    in_flight = InFlightCalls()
    calls = {}
    for method in (
        "/cogmentAPI.ModelRegistrySP/RetrieveVersionData",
        "/cogment.ModelRegistrySP/CreateVersion",
        "/registry.Admin/ImportVersion",
        "/cogmentAPI.ModelRegistrySP/VersionUpdate",
        "/cogmentAPI.ModelRegistrySP/Status",
        "/grpc.health.v1.Health/Check",
    ):
        calls[method] = FinishedContext()
        in_flight.started(method, calls[method])
    assert status(in_flight).statuses(["overall_load"]) == {"overall_load": "75"}  # 3 of 4
    calls["/registry.Admin/ImportVersion"].finish()
    assert status(in_flight).overall_load() == 50
    for context in calls.values():
        context.finish()
    assert status(in_flight).overall_load() == 0 and in_flight.count == 0


def test_load_is_an_integer_from_0_to_255_and_255_when_not_serving():
    in_flight = InFlightCalls()
    for _ in range(100):
        in_flight.started("/cogmentAPI.ModelRegistrySP/RetrieveModels", FinishedContext())
    assert status(in_flight).overall_load() == 254  # busy, but serving
    assert status(InFlightCalls(), serving=False).statuses(["*"]) == {"overall_load": "255"}


def test_unknown_names_are_left_out():
    assert status(InFlightCalls()).statuses(["nope"]) == {}
    assert status(InFlightCalls()).statuses([]) == {}
    assert status(InFlightCalls()).statuses(["nope", "*"]) == {"overall_load": "0"}


def test_version_names_the_product_and_the_cogment_api():
    versions = dict(status(InFlightCalls()).versions())
    assert versions == {"model_registry": "0.1.0", "cogment_api": "2.0", "grpc": grpc.__version__}
