"""Errors raised by the core, the repository, the scheduler and the runtimes.

Each frontend maps these to its own status codes in one function
(HTTP: ``server.frontends.http.errors``; gRPC: ``server.frontends.grpc.errors``).
No HTTP or gRPC type ever crosses into the layers below the frontends.
"""

from __future__ import annotations

import copy
from contextvars import ContextVar


class DeepserveError(Exception):
    """Base class. ``reason`` is the label used on failure metrics.

    ``counted`` is set once a model's telemetry has counted the failure, so that the
    frontend's accounting (``InferenceService.accounting``) never counts it twice.
    """

    reason = "OTHER"
    counted = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def with_prefix(self, prefix: str) -> DeepserveError:
        """The same kind of error (same status, same retry hint), its message prefixed:
        how an ensemble names the step that failed."""
        error = copy.copy(self)
        error.message = prefix + self.message
        error.args = (error.message,)
        return error


class InvalidInput(DeepserveError):
    """The request does not fit the model (names, datatypes, shapes, sizes)."""

    reason = "INVALID"


class ModelNotFound(DeepserveError):
    """No such model, or no such version of it, in the repository."""

    reason = "NOT_FOUND"


class Unavailable(DeepserveError):
    """The model exists but cannot take the request now (not ready, unloading, shutting down)."""

    reason = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClientGone(Unavailable):
    """The client went away before its answer was ready (nobody reads this error; it is
    counted as CANCELED, once: see :data:`CANCEL_COUNTED`)."""

    reason = "CANCELED"


# Set in a request's task once a model's telemetry has counted its cancellation, so the
# frontend that sees the client gone does not count it a second time.
CANCEL_COUNTED: ContextVar[bool] = ContextVar("deepserve_cancel_counted", default=False)


class QueueFull(Unavailable):
    """The model's queue is at ``max_queue_size``: refused at once."""

    reason = "OVERLOAD"


class Timeout(Unavailable):
    """The request waited in the queue past its timeout and was rejected."""

    reason = "TIMEOUT"


class DeadlineExceeded(Timeout):
    """The client's own deadline passed before the request could run (gRPC
    DEADLINE_EXCEEDED; HTTP 503 like any timeout)."""


class Unsupported(DeepserveError):
    """A feature the server does not implement (maps to 501 / UNIMPLEMENTED)."""

    reason = "OTHER"


class ModelError(DeepserveError):
    """The runtime failed while executing a batch (maps to 500 / INTERNAL)."""

    reason = "BACKEND"
