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
import queue
import threading
import time
from collections.abc import Callable, Sequence
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


class NullObserver:
    def pending(self, count: int) -> None:
        pass

    def batch_done(self, batch_rows: int, requests: int, timings: BatchTimings, ok: bool) -> None:
        pass


class _InstanceThread:
    """One long-lived thread per runtime instance, fed jobs through a queue.

    Cheaper per batch than ``run_in_executor`` plus a task: the job hands its result
    back to the event loop with one ``call_soon_threadsafe``.
    """

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


@dataclass(slots=True)
class _Finished:
    batch: Batch
    queue_s: tuple[float, ...]
    results: list[Outputs] | None
    timings: tuple[float, float, float]
    error: DeepserveError | None


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
        self._instances = list(instances)
        self._idle: list[_InstanceThread] = []
        self._observer = observer or NullObserver()
        self._clock = clock
        self._wake = asyncio.Event()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_task: asyncio.Task | None = None
        self._running = 0  # batches handed to instance threads, not yet finished
        # preserve_ordering: batches are numbered when started and settled in that order.
        self._started_seq = 0
        self._settled_seq = 0
        self._finished: dict[int, _Finished] = {}

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = [_InstanceThread(r, f"runtime-{i}") for i, r in enumerate(self._instances)]
        self._loop_task = self._loop.create_task(self._run(), name="batcher")

    async def aclose(self) -> None:
        """Stop taking requests, let queued and running ones finish, then stop."""
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        for worker in self._idle:
            await asyncio.to_thread(worker.stop)

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
        future: asyncio.Future[Outputs] = self._loop.create_future()
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
        future.add_done_callback(self._on_caller_done)
        if self._idle:
            # Dispatch from here when an instance is idle: no trip through the loop task.
            self._schedule_all()
        else:
            # Every instance is busy: the next batch completion schedules; only a deadline
            # needs the loop's timer now.
            self._observer.pending(len(self._scheduler))
            if request.deadline_s is not None:
                self._wake.set()
        return await future

    def _on_caller_done(self, future: asyncio.Future) -> None:
        if future.cancelled():
            self._wake.set()  # let the loop drop it from the queue now

    # -- the loop: timers (batching delay, queue timeouts) and closing ---------------

    async def _run(self) -> None:
        timer: asyncio.TimerHandle | None = None
        while True:
            self._wake.clear()
            if timer is not None:
                timer.cancel()
                timer = None
            plan = self._schedule_all(from_loop=True)
            if self._closing and not len(self._scheduler) and not self._running:
                return
            if plan.wake_at_s is not None:
                timer = self._loop.call_later(max(0.0, plan.wake_at_s - self._clock()), self._wake.set)
            await self._wake.wait()

    def _schedule_all(self, from_loop: bool = False) -> Plan:
        """Start as many batches as there are idle instances; settle dropped requests.

        Called from ``submit``, when a batch finishes, and by the loop; when called
        elsewhere and a later deadline matters, the loop is woken to set its timer.
        """
        while True:
            plan = self._scheduler.schedule(self._clock(), can_dispatch=bool(self._idle))
            # Expired requests get their one answer here; cancelled ones were answered by
            # their caller. Either failure is counted once, where the answer is sent.
            for request in plan.expired:
                _settle(request, error=Timeout("the request timed out in the queue before it could run"))
            if plan.batch is None:
                self._observer.pending(len(self._scheduler))
                if not from_loop and (plan.wake_at_s is not None or self._closing):
                    self._wake.set()
                return plan
            self._start(plan.batch, self._idle.pop())

    # -- running a batch -----------------------------------------------------------

    def _start(self, batch: Batch, worker: _InstanceThread) -> None:
        started = self._clock()
        queue_s = tuple(started - r.enqueued_s for r in batch.requests)
        seq = self._started_seq
        self._started_seq += 1
        self._running += 1
        loop = self._loop

        def job() -> None:  # on the instance's thread
            results, timings, error = None, (0.0, 0.0, 0.0), None
            try:
                results, timings = _run_batch(worker.runtime, batch)
            except DeepserveError as exc:
                error = exc
            except Exception as exc:  # a runtime bug must still answer every caller
                error = ModelError(f"the runtime failed: {exc!r}")
            loop.call_soon_threadsafe(self._finish, seq, worker, _Finished(batch, queue_s, results, timings, error))

        worker.submit(job)

    def _finish(self, seq: int, worker: _InstanceThread, done: _Finished) -> None:
        self._running -= 1
        self._idle.append(worker)
        if self.policy.preserve_ordering:
            self._finished[seq] = done
            while self._settled_seq in self._finished:
                self._answer(self._finished.pop(self._settled_seq))
                self._settled_seq += 1
        else:
            self._answer(done)
        self._schedule_all()

    def _answer(self, done: _Finished) -> None:
        batch = done.batch
        ok = done.results is not None
        self._observer.batch_done(batch.rows, len(batch.requests), BatchTimings(done.queue_s, *done.timings), ok)
        if ok:
            for request, outputs in zip(batch.requests, done.results, strict=True):
                _settle(request, outputs=outputs)
        else:
            for request in batch.requests:
                _settle(request, error=done.error)


def _settle(request: QueuedRequest, outputs: Outputs | None = None, error: Exception | None = None) -> None:
    future = request.ticket
    if future.done():  # cancelled by its caller meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outputs)


def _run_batch(instance: Runtime, batch: Batch) -> tuple[list[Outputs], tuple[float, float, float]]:
    """Worker thread: assemble rows, execute, split rows back (the timings of each phase)."""
    t0 = time.perf_counter()
    inputs = assemble(batch)
    t1 = time.perf_counter()
    outputs = instance.execute(inputs)
    t2 = time.perf_counter()
    results = split(batch, outputs)
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
