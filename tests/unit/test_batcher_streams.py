"""The batcher's decoupled path (one request, many responses) and bad-input isolation in batches."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from server.core.errors import InvalidInput, ModelError
from server.scheduling.base import Job
from server.scheduling.batcher import DynamicBatcher
from server.scheduling.policy import BatchPolicy

DECOUPLED = BatchPolicy(decoupled=True)


class StreamingRuntime:
    """Yields ``n`` responses (input ``n``), ``{"i": [k]}`` for k = 0..n-1.

    ``gates[k]`` holds response k until set (all open by default); ``fail_at`` raises
    ``error`` instead of producing that response. Records, per call, how many responses
    were produced and whether the producer's ``finally`` ran.
    """

    def __init__(self, gated: int = 0, fail_at: int | None = None, error: Exception | None = None) -> None:
        self.gates = [threading.Event() for _ in range(gated)]
        self.fail_at = fail_at
        self.error = error
        self.produced: list[int] = []
        self.finished = threading.Event()

    def load(self, model_path, options):
        raise NotImplementedError

    def execute(self, inputs):
        raise AssertionError("a decoupled model is never run through execute()")

    def unload(self):
        pass

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()

    def execute_stream(self, inputs):
        call = len(self.produced)
        self.produced.append(0)
        try:
            for k in range(int(inputs["n"][0])):
                if k < len(self.gates):
                    assert self.gates[k].wait(5), "the test never opened this gate"
                if k == self.fail_at:
                    raise self.error
                self.produced[call] += 1
                yield {"i": np.array([k])}
        finally:
            self.finished.set()


async def started(policy: BatchPolicy, runtime) -> DynamicBatcher:
    batcher = DynamicBatcher(policy, [runtime])
    batcher.start()
    return batcher


def ask(n: int) -> Job:
    return Job({"n": np.array([n])}, rows=1)


async def test_responses_arrive_in_order():
    batcher = await started(DECOUPLED, StreamingRuntime())
    got = [int(out["i"][0]) async for out in batcher.stream(ask(5))]
    assert got == [0, 1, 2, 3, 4]
    await batcher.aclose()


async def test_responses_reach_the_caller_as_they_are_produced():
    runtime = StreamingRuntime(gated=3)
    batcher = await started(DECOUPLED, runtime)
    stream = batcher.stream(ask(3))
    runtime.gates[0].set()
    assert int((await asyncio.wait_for(anext(stream), 5))["i"][0]) == 0
    assert runtime.produced == [1]  # the second response is still held at its gate
    runtime.open_all()
    assert [int(out["i"][0]) async for out in stream] == [1, 2]
    await batcher.aclose()


async def test_a_request_with_no_responses_ends_its_stream_cleanly():
    runtime = StreamingRuntime()
    batcher = await started(DECOUPLED, runtime)
    assert [out async for out in batcher.stream(ask(0))] == []
    assert runtime.finished.is_set()
    await batcher.aclose()


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        (RuntimeError("disk on fire"), ModelError, r"the model failed: RuntimeError\('disk on fire'\)"),
        (InvalidInput("bad token"), InvalidInput, r"^bad token$"),
    ],
    ids=["plain-exception", "invalid-input"],
)
async def test_a_producer_failing_mid_stream_delivers_earlier_responses_then_the_error(error, expected, message):
    runtime = StreamingRuntime(fail_at=2, error=error)
    batcher = await started(DECOUPLED, runtime)
    got = []
    with pytest.raises(expected, match=message):
        async for out in batcher.stream(ask(5)):
            got.append(int(out["i"][0]))
    assert got == [0, 1]
    await batcher.aclose()


async def test_closing_a_stream_early_stops_the_producer_and_frees_the_instance():
    runtime = StreamingRuntime(gated=10)
    batcher = await started(DECOUPLED, runtime)
    stream = batcher.stream(ask(10))
    runtime.gates[0].set()
    runtime.gates[1].set()
    assert [int((await asyncio.wait_for(anext(stream), 5))["i"][0]) for _ in range(2)] == [0, 1]
    await stream.aclose()
    runtime.open_all()  # the producer notices the closed stream at its next response
    assert await asyncio.to_thread(runtime.finished.wait, 5)
    assert 2 <= runtime.produced[0] < 10
    # One instance: the next stream can only run once the first released it.
    got = [int(out["i"][0]) async for out in batcher.stream(ask(2))]
    assert got == [0, 1] and runtime.produced[1] == 2
    await batcher.aclose()


async def test_infer_on_a_decoupled_model_is_refused():
    batcher = await started(DECOUPLED, StreamingRuntime())
    with pytest.raises(InvalidInput, match="decoupled"):
        await batcher.infer(ask(1))
    await batcher.aclose()


class Doubler:
    """Doubles each row; refuses (InvalidInput) any batch holding a negative value."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def load(self, model_path, options):
        raise NotImplementedError

    def execute(self, inputs):
        x = inputs["x"]
        self.batches.append(x.shape[0])
        if (x < 0).any():
            raise InvalidInput("negative values are not allowed")
        return {"y": x * 2}

    def unload(self):
        pass


async def test_stream_on_a_unary_model_yields_exactly_its_one_result():
    batcher = await started(BatchPolicy(), Doubler())
    results = [out async for out in batcher.stream(Job({"x": np.array([[3.0]])}, 1))]
    assert len(results) == 1
    np.testing.assert_array_equal(results[0]["y"], [[6.0]])
    await batcher.aclose()


async def test_bad_input_in_a_batch_fails_only_its_own_request():
    runtime = Doubler()
    # A batch is full at 3 rows; the long delay means nothing runs before all three are queued.
    policy = BatchPolicy(max_batch_size=3, batching=True, max_queue_delay_us=10_000_000)
    batcher = await started(policy, runtime)
    rows = [np.array([[1.0]]), np.array([[-1.0]]), np.array([[5.0]])]
    results = await asyncio.gather(*(batcher.infer(Job({"x": x}, 1)) for x in rows), return_exceptions=True)
    assert runtime.batches[0] == 3  # they were batched together first
    np.testing.assert_array_equal(results[0]["y"], [[2.0]])
    assert isinstance(results[1], InvalidInput) and "negative" in results[1].message
    np.testing.assert_array_equal(results[2]["y"], [[10.0]])
    await batcher.aclose()
