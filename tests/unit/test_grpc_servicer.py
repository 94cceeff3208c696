"""The servicer's stream logic against a fake service, in-process (no sockets): ordering,
per-request errors, and the decoupled path a generation engine plugs into (``infer_stream``)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from server.core.errors import InvalidInput
from server.core.types import InferenceRequest, InferenceResponse, OutputTensor
from server.frontends.grpc.servicer import InferenceServicer


class FakeService:
    """Model "gen" is decoupled; ``infer_stream`` yields one response per token."""

    shutting_down = False

    def accounting(self, model_name: str, version: str = ""):
        return contextlib.nullcontext()

    def model_metadata(self, name: str, version: str = ""):
        return SimpleNamespace(decoupled=name == "gen")

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        x = request.inputs["x"]
        if x.size == 0:
            raise InvalidInput("empty")
        await asyncio.sleep(0.01 * float(x.reshape(-1)[0]))  # later requests may finish first
        return InferenceResponse(request.model_name, "1", [OutputTensor("y", "FP32", x * 2)], request.id)

    async def infer_stream(self, request: InferenceRequest):
        if request.model_name != "gen":
            yield await self.infer(request)
            return
        for token in (b"a", b"b", b"c"):
            await asyncio.sleep(0)
            yield InferenceResponse("gen", "1", [OutputTensor("tok", "BYTES", np.array([token], dtype=object))], request.id)


def message(model: str, value: float | None, request_id: str, empty_final: bool = False) -> pb.ModelInferRequest:
    m = pb.ModelInferRequest(model_name=model, id=request_id)
    data = np.array([] if value is None else [value], np.float32)
    m.inputs.add(name="x", datatype="FP32", shape=list(data.shape))
    m.raw_input_contents.append(data.tobytes())
    if empty_final:
        m.parameters["triton_enable_empty_final_response"].bool_param = True
    return m


async def run_stream(service, messages: list[pb.ModelInferRequest]) -> list[pb.ModelStreamInferResponse]:
    async def requests():
        for m in messages:
            yield m

    return [r async for r in InferenceServicer(service).ModelStreamInfer(requests(), context=None)]


async def test_responses_keep_request_order_and_errors_stay_in_band():
    # the first request is the slowest: responses must still come out in request order
    answers = await run_stream(FakeService(), [message("m", 5, "0"), message("m", None, "1"), message("m", 1, "2")])
    assert [a.infer_response.id for a in answers] == ["0", "1", "2"]  # an error names its request too
    assert answers[1].error_message.startswith("INVALID_ARGUMENT") and "empty" in answers[1].error_message
    assert np.frombuffer(answers[2].infer_response.raw_output_contents[0], np.float32).tolist() == [2.0]


async def test_decoupled_responses_then_empty_final():
    answers = await run_stream(FakeService(), [message("gen", 1, "g", empty_final=True), message("m", 1, "m", empty_final=True)])
    gen = [a.infer_response for a in answers[:4]]
    assert [r.id for r in gen] == ["g"] * 4
    assert [r.raw_output_contents[0][4:] for r in gen[:3]] == [b"a", b"b", b"c"]
    assert [r.parameters["triton_final_response"].bool_param for r in gen] == [False, False, False, True]
    assert not gen[3].outputs
    single = answers[4].infer_response
    assert single.id == "m" and single.parameters["triton_final_response"].bool_param


async def test_decoupled_without_the_flag_sends_no_final_marker():
    answers = await run_stream(FakeService(), [message("gen", 1, "g")])
    assert len(answers) == 3
    assert all("triton_final_response" not in a.infer_response.parameters for a in answers)
