"""A loaded model version as the service and ensembles call it.

``LoadedModel`` checks a request against the model's declared inputs, counts it in the
model's telemetry, and hands it to the model's scheduler (a dynamic batcher or an
ensemble executor). Frontends never see it: they go through ``InferenceService``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from server.core.errors import InvalidInput
from server.core.types import InferenceRequest, TensorSpec
from server.core.validation import check_request, check_utf8
from server.observability.stats import ModelTelemetry
from server.pipelines.text import TextModel
from server.repository.config import ModelConfig
from server.runtimes.base import Runtime
from server.scheduling.base import Job, Outputs, Scheduler


@dataclass(slots=True, eq=False)
class LoadedModel:
    name: str
    version: str
    config: ModelConfig
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: dict[str, list[str]]  # output name -> class labels
    telemetry: ModelTelemetry
    scheduler: Scheduler
    instances: list[Runtime] = field(default_factory=list)  # none for an ensemble
    steps: tuple[str, ...] = ()  # the models an ensemble calls
    text_inputs: frozenset[str] = frozenset()  # BYTES inputs the runtime reads as UTF-8 text
    input_index: dict[str, TensorSpec] = field(default_factory=dict)
    text: TextModel | None = None  # a generation model's tokenizer and context (the OpenAI routes read them)
    # Residency (the repository's): the requests holding this version (an unload waits for
    # them; ``released`` is set when the last one lets go), and the memory its load took.
    refs: int = 0
    released: asyncio.Event | None = None
    resident_bytes: int = 0  # process RSS delta across the load
    device_bytes: int = 0  # this process's GPU memory delta across the load (NVML)

    def __post_init__(self) -> None:
        self.input_index = {spec.name: spec for spec in self.inputs}

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def decoupled(self) -> bool:
        return self.config.model_transaction_policy.decoupled

    @property
    def task(self) -> str:
        """What the task routes may call it for (``parameters { key: "task" }``)."""
        parameter = self.config.parameters.get("task")
        return parameter.string_value if parameter is not None else ""

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    def job(self, request: InferenceRequest) -> Job:
        """Validate before queueing, so that a bad request never joins a batch."""
        rows = check_request(request, self.input_index, self.outputs, self.max_batch_size)
        check_utf8(request, self.text_inputs)
        priority, timeout_us = _schedule_parameters(request.parameters)
        budget = None if request.deadline_s is None else request.deadline_s - time.monotonic()
        return Job(request.inputs, rows, priority, timeout_us, budget, request.parameters)

    async def infer(self, request: InferenceRequest) -> Outputs:
        with self.telemetry.track():
            return await self.scheduler.infer(self.job(request))

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Outputs]:
        with self.telemetry.track():
            async with aclosing(self.scheduler.stream(self.job(request))) as responses:
                async for outputs in responses:
                    yield outputs

    async def run(self, inputs: Outputs, deadline_s: float | None = None, priority: int | None = None) -> Outputs:
        """An ensemble step's call (``StepTarget``), under the ensemble request's deadline;
        ``priority`` is the request parameter (1 = highest; None = the model's default level)."""
        parameters = {} if priority is None else {"priority": priority}
        return await self.infer(InferenceRequest(self.name, inputs, self.version, deadline_s=deadline_s,
                                                 parameters=parameters))

    def unload_instances(self) -> None:
        for instance in self.instances:
            instance.unload()


def _schedule_parameters(parameters: dict) -> tuple[int | None, int | None]:
    """The reserved request parameters ``priority`` and ``timeout`` (µs)."""
    priority, timeout = parameters.get("priority"), parameters.get("timeout")
    for key, value in (("priority", priority), ("timeout", timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidInput(f"request parameter '{key}' must be a non-negative integer")
    return priority, timeout
