"""Domain errors that carry their gRPC status code.

Domain layers raise these; one interceptor per server (see `grpc_server`)
turns them into statuses, so servicers never call `context.abort` themselves.
"""

from __future__ import annotations

import grpc

# How much of a value from a request an error message quotes: messages travel
# as gRPC metadata (grpc-message), which every hop bounds (16 KiB by default
# inside the stack): a 20,000-character model id quoted whole would make the
# error itself fail with "metadata size exceeds hard limit".
QUOTE_MAX_CHARACTERS = 200


def quoted(value: object, limit: int = QUOTE_MAX_CHARACTERS) -> str:
    """`value` as a message quotes it (repr), cut to `limit` characters of
    the value with its full length said, so that no message grows with the
    input it quotes."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class RegistryError(Exception):
    """Base of every error a client is meant to see."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RegistryError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RegistryError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RegistryError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(RegistryError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(RegistryError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(RegistryError):
    code = grpc.StatusCode.DATA_LOSS


class Unavailable(RegistryError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RegistryError):
    """The server's own time limit ran out (an idle transfer), not the client's deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(RegistryError):
    code = grpc.StatusCode.ABORTED


class Cancelled(RegistryError):
    code = grpc.StatusCode.CANCELLED


class UpstreamError(RegistryError):
    """An internal call failed with a status that is passed on to the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Unauthenticated(RegistryError):
    """The call has no credential, or one the registry does not accept."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RegistryError):
    """The caller is known, but its role does not allow the method."""

    code = grpc.StatusCode.PERMISSION_DENIED
