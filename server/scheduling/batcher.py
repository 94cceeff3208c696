"""The dynamic batcher: one per model version, between the frontends and the runtimes.

Each turn of its loop is the vLLM-style three steps::

    plan = scheduler.schedule(now)       # pure decision (server.scheduling.queue)
    outputs = instance.execute(batch)    # in a worker thread, off the event loop
    resolve(plan, outputs)               # split rows back to each caller's future

Callers hand in one request and await one result (``submit``). A request is either
answered with its outputs or with exactly one error: queue full, timed out, model
unloading, or the runtime's failure. A caller that goes away (its task is cancelled)
cancels its future, and the scheduler drops it before it reaches a runtime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.core.errors import DeepserveError, InvalidInput, ModelError, Timeout, Unavailable
from server.runtimes.base import Runtime
from server.scheduling.policy import BatchPolicy
from server.scheduling.queue import Batch, BatchScheduler, Plan, QueuedRequest, batch_key

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchTimings:
    queue_s: tuple[float, ...]  # per request, enqueue -> batch start
    input_s: float  # concatenating rows
    infer_s: float  # the runtime's execute
    output_s: float  # splitting rows back


class BatchObserver(Protocol):
    """Where the batcher reports what metrics and statistics need."""

    def pending(self, count: int) -> None: ...

    def batch_done(self, batch_rows: int, requests: int, timings: BatchTimings, ok: bool) -> None: ...

    def dropped(self, reason: str) -> None: ...


class NullObserver:
    def pending(self, count: int) -> None:
        pass

    def batch_done(self, batch_rows: int, requests: int, timings: BatchTimings, ok: bool) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass


class DynamicBatcher:
    def __init__(
        self,
        policy: BatchPolicy,
        instances: Sequence[Runtime],
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not instances:
            raise ValueError("a batcher needs at least one runtime instance")
        self.policy = policy
        self._scheduler = BatchScheduler(policy)
        self._idle: list[Runtime] = list(instances)
        self._observer = observer or NullObserver()
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=len(instances), thread_name_prefix="runtime")
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task] = set()
        self._closing = False
        self._loop_task: asyncio.Task | None = None
        self._last_done: asyncio.Future | None = None  # preserve_ordering chain

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def aclose(self) -> None:
        """Stop taking requests, let queued and running ones finish, then stop."""
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    # -- the caller's side ---------------------------------------------------------

    async def submit(
        self, inputs: Outputs, rows: int, priority: int | None = None, timeout_us: int | None = None
    ) -> Outputs:
        if self._closing or self._loop_task is None:
            raise Unavailable("the model is unloading; retry when it is ready again", retry_after_s=1.0)
        policy = self.policy
        level = policy.level_for(priority)
        if not 1 <= level <= policy.priority_levels:
            raise InvalidInput(f"priority {priority} is out of range: this model has levels 1..{policy.priority_levels}")
        queue_policy = policy.queue_policy(level)
        timeout = queue_policy.default_timeout_us
        if timeout_us and queue_policy.allow_timeout_override:
            timeout = min(timeout_us, timeout) if timeout else timeout_us
        now = self._clock()
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        request = QueuedRequest(
            inputs=inputs,
            rows=rows,
            level=level,
            enqueued_s=now,
            deadline_s=now + timeout / 1e6 if timeout else None,
            action=queue_policy.timeout_action,
            ticket=future,
            key=batch_key(inputs) if policy.batching else (),
        )
        self._scheduler.add(request)  # raises QueueFull
        self._observer.pending(len(self._scheduler))
        future.add_done_callback(self._on_caller_done)
        self._wake.set()
        return await future

    def _on_caller_done(self, future: asyncio.Future) -> None:
        if future.cancelled():
            self._wake.set()  # let the loop drop it from the queue now

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        while True:
            self._wake.clear()
            if timer is not None:
                timer.cancel()
                timer = None
            plan = self._schedule_all()
            if self._closing and not len(self._scheduler) and not self._running:
                return
            if plan.wake_at_s is not None:
                timer = loop.call_later(max(0.0, plan.wake_at_s - self._clock()), self._wake.set)
            await self._wake.wait()

    def _schedule_all(self) -> Plan:
        """Start as many batches as there are idle instances; settle dropped requests."""
        while True:
            plan = self._scheduler.schedule(self._clock(), can_dispatch=bool(self._idle))
            for request in plan.expired:
                _settle(request, error=Timeout("the request timed out in the queue before it could run"))
                self._observer.dropped("REJECTED")
            for _ in plan.cancelled:
                self._observer.dropped("CANCELED")
            if plan.batch is None:
                self._observer.pending(len(self._scheduler))
                return plan
            self._start(plan.batch, self._idle.pop())

    def _start(self, batch: Batch, instance: Runtime) -> None:
        previous, done = self._last_done, asyncio.get_running_loop().create_future()
        if self.policy.preserve_ordering:
            self._last_done = done
        task = asyncio.get_running_loop().create_task(self._execute(batch, instance, previous, done))
        self._running.add(task)
        task.add_done_callback(self._batch_task_done)

    def _batch_task_done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._wake.set()  # a closing batcher waits for its last batch to be gone

    async def _execute(
        self, batch: Batch, instance: Runtime, previous: asyncio.Future | None, done: asyncio.Future
    ) -> None:
        started = self._clock()
        queue_s = tuple(started - r.enqueued_s for r in batch.requests)
        loop = asyncio.get_running_loop()
        try:
            results, timings = await loop.run_in_executor(self._executor, _run_batch, instance, batch, self.policy)
        except DeepserveError as exc:
            results, error = None, exc
        except Exception as exc:  # a runtime bug must still answer every caller
            results, error = None, ModelError(f"the runtime failed: {exc!r}")
        finally:
            self._idle.append(instance)
            self._wake.set()
        if previous is not None and self.policy.preserve_ordering:
            await asyncio.shield(previous)
        if results is None:
            self._observer.batch_done(batch.rows, len(batch.requests), BatchTimings(queue_s, 0.0, 0.0, 0.0), False)
            for request in batch.requests:
                _settle(request, error=error)
        else:
            self._observer.batch_done(
                batch.rows, len(batch.requests), BatchTimings(queue_s, *timings), True
            )
            for request, outputs in zip(batch.requests, results, strict=True):
                _settle(request, outputs=outputs)
        done.set_result(None)


def _settle(request: QueuedRequest, outputs: Outputs | None = None, error: Exception | None = None) -> None:
    future = request.ticket
    if future.done():  # cancelled by its caller meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outputs)


def _run_batch(instance: Runtime, batch: Batch, policy: BatchPolicy) -> tuple[list[Outputs], tuple[float, float, float]]:
    """Worker thread: assemble rows, execute, split rows back (the timings of each phase)."""
    t0 = time.perf_counter()
    inputs = assemble(batch)
    t1 = time.perf_counter()
    outputs = instance.execute(inputs)
    t2 = time.perf_counter()
    results = split(batch, outputs) if policy.batching else [outputs]
    t3 = time.perf_counter()
    return results, (t1 - t0, t2 - t1, t3 - t2)


def assemble(batch: Batch) -> Outputs:
    """Concatenate the requests' rows, input by input (a lone request passes through)."""
    requests = batch.requests
    if len(requests) == 1:
        return requests[0].inputs
    return {name: np.concatenate([r.inputs[name] for r in requests]) for name in requests[0].inputs}


def split(batch: Batch, outputs: Outputs) -> list[Outputs]:
    """Give each request its own rows of every output."""
    if len(batch.requests) == 1:
        return [outputs]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != batch.rows:
            raise ModelError(f"output '{name}' has shape {array.shape}; expected {batch.rows} rows, one per input row")
    bounds = np.cumsum([r.rows for r in batch.requests])[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(batch.requests))]
