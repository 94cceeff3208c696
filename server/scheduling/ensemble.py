"""The ensemble executor: Triton's ``ensemble_scheduling``, run as a DAG.

A step starts as soon as every ensemble tensor it reads exists, so independent steps run
at the same time (fan-out) and a step may read tensors made by several others (fan-in)::

    IMAGE ──> preprocess ──> PIXELS ──> digits ──> LOGITS ──> topk ──> LABELS, SCORES
      └─────> image_size ──> SIZE

Each step calls the step model through its own scheduler (``resolve`` returns it at call
time), so a network step is batched with other ensembles' and direct callers' requests,
and a reloaded step is picked up by the next request. A failing step fails the request
with the step's model name and its message, keeping the error's kind (bad input stays a
400, a fault a 500); the other running steps are cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from server.core.errors import DeepserveError, ModelError, Unavailable
from server.scheduling.base import Job, Outputs


@dataclass(frozen=True, slots=True)
class Step:
    model: str
    version: str  # "" = the latest ready version (Triton's model_version -1)
    inputs: tuple[tuple[str, str], ...]  # (step model input, ensemble tensor)
    outputs: tuple[tuple[str, str], ...]  # (step model output, ensemble tensor)


@dataclass(frozen=True, slots=True)
class EnsemblePlan:
    inputs: tuple[str, ...]  # the ensemble's own inputs
    outputs: tuple[str, ...]  # the ensemble's own outputs
    steps: tuple[Step, ...]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(step.model for step in self.steps))


class StepTarget(Protocol):
    """A step model as the ensemble calls it: validated, scheduled, counted in its own statistics."""

    async def run(self, inputs: Outputs, deadline_s: float | None = None) -> Outputs: ...


class EnsembleObserver(Protocol):
    def step_done(self, step: str, duration_s: float) -> None: ...

    def ensemble_done(self, rows: int, steps_s: float, ok: bool) -> None: ...


Resolve = Callable[[str, str], StepTarget]  # (model, version) -> target; raises when not ready


def check_plan(plan: EnsemblePlan) -> None:
    """Every tensor read is produced exactly once, every output is produced, and there is
    no cycle (each step can run once its inputs exist). Raises ValueError with the reason."""
    producers: dict[str, str] = {name: "the ensemble's inputs" for name in plan.inputs}
    for step in plan.steps:
        for _, tensor in step.outputs:
            if tensor in producers:
                raise ValueError(f"tensor '{tensor}' is produced twice ({producers[tensor]} and step '{step.model}')")
            producers[tensor] = f"step '{step.model}'"
    for step in plan.steps:
        unknown = [t for _, t in step.inputs if t not in producers]
        if unknown:
            raise ValueError(f"step '{step.model}' reads {unknown}, which no step and no ensemble input produces")
    missing = [t for t in plan.outputs if t not in producers]
    if missing:
        raise ValueError(f"ensemble output(s) {missing} are produced by no step")
    available, pending = set(plan.inputs), list(plan.steps)
    while pending:
        ready = [s for s in pending if all(t in available for _, t in s.inputs)]
        if not ready:
            raise ValueError(f"steps {[s.model for s in pending]} form a cycle: none can ever start")
        for step in ready:
            pending.remove(step)
            available.update(t for _, t in step.outputs)


class EnsembleScheduler:
    def __init__(self, name: str, plan: EnsemblePlan, resolve: Resolve, observer: EnsembleObserver) -> None:
        self.name = name
        self.plan = plan
        self._resolve = resolve
        self._observer = observer
        self._closing = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._closing = False

    async def aclose(self) -> None:
        """Refuse new requests; wait for the running ones (their steps finish in their own schedulers)."""
        self._closing = True
        await self._idle.wait()

    async def stream(self, job: Job) -> AsyncIterator[Outputs]:
        yield await self.infer(job)

    async def infer(self, job: Job) -> Outputs:
        if self._closing:
            raise Unavailable(f"ensemble '{self.name}' is unloading; retry when it is ready again", retry_after_s=1.0)
        self._inflight += 1
        self._idle.clear()
        started, ok = time.perf_counter(), False
        try:
            deadline = None if job.budget_s is None else time.monotonic() + job.budget_s  # the steps keep it
            tensors = await self._run(dict(job.inputs), deadline)
            ok = True
            return {name: tensors[name] for name in self.plan.outputs}
        finally:
            self._observer.ensemble_done(job.rows, time.perf_counter() - started, ok)
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _run(self, tensors: Outputs, deadline_s: float | None) -> Outputs:
        # Optional ensemble inputs the request left out: steps reading them run without them.
        absent = frozenset(name for name in self.plan.inputs if name not in tensors)
        pending = list(self.plan.steps)
        running: dict[asyncio.Task, Step] = {}
        try:
            while pending or running:
                ready = [s for s in pending if all(t in tensors or t in absent for _, t in s.inputs)]
                for step in ready:
                    pending.remove(step)
                if len(ready) == 1 and not running:  # a chain: no task needed
                    tensors.update(await self._step(ready[0], tensors, deadline_s))
                    continue
                for step in ready:
                    running[asyncio.ensure_future(self._step(step, tensors, deadline_s))] = step
                if not running:  # unreachable for a checked plan
                    raise ModelError(f"ensemble '{self.name}': steps {[s.model for s in pending]} never got their inputs")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del running[task]
                    tensors.update(task.result())
        finally:
            for task in running:
                task.cancel()
        return tensors

    async def _step(self, step: Step, tensors: Outputs, deadline_s: float | None) -> Outputs:
        """One step: its inputs renamed from ensemble tensors, its outputs renamed back."""
        started = time.perf_counter()
        try:
            target = self._resolve(step.model, step.version)
            outputs = await target.run({m: tensors[t] for m, t in step.inputs if t in tensors}, deadline_s)
        except DeepserveError as exc:
            raise exc.with_prefix(f"ensemble '{self.name}' step '{step.model}': ") from None
        except Exception as exc:  # a bug below still answers with the step's name
            raise ModelError(f"ensemble '{self.name}' step '{step.model}' failed: {exc!r}") from None
        finally:
            self._observer.step_done(step.model, time.perf_counter() - started)
        missing = [name for name, _ in step.outputs if name not in outputs]
        if missing:
            raise ModelError(f"ensemble '{self.name}' step '{step.model}' did not return output(s) {missing}")
        return {tensor: outputs[model_name] for model_name, tensor in step.outputs}
