"""The dynamic batcher: one per model version, between the frontends and the runtimes.

Each turn of its loop is the vLLM-style three steps::

    plan = scheduler.schedule(now)       # pure decision (server.scheduling.queue)
    outputs = instance.execute(batch)    # in a worker thread, off the event loop
    resolve(plan, outputs)               # split rows back to each caller's future

Callers hand in one job and await one result (``infer``), or iterate its responses
(``stream``). A job is either answered with its outputs or with exactly one error: queue
full, timed out, model unloading, or the runtime's failure. A caller that goes away (its
task is cancelled) cancels its ticket, and the scheduler drops it before it reaches a
runtime.

A batch that fails with ``InvalidInput`` (a Python model that cannot decode one image of
the batch, say) is run again request by request, so only the bad request fails.

Fault isolation: a runtime that raises, or answers outputs of the wrong datatype or shape,
fails only the requests of that batch (``ModelError``: 500 / INTERNAL with the reason). A
batch still running after the policy's ``execution_timeout_s`` is answered with that error
at once; its instance is abandoned (a thread cannot be killed: it is unloaded if it ever
returns) and replaced with a freshly loaded one, as is an instance whose batches failed
``reload_after_failures`` times in a row. Other instances keep serving meanwhile.

Decoupled models (``model_transaction_policy { decoupled: true }``) run each request alone
through the runtime's ``execute_stream``; every response it yields reaches the caller as
it is produced. Closing the stream early sets its ticket cancelled: the instance thread
stops pulling from the producer after its current response and closes it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.core.datatypes import numpy_dtype
from server.core.errors import DeadlineExceeded, DeepserveError, InvalidInput, ModelError, Timeout, Unavailable
from server.core.types import TensorSpec
from server.core.validation import shape_matches
from server.runtimes.base import Runtime, StreamingRuntime
from server.scheduling.base import Job, Outputs
from server.scheduling.policy import BatchPolicy
from server.scheduling.queue import Batch, BatchScheduler, Plan, QueuedRequest, batch_key

Outcome = Outputs | DeepserveError  # one request's answer
log = logging.getLogger(__name__)


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

    def batch_closed(self, reason: str) -> None: ...

    def response_sent(self, index: int, compute_s: float) -> None: ...

    def stream_cancelled(self, index: int) -> None: ...


class NullObserver:
    def pending(self, count: int) -> None:
        pass

    def batch_done(self, batch_rows: int, requests: int, timings: BatchTimings, ok: bool) -> None:
        pass

    def batch_closed(self, reason: str) -> None:
        pass

    def response_sent(self, index: int, compute_s: float) -> None:
        pass

    def stream_cancelled(self, index: int) -> None:
        pass


_END = object()  # a stream's last item
INLINE_UNKNOWN = float("inf")  # an instance's execute time before it has run a batch


class _Channel:
    """The ticket of a streamed request: responses in, the caller's iterator out.

    ``closed`` is set on the loop and read by the instance thread (a plain bool under
    the GIL): once set, the producer is stopped after its current response.
    """

    def __init__(self) -> None:
        self.items: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def cancelled(self) -> bool:
        return self.closed


class _InstanceThread:
    """One long-lived thread per runtime instance, fed jobs through a queue.

    Cheaper per batch than ``run_in_executor`` plus a task: the job hands its result
    back to the event loop with one ``call_soon_threadsafe``.
    """

    def __init__(self, runtime: Runtime, name: str, index: int = 0) -> None:
        self.runtime = runtime
        self.index = index  # which of the model's instances (its device) this thread serves
        self.execute_s = INLINE_UNKNOWN  # the runtime's recent execute time (moving average)
        self.failures = 0  # batches failed in a row by a runtime fault
        self.abandoned = False  # hung past the execution timeout: never handed work again
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
    outcomes: list[Outcome]  # one per request, in the batch's order
    timings: tuple[float, float, float]


class DynamicBatcher:
    def __init__(
        self,
        policy: BatchPolicy,
        instances: Sequence[Runtime],
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload: Callable[[int], Runtime] | None = None,
        outputs: Sequence[TensorSpec] = (),
    ) -> None:
        """``instances`` is kept (not copied): a replaced instance is swapped in that list,
        so its owner unloads what is current. ``reload(index)`` loads a fresh instance for
        that slot (blocking); ``outputs`` are checked on every batch's answer."""
        if not instances:
            raise ValueError("a batcher needs at least one runtime instance")
        self.policy = policy
        self._scheduler = BatchScheduler(policy)
        self._instances = instances
        self._reload = reload
        batched, specs = policy.max_batch_size > 0, tuple(outputs)
        # what an instance thread runs for one batch: the decoupled stream, or rows in, rows out
        self._execute = self._run_stream if policy.decoupled else functools.partial(_run_batch, specs=specs, batched=batched)
        self._reloading: set[asyncio.Task] = set()
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
        self._idle = [_InstanceThread(r, f"runtime-{i}", i) for i, r in enumerate(self._instances)]
        self._loop_task = self._loop.create_task(self._run(), name="batcher")

    async def aclose(self) -> None:
        """Stop taking requests, let queued and running ones finish, then stop."""
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        for task in list(self._reloading):
            await asyncio.gather(task, return_exceptions=True)
        for worker in self._idle:
            await asyncio.to_thread(worker.stop)

    # -- the caller's side ---------------------------------------------------------

    async def infer(self, job: Job) -> Outputs:
        if self.policy.decoupled:
            raise InvalidInput("this model is decoupled (it may answer several responses); stream its responses")
        self._check_open()
        future: asyncio.Future[Outputs] = self._loop.create_future()
        self._enqueue(job, future)
        future.add_done_callback(self._on_caller_done)
        return await future

    async def stream(self, job: Job) -> AsyncIterator[Outputs]:
        if not self.policy.decoupled:
            yield await self.infer(job)
            return
        self._check_open()
        channel = _Channel()
        self._enqueue(job, channel)
        try:
            while (item := await channel.items.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not channel.closed:  # the caller left early: stop the producer, drop it if queued
                channel.closed = True
                self._wake.set()

    def _check_open(self) -> None:
        if self._closing or self._loop_task is None:
            raise Unavailable("the model is unloading; retry when it is ready again", retry_after_s=1.0)

    def _enqueue(self, job: Job, ticket: asyncio.Future | _Channel) -> None:
        policy = self.policy
        level = policy.level_for(job.priority)
        if not 1 <= level <= policy.priority_levels:
            raise InvalidInput(f"priority {job.priority} is out of range: this model has levels 1..{policy.priority_levels}")
        queue_policy = policy.queue_policy(level)
        timeout = queue_policy.default_timeout_us
        if job.timeout_us and queue_policy.allow_timeout_override:
            timeout = min(job.timeout_us, timeout) if timeout else job.timeout_us
        now = self._clock()
        if job.budget_s is not None and job.budget_s <= 0:
            raise DeadlineExceeded("the request's deadline passed before it could be queued")
        request = QueuedRequest(
            inputs=job.inputs,
            rows=job.rows,
            level=level,
            enqueued_s=now,
            deadline_s=now + timeout / 1e6 if timeout else None,
            action=queue_policy.timeout_action,
            ticket=ticket,
            key=batch_key(job.inputs) if policy.batching else (),
            client_deadline_s=None if job.budget_s is None else now + job.budget_s,
        )
        self._scheduler.add(request)  # raises QueueFull
        if self._idle:
            # Dispatch from here when an instance is idle: no trip through the loop task.
            self._schedule_all()
        else:
            # Every instance is busy: the next batch completion schedules; only a deadline
            # needs the loop's timer now.
            self._observer.pending(len(self._scheduler))
            if request.deadline_s is not None or request.client_deadline_s is not None:
                self._wake.set()

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
                _expire(request)
            if plan.batch is None:
                self._observer.pending(len(self._scheduler))
                if not from_loop and (plan.wake_at_s is not None or self._closing):
                    self._wake.set()
                return plan
            self._observer.batch_closed(plan.batch.reason)
            self._start(plan.batch, self._idle.pop())

    # -- running a batch -----------------------------------------------------------

    def _start(self, batch: Batch, worker: _InstanceThread) -> None:
        started = self._clock()
        queue_s = tuple(started - r.enqueued_s for r in batch.requests)
        seq = self._started_seq
        self._started_seq += 1
        self._running += 1
        loop = self._loop
        run = self._execute
        timeout = self.policy.execution_timeout_s
        timer = loop.call_later(timeout, self._hung, seq, worker, batch, queue_s) if timeout and not self.policy.decoupled else None

        if worker.execute_s < self.policy.inline_below_s:
            # Inline: the runtime answers faster than a hand-off to its thread and back
            # costs, so the loop runs it (blocked no longer than that hand-off would take).
            outcomes, timings = run(worker.runtime, batch)
            worker.execute_s = _moving(worker.execute_s, timings[1])
            loop.call_soon(self._finish, seq, worker, _Finished(batch, queue_s, outcomes, timings), timer)
            return

        def job() -> None:  # on the instance's thread
            outcomes, timings = run(worker.runtime, batch)
            worker.execute_s = _moving(worker.execute_s, timings[1])
            loop.call_soon_threadsafe(self._finish, seq, worker, _Finished(batch, queue_s, outcomes, timings), timer)

        worker.submit(job)

    def _hung(self, seq: int, worker: _InstanceThread, batch: Batch, queue_s: tuple[float, ...]) -> None:
        """The batch outlived the execution timeout: answer it now, replace the instance."""
        worker.abandoned = True
        ms = self.policy.execution_timeout_s * 1000
        error = ModelError(f"the model did not finish within its execution timeout ({ms:g} ms); "
                           "its instance is being reloaded")
        log.error("an instance of a model hung past %g ms; replacing it", ms)
        self._settle_batch(seq, _Finished(batch, queue_s, [error] * len(batch.requests), (0.0, 0.0, 0.0)))
        self._replace(worker)
        self._schedule_all()

    def _finish(self, seq: int, worker: _InstanceThread, done: _Finished, timer: asyncio.TimerHandle | None = None) -> None:
        if worker.abandoned:  # a hung batch came back after it was answered: drop it, free the instance
            self._loop.run_in_executor(None, _retire, worker)
            return
        if timer is not None:
            timer.cancel()
        faulted = any(isinstance(o, ModelError) for o in done.outcomes)
        worker.failures = worker.failures + 1 if faulted else 0
        if worker.failures >= self.policy.reload_after_failures and self._reload is not None:
            log.error("an instance failed %d batches in a row; replacing it", worker.failures)
            worker.abandoned = True
            self._loop.run_in_executor(None, _retire, worker)
            self._replace(worker)
        else:
            self._idle.append(worker)
        self._settle_batch(seq, done)
        self._schedule_all()

    def _replace(self, worker: _InstanceThread) -> None:
        """Load a fresh instance for the worker's slot (in a thread), then put it to work."""
        if self._reload is None:
            log.error("no way to reload the instance: the model runs on %d fewer instance(s)", 1)
            return
        task = self._loop.create_task(self._reload_instance(worker.index))
        self._reloading.add(task)
        task.add_done_callback(self._reloading.discard)

    async def _reload_instance(self, index: int) -> None:
        try:
            runtime = await asyncio.to_thread(self._reload, index)
        except Exception as exc:
            log.error("reloading instance %d failed: %r; the model runs without it", index, exc)
            return
        self._instances[index] = runtime
        if self._closing:
            await asyncio.to_thread(runtime.unload)
            return
        self._idle.append(_InstanceThread(runtime, f"runtime-{index}", index))
        self._schedule_all()

    def _settle_batch(self, seq: int, done: _Finished) -> None:
        self._running -= 1
        if self.policy.preserve_ordering:
            self._finished[seq] = done
            while self._settled_seq in self._finished:
                self._answer(self._finished.pop(self._settled_seq))
                self._settled_seq += 1
        else:
            self._answer(done)

    def _answer(self, done: _Finished) -> None:
        batch = done.batch
        ok = not any(isinstance(o, DeepserveError) for o in done.outcomes)
        self._observer.batch_done(batch.rows, len(batch.requests), BatchTimings(done.queue_s, *done.timings), ok)
        for request, outcome in zip(batch.requests, done.outcomes, strict=True):
            if isinstance(outcome, DeepserveError):
                _settle(request, error=outcome)
            else:
                _settle(request, outputs=outcome)

    # -- decoupled: one request, many responses ---------------------------------------

    def _run_stream(self, runtime: Runtime, batch: Batch) -> tuple[list[Outcome], tuple[float, float, float]]:
        """Instance thread: pull responses from the runtime's producer, hand each to the
        caller's channel, stop early when the caller has gone."""
        (request,) = batch.requests
        channel: _Channel = request.ticket
        loop, observer = self._loop, self._observer
        started = last = time.perf_counter()
        index, outcome = 0, {}
        producer: Iterator[Outputs] | None = None
        try:
            if not isinstance(runtime, StreamingRuntime):
                raise ModelError("this runtime cannot produce several responses per request")
            producer = iter(runtime.execute_stream(request.inputs))
            for outputs in producer:
                if channel.closed:
                    loop.call_soon_threadsafe(observer.stream_cancelled, index)
                    break
                now = time.perf_counter()
                loop.call_soon_threadsafe(_deliver, channel, outputs, observer, index, now - last)
                index, last = index + 1, now
        except DeepserveError as exc:
            outcome = exc
        except Exception as exc:  # a model's bug still ends the stream with one error
            outcome = ModelError(f"the model failed: {exc!r}")
        finally:
            if producer is not None and hasattr(producer, "close"):
                producer.close()  # runs the producer's own cleanup (finally blocks)
        loop.call_soon_threadsafe(channel.items.put_nowait, outcome if isinstance(outcome, DeepserveError) else _END)
        return [outcome], (0.0, time.perf_counter() - started, 0.0)


def _deliver(channel: _Channel, outputs: Outputs, observer: BatchObserver, index: int, compute_s: float) -> None:
    if not channel.closed:
        channel.items.put_nowait(outputs)
        observer.response_sent(index, compute_s)


def _expire(request: QueuedRequest) -> None:
    """A request that timed out in the queue: its one answer (a stream's only item)."""
    if request.client_deadline_s is not None and request.client_deadline_s <= (request.deadline_s or float("inf")):
        error = DeadlineExceeded("the request's deadline passed while it waited in the queue; it was not run")
    else:
        error = Timeout("the request timed out in the queue before it could run")
    if isinstance(request.ticket, _Channel):
        request.ticket.items.put_nowait(error)
    else:
        _settle(request, error=error)


def _settle(request: QueuedRequest, outputs: Outputs | None = None, error: Exception | None = None) -> None:
    ticket = request.ticket
    if isinstance(ticket, _Channel):  # a stream ends itself (_run_stream) once it has run
        return
    if ticket.done():  # cancelled by its caller meanwhile
        return
    if error is not None:
        ticket.set_exception(error)
    else:
        ticket.set_result(outputs)


def _retire(worker: _InstanceThread) -> None:
    """Stop an abandoned instance's thread and free its runtime (in a worker thread)."""
    worker.stop()
    try:
        worker.runtime.unload()
    except Exception as exc:
        log.warning("unloading a replaced instance failed: %r", exc)


def check_outputs(outputs: Outputs, specs: Sequence[TensorSpec], rows: int, batched: bool) -> None:
    """The runtime's answer against the model's declared outputs: present, of the declared
    datatype, and of the declared shape (batch rows first when the model batches)."""
    for spec in specs:
        array = outputs.get(spec.name)
        if array is None:
            raise ModelError(f"the model returned no output '{spec.name}'")
        want = np.dtype(object) if spec.datatype == "BYTES" else numpy_dtype(spec.datatype)
        if array.dtype != want and not (spec.datatype == "BYTES" and array.dtype.kind in "SU"):
            raise ModelError(f"output '{spec.name}' is {array.dtype}, but the model declares {spec.datatype}")
        shape = (rows, *spec.shape[1:]) if batched else spec.shape
        if not shape_matches(array.shape, shape):
            raise ModelError(f"output '{spec.name}' has shape {list(array.shape)}, but the model declares {list(shape)}")


def _run_batch(
    instance: Runtime, batch: Batch, specs: Sequence[TensorSpec] = (), batched: bool = True
) -> tuple[list[Outcome], tuple[float, float, float]]:
    """Worker thread: assemble rows, execute, split rows back (the timings of each phase).

    Bad input in one request must not fail the others: a batch of several requests that
    fails with ``InvalidInput`` runs again one request at a time.
    """
    t0 = time.perf_counter()
    try:
        inputs = assemble(batch)
        t1 = time.perf_counter()
        outputs = instance.execute(inputs)
        t2 = time.perf_counter()
        if specs:
            check_outputs(outputs, specs, batch.rows, batched)
        results: list[Outcome] = list(split(batch, outputs))
        return results, (t1 - t0, t2 - t1, time.perf_counter() - t2)
    except InvalidInput as exc:
        if len(batch.requests) == 1:
            return [exc], (0.0, time.perf_counter() - t0, 0.0)
        outcomes = [_run_batch(instance, Batch((r,), r.rows), specs, batched)[0][0] for r in batch.requests]
        return outcomes, (0.0, time.perf_counter() - t0, 0.0)
    except DeepserveError as exc:
        return [exc] * len(batch.requests), (0.0, time.perf_counter() - t0, 0.0)
    except Exception as exc:  # a runtime bug must still answer every caller
        return [ModelError(f"the runtime failed: {exc!r}")] * len(batch.requests), (0.0, time.perf_counter() - t0, 0.0)


def _moving(average: float, sample: float) -> float:
    """An execute-time average that follows the last ~8 batches (the first batch sets it)."""
    return sample if average == INLINE_UNKNOWN else average + (sample - average) / 8


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
