"""A client-streaming call refused early keeps its status, whatever grpc.aio does.

When a server ends a client-streaming call (PutBlob) before the client has
sent everything, a write of the client's still in flight fails, and
grpc.aio's client replaces the server's status with INTERNAL "Internal
error from Core" if the event loop sees that failure after the status
(grpc/grpc#36066; the fix, grpc/grpc#43486, is not released). Measured
here: 1 call in 300 of 64 × 64 KiB to a server that refuses after the first
message. The frontend would then tell a user "the blobstore service
failed: INTERNAL" where the blobstore said RESOURCE_EXHAUSTED (disk full).

So the server announces a refusal in its initial metadata before it ends
the call (`announce_refusal`): headers arrive before trailers, and grpc.aio
keeps them whatever happens to the status. The client takes the status back
from them (`refusal_behind`) when the call reports that INTERNAL.
Announcing makes the overwrite more likely (the client is told to go on
writing), so only calls whose one client is ours do it.
"""

from __future__ import annotations

import grpc

from services.common.errors import RegistryError
from services.common.grpc_server import bounded_message

REFUSAL_CODE_KEY = "registry-refusal-code"
REFUSAL_DETAILS_KEY = "registry-refusal-details-bin"


async def announce_refusal(context: grpc.aio.ServicerContext, refusal: RegistryError) -> None:
    """Sends `refusal` as initial metadata, unless some was sent already."""
    try:
        await context.send_initial_metadata(
            (
                (REFUSAL_CODE_KEY, refusal.code.name),
                (REFUSAL_DETAILS_KEY, bounded_message(refusal.message).encode("utf-8")),
            )
        )
    except Exception:  # initial metadata already sent, or the call already over
        pass


async def refusal_behind(call: grpc.aio.Call, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """The error the server announced, if `error` is grpc.aio's INTERNAL
    in place of it; else `error`."""
    if error.code() != grpc.StatusCode.INTERNAL:
        return error
    try:
        metadata = dict(await call.initial_metadata() or ())
    except Exception:
        return error
    code = grpc.StatusCode.__members__.get(str(metadata.get(REFUSAL_CODE_KEY, "")))
    if code is None:
        return error
    details = metadata.get(REFUSAL_DETAILS_KEY, b"")
    return grpc.aio.AioRpcError(
        code,
        error.initial_metadata(),
        error.trailing_metadata(),
        details.decode("utf-8", "replace") if isinstance(details, bytes) else str(details),
    )
