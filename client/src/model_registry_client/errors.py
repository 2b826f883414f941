"""The errors the SDK raises: one class per outcome a caller handles differently.

Every error keeps the gRPC status (`code`) and the server's message
(`details`); ``str(error)`` is ``"NOT_FOUND: model 'x' not found"``.
"""

from __future__ import annotations

import grpc

from .tls import transport_hint


class RegistryError(Exception):
    """A call to the registry failed; `code` is its `grpc.StatusCode`, `details` the message."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.details: str = details
        super().__init__(f"{self.code.name}: {details}")


class NotFoundError(RegistryError):
    """The model or version does not exist (or a transient version was evicted)."""

    default_code = grpc.StatusCode.NOT_FOUND


class InvalidArgumentError(RegistryError):
    """The registry refused the request as malformed (empty id, bad handle, size/hash mismatch on push...)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class DataIntegrityError(RegistryError):
    """Data did not match its announced size or SHA-256 (on pull, or the source changed during a push),
    or the registry reported DATA_LOSS (corrupt or missing archived data)."""

    default_code = grpc.StatusCode.DATA_LOSS


class UnavailableError(RegistryError):
    """The registry could not be reached, or one of its services is down; retrying later may work."""

    default_code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(RegistryError):
    """The registry wants a credential (token, or user and password), or did not accept the one given."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(RegistryError):
    """The credential is known, but its role does not allow this call (the message names the role needed)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


_BY_CODE: dict[grpc.StatusCode, type[RegistryError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DATA_LOSS: DataIntegrityError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def from_rpc_error(error: grpc.RpcError) -> RegistryError:
    """The `RegistryError` for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else None
    details = (details_of() if callable(details_of) else None) or str(error)
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = transport_hint(details)
        if hint is not None:
            details = f"{hint} ({details})"
    return _BY_CODE.get(code, RegistryError)(details, code)
