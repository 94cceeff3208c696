"""tritonclient.grpc.aio against a real server: many requests in flight, a long stream with
errors interleaved, and cancellation (a cancelled or expired call never runs its rows)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(90)


def simple_inputs(a: np.ndarray, b: np.ndarray) -> list[InferInput]:
    inputs = [InferInput("INPUT0", list(a.shape), "FP32"), InferInput("INPUT1", list(b.shape), "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def queued_input(rows: int) -> list[InferInput]:
    x = InferInput("INPUT", [rows, 4], "FP32")
    x.set_data_from_numpy(np.full((rows, 4), 7, np.float32))
    return [x]


async def stats_of(client: aioclient.InferenceServerClient, model: str):
    return (await client.get_inference_statistics(model)).model_stats[0]


async def test_unary_rpcs_over_aio(server):
    async with aioclient.InferenceServerClient(server.grpc_url) as client:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("simple") and not await client.is_model_ready("nope")
        assert (await client.get_server_metadata()).name == "deepserve"
        assert (await client.get_model_metadata("simple")).inputs[0].shape == [-1, 16]
        assert (await client.get_model_config("simple")).config.max_batch_size == 64
        assert "simple" in {m.name for m in (await client.get_model_repository_index()).models}
        a = np.ones((1, 16), np.float32)
        result = await client.infer("simple", simple_inputs(a, a), outputs=[InferRequestedOutput("OUTPUT0", class_count=1)])
        assert result.as_numpy("OUTPUT0").tolist() == [[b"2.000000:0:label0"]]
        for algorithm in ("gzip", "deflate"):
            result = await client.infer("simple", simple_inputs(a, a), compression_algorithm=algorithm)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))
        with pytest.raises(InferenceServerException) as info:
            await client.infer("nope", simple_inputs(a, a))
        assert info.value.status() == "StatusCode.NOT_FOUND"


async def test_256_requests_in_flight_are_all_correct(server):
    async with aioclient.InferenceServerClient(server.grpc_url) as client:
        before = await stats_of(client, "simple")
        b = np.arange(16, dtype=np.float32)[None, :]

        async def one(i: int):
            a = np.full((1, 16), i, np.float32)
            result = await client.infer("simple", simple_inputs(a, b), request_id=str(i))
            return i, result

        results = await asyncio.gather(*(one(i) for i in range(256)))
        for i, result in results:
            assert result.get_response().id == str(i)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), i, np.float32) + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.full((1, 16), i, np.float32) - b)
        after = await stats_of(client, "simple")
        assert after.inference_count - before.inference_count == 256
        assert after.inference_stats.success.count - before.inference_stats.success.count == 256
        # they were batched: fewer executions than requests
        assert after.execution_count - before.execution_count < 256


def stream_request(i: int) -> dict:
    a = np.full((1, 16), i, np.float32)
    if i % 7 == 3:  # wrong shape
        return {"model_name": "simple", "inputs": simple_inputs(a[:, :4], a[:, :4]), "request_id": str(i)}
    if i % 11 == 5:  # unknown model
        return {"model_name": "nope", "inputs": simple_inputs(a, a), "request_id": str(i)}
    return {"model_name": "simple", "inputs": simple_inputs(a, a), "request_id": str(i)}


async def test_stream_of_100_with_errors_interleaved(server):
    async def requests():
        for i in range(100):
            yield stream_request(i)

    async with aioclient.InferenceServerClient(server.grpc_url) as client:
        answers = [answer async for answer in client.stream_infer(requests())]
        assert len(answers) == 100
        for i, (result, error) in enumerate(answers):
            if i % 7 == 3:
                assert result is None and "INVALID_ARGUMENT" in str(error) and "shape" in str(error)
            elif i % 11 == 5:
                assert result is None and "NOT_FOUND" in str(error)
            else:
                assert error is None, error
                assert result.get_response().id == str(i)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2 * i, np.float32))
        # the same client keeps working after the stream
        assert await client.is_server_ready()


async def test_cancelled_and_expired_calls_never_run_their_rows(server):
    """The queued model batches up to 8 rows and waits 20 s for them: a 1-row request sits in
    the queue. Cancelled and deadline-exceeded calls must be dropped from it, never executed."""
    async with aioclient.InferenceServerClient(server.grpc_url) as client:
        before = await stats_of(client, "queued")
        assert before.inference_count == 0 and before.execution_count == 0

        # 1. the client cancels the call while it is queued
        task = asyncio.create_task(client.infer("queued", queued_input(1)))
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        # 2. the call's deadline passes while it is queued
        with pytest.raises(InferenceServerException) as info:
            await client.infer("queued", queued_input(1), client_timeout=0.5)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"

        # 3. a stream is cancelled with two requests queued
        async def two():
            for _ in range(2):
                yield {"model_name": "queued", "inputs": queued_input(1)}
            await asyncio.sleep(30)  # keep the request side open

        responses = client.stream_infer(two())
        reader = asyncio.create_task(anext(responses))
        await asyncio.sleep(0.5)
        responses.cancel()
        with pytest.raises(asyncio.CancelledError):  # the client's way of ending a cancelled call
            await reader

        await asyncio.sleep(0.5)  # let the server notice the cancellations
        after = await stats_of(client, "queued")
        assert after.inference_count == 0 and after.execution_count == 0

        # 8 rows fill a batch and run at once, alone: had a cancelled 1-row request stayed at
        # the head of the queue, this one would wait behind it for the 20 s window instead.
        result = await client.infer("queued", queued_input(8), client_timeout=10)
        np.testing.assert_array_equal(result.as_numpy("INPUT_OUT"), np.full((8, 4), 7, np.float32))
        final = await stats_of(client, "queued")
        assert final.inference_count == 8 and final.execution_count == 1
