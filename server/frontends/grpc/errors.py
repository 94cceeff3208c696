"""The one place gRPC status codes are chosen for core errors (Triton's ``CodeToStatus``)."""

from __future__ import annotations

import grpc

from server.core.errors import (
    DeadlineExceeded,
    DeepserveError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    Unavailable,
    Unsupported,
)

_CODES: tuple[tuple[type[DeepserveError], grpc.StatusCode], ...] = (
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),  # the call's own deadline passed
    (Unavailable, grpc.StatusCode.UNAVAILABLE),  # QueueFull, Timeout, not ready, unloading, shutting down
    (Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (ModelError, grpc.StatusCode.INTERNAL),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details a failed RPC answers with.

    Core errors map as Triton maps its own; anything else is a bug on our side: INTERNAL.
    """
    if isinstance(error, DeepserveError):
        for kind, code in _CODES:
            if isinstance(error, kind):
                return code, error.message
        return grpc.StatusCode.INVALID_ARGUMENT, error.message
    return grpc.StatusCode.INTERNAL, f"internal error: {error!r}"
