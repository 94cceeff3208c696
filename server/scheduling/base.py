"""The scheduler seam: every model kind is run through this one small protocol.

A model's config chooses its scheduler (the repository builds it):

=====================================================  ===============================
config                                                 scheduler
=====================================================  ===============================
a runtime backend (onnxruntime, tensorrt, pytorch,     :class:`~server.scheduling.batcher.DynamicBatcher`
python), with or without ``dynamic_batching``
``platform: "ensemble"``                               :class:`~server.scheduling.ensemble.EnsembleScheduler`
``model_transaction_policy { decoupled: true }``       the batcher, answering with a stream
=====================================================  ===============================

Callers hand in a :class:`Job` (inputs already validated against the model) and get one
result (``infer``) or an async stream of results (``stream``; a unary model's stream has
exactly one item). ``aclose`` drains: it stops taking jobs, lets queued and running ones
finish, then frees what the scheduler holds. What a scheduler measures goes to the
observer it was built with (Prometheus and Triton's statistics).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Job:
    """One request as a scheduler sees it: tensors, rows, and its queueing wishes."""

    inputs: Outputs
    rows: int  # leading-dimension rows (1 for a model that does not batch)
    priority: int | None = None  # request parameter `priority` (None / 0 = the default level)
    timeout_us: int | None = None  # request parameter `timeout`
    budget_s: float | None = None  # what is left of the client's deadline when the job was made
    parameters: Mapping[str, Any] | None = None  # the request's parameters (generation reads its sampling ones)


class Scheduler(Protocol):
    def start(self) -> None:
        """Begin taking jobs (called on the event loop once the model is loaded)."""
        ...

    async def infer(self, job: Job) -> Outputs:
        """Run one job to its one result, or raise one core error."""
        ...

    def stream(self, job: Job) -> AsyncIterator[Outputs]:
        """Run one job, yielding each response as it is produced. Closing the iterator
        early (the client went away) stops the producer and frees what it held."""
        ...

    async def aclose(self) -> None:
        """Stop taking jobs, finish the accepted ones, then free resources."""
        ...
