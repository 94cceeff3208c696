"""The batcher's driver with a fake runtime: rows in, rows out, one answer each."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from server.core.errors import ModelError, QueueFull, Timeout, Unavailable
from server.scheduling.base import Job
from server.scheduling.batcher import DynamicBatcher
from server.scheduling.policy import BatchPolicy, QueuePolicy


class FakeRuntime:
    """Doubles each row; can be held at a gate to let a queue build up."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail

    def load(self, model_path, options):
        raise NotImplementedError

    def execute(self, inputs):
        self.gate.wait(5)
        x = inputs["x"]
        self.batches.append(x.shape[0])
        if self.fail:
            raise RuntimeError("boom")
        return {"y": x * 2, "row_sum": x.sum(axis=1)}

    def unload(self):
        pass


def batching(**kw) -> BatchPolicy:
    base = dict(max_batch_size=16, batching=True)
    base.update(kw)
    return BatchPolicy(**base)


async def started(policy: BatchPolicy, *instances) -> DynamicBatcher:
    batcher = DynamicBatcher(policy, list(instances))
    batcher.start()
    return batcher


async def test_concurrent_requests_are_batched_and_split_back():
    runtime = FakeRuntime()
    batcher = await started(batching(max_queue_delay_us=20_000), runtime)
    rows = [np.full((n, 3), i, np.float32) for i, n in enumerate([1, 2, 3, 4])]
    results = await asyncio.gather(*(batcher.infer(Job({"x": x}, x.shape[0])) for x in rows))
    for x, out in zip(rows, results, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)
        np.testing.assert_array_equal(out["row_sum"], x.sum(axis=1))
    assert sum(runtime.batches) == 10 and len(runtime.batches) < 4
    await batcher.aclose()


async def test_runtime_failure_answers_every_request_with_one_error():
    batcher = await started(batching(max_queue_delay_us=10_000), FakeRuntime(fail=True))
    results = await asyncio.gather(
        *(batcher.infer(Job({"x": np.ones((1, 2), np.float32)}, 1)) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ModelError) for r in results)
    await batcher.aclose()


async def test_cancelled_request_never_reaches_the_runtime():
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = await started(batching(max_batch_size=1), runtime)
    first = asyncio.create_task(batcher.infer(Job({"x": np.ones((1, 2), np.float32)}, 1)))
    await asyncio.sleep(0.05)  # first is now running, held at the gate
    queued = asyncio.create_task(batcher.infer(Job({"x": np.full((1, 2), 7, np.float32)}, 1)))
    await asyncio.sleep(0.01)
    queued.cancel()
    await asyncio.sleep(0.01)
    runtime.gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await queued
    await batcher.aclose()
    assert runtime.batches == [1]


async def test_full_queue_is_refused_at_once_and_queued_ones_still_answered():
    runtime = FakeRuntime()
    runtime.gate.clear()
    policy = batching(max_batch_size=1, default_queue_policy=QueuePolicy(max_queue_size=2))
    batcher = await started(policy, runtime)
    x = {"x": np.ones((1, 2), np.float32)}
    running = asyncio.create_task(batcher.infer(Job(x, 1)))
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(batcher.infer(Job(x, 1))) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await batcher.infer(Job(x, 1))
    runtime.gate.set()
    await asyncio.gather(running, *waiting)
    await batcher.aclose()


async def test_request_times_out_in_the_queue():
    runtime = FakeRuntime()
    runtime.gate.clear()
    policy = batching(max_batch_size=1, default_queue_policy=QueuePolicy(default_timeout_us=20_000))
    batcher = await started(policy, runtime)
    x = {"x": np.ones((1, 2), np.float32)}
    running = asyncio.create_task(batcher.infer(Job(x, 1)))
    await asyncio.sleep(0.02)
    with pytest.raises(Timeout):
        await batcher.infer(Job(x, 1))
    runtime.gate.set()
    await running
    await batcher.aclose()


async def test_close_answers_queued_requests_and_refuses_new_ones():
    runtime = FakeRuntime()
    batcher = await started(batching(max_queue_delay_us=50_000), runtime)
    x = {"x": np.ones((2, 2), np.float32)}
    pending = [asyncio.create_task(batcher.infer(Job(x, 2))) for _ in range(3)]
    await asyncio.sleep(0)
    await batcher.aclose()
    assert all(t.done() and not t.exception() for t in pending)
    with pytest.raises(Unavailable):
        await batcher.infer(Job(x, 2))


async def test_two_instances_run_batches_in_parallel_and_keep_order_when_asked():
    slow, fast = FakeRuntime(), FakeRuntime()
    slow.gate.clear()
    # instances are taken from the end of the list: request 0 runs on `slow`
    batcher = await started(batching(max_batch_size=1, preserve_ordering=True), fast, slow)
    order: list[int] = []

    async def call(i: int):
        await batcher.infer(Job({"x": np.full((1, 1), i, np.float32)}, 1))
        order.append(i)

    tasks = [asyncio.create_task(call(i)) for i in range(2)]
    await asyncio.sleep(0.05)
    assert order == []  # the second finished first but waits for the first
    slow.gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1] and fast.batches == [1]
    await batcher.aclose()


async def test_a_request_past_its_deadline_is_answered_timeout_and_never_runs():
    now = [0.0]
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = DynamicBatcher(batching(max_batch_size=1), [runtime], clock=lambda: now[0])
    batcher.start()
    x = {"x": np.ones((1, 2), np.float32)}
    with pytest.raises(Timeout, match="deadline"):
        await batcher.infer(Job(x, 1, budget_s=0.0))  # nothing left: refused before queueing
    running = asyncio.create_task(batcher.infer(Job(x, 1)))  # holds the only instance
    waiting = asyncio.create_task(batcher.infer(Job({"x": np.full((1, 2), 7, np.float32)}, 1, budget_s=2.0)))
    await asyncio.sleep(0)
    now[0] = 3.0  # the injected clock passes the deadline while it waits
    runtime.gate.set()
    await running
    with pytest.raises(Timeout, match="deadline"):
        await waiting
    await batcher.aclose()
    assert runtime.batches == [1]  # only the first request ever reached the runtime


class TimedRuntime(FakeRuntime):
    """Records the thread each batch ran on, and says (through the batcher's timing) how long it took."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.threads = seconds, []

    def execute(self, inputs):
        self.threads.append(threading.current_thread().name)
        if self.seconds:
            threading.Event().wait(self.seconds)
        return super().execute(inputs)


async def test_a_runtime_faster_than_the_hand_off_runs_on_the_loop():
    fast = TimedRuntime(0.0)
    batcher = await started(batching(inline_below_s=0.05), fast)
    for i in range(4):
        out = await batcher.infer(Job({"x": np.full((1, 3), i, np.float32)}, 1))
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 2 * i, np.float32))
    # the first batch measures it on its thread; the rest run on the event loop's thread
    assert fast.threads[0].startswith("runtime-") and set(fast.threads[1:]) == {threading.current_thread().name}
    await batcher.aclose()


async def test_a_slow_runtime_or_inline_off_stays_on_its_thread():
    slow = TimedRuntime(0.02)
    batcher = await started(batching(inline_below_s=0.001), slow)
    for _ in range(3):
        await batcher.infer(Job({"x": np.ones((1, 3), np.float32)}, 1))
    assert all(name.startswith("runtime-") for name in slow.threads)
    await batcher.aclose()
    off = TimedRuntime(0.0)
    batcher = await started(batching(), off)  # inline_below_s 0: the default of the policy
    for _ in range(3):
        await batcher.infer(Job({"x": np.ones((1, 3), np.float32)}, 1))
    assert all(name.startswith("runtime-") for name in off.threads)
    await batcher.aclose()
