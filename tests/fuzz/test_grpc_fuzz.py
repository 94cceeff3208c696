"""Hypothesis-generated ModelInfer / ModelStreamInfer requests over raw gRPC (tritonclient's
stubs on grpcio): random shapes, datatypes, raw and typed contents, parameters of every
kind; truncated and mutated wire bytes, oversized messages. Every call must end with a
client-error status (INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, RESOURCE_EXHAUSTED) or
UNAVAILABLE, never INTERNAL / UNKNOWN, and the server must stay healthy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server.frontends.grpc.codec import CONTENTS_FIELD
from tests.fuzz.conftest import Tally, assert_healthy, fuzz_settings
from tests.fuzz.strategies import Tensor, model_requests
from tests.integration import server_fixtures as fx

SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
CONTENTS = [
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
]
FIELD_FOR = CONTENTS_FIELD  # the codec's own table: datatype -> typed contents field
LIMITS = {
    "int_contents": (-(2**31), 2**31 - 1),
    "int64_contents": (-(2**63), 2**63 - 1),
    "uint_contents": (0, 2**32 - 1),
    "uint64_contents": (0, 2**64 - 1),
}

parameter_values = st.one_of(
    st.booleans().map(lambda v: ("bool_param", v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: ("int64_param", v)),
    st.integers(0, 2**64 - 1).map(lambda v: ("uint64_param", v)),
    st.floats().map(lambda v: ("double_param", v)),
    st.text(max_size=8).map(lambda v: ("string_param", v)),
    st.none(),
)
parameter_names = st.sampled_from(
    ["priority", "timeout", "binary_data_output", "triton_enable_empty_final_response", "sequence_id", "classification",
     "shared_memory_region", "shared_memory_byte_size"]
) | st.text(max_size=8)


@pytest.fixture(scope="module")
def channel(fuzz_server: fx.ServerHandle) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.grpc_url) as channel:
        yield channel
    assert_healthy(fuzz_server)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def set_parameter(target, key: str, value: tuple[str, Any] | None) -> None:
    param = target[key]
    if value is not None:
        setattr(param, value[0], value[1])


def _python_values(tensor: Tensor, field: str, data: st.DataObject, mutate: bool) -> list:
    values = tensor.values
    if field == "bytes_contents":
        return [bytes(v) if isinstance(v, bytes) else str(v).encode() for v in values.tolist()]
    if field == "bool_contents":
        return [bool(v) for v in values.tolist()]
    if field in ("fp32_contents", "fp64_contents"):
        return [float(v) if not isinstance(v, bytes) else 0.0 for v in values.tolist()]
    low, high = LIMITS[field]
    if mutate and data.draw(st.integers(0, 7), label="wide ints") == 0:
        return data.draw(st.lists(st.integers(low, high), min_size=values.size, max_size=values.size), label="ints")
    out = []
    for v in values.tolist():
        v = int(v) if isinstance(v, int | float | bool) and np.isfinite(v) else 0
        out.append(min(max(v, low), high))
    return out


def build_request(data: st.DataObject, request) -> pb.ModelInferRequest:
    mutate, model, version, inputs, outputs, parameters, request_id = request
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id if isinstance(request_id, str) else "")
    raw_mode = data.draw(st.booleans(), label="raw")
    for tensor in inputs:
        shape = list(tensor.shape)
        if mutate and data.draw(st.integers(0, 11), label="negative dim") == 0:
            shape.append(data.draw(st.integers(-(2**63), -1), label="dim"))
        entry = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        if mutate and data.draw(st.integers(0, 9), label="tensor params") == 0:
            set_parameter(entry.parameters, data.draw(parameter_names), data.draw(parameter_values))
        if raw_mode:
            message.raw_input_contents.append(tensor.raw)
        elif tensor.datatype in FIELD_FOR or mutate:
            field = FIELD_FOR.get(tensor.datatype, "fp32_contents")
            if mutate and data.draw(st.integers(0, 7), label="other field") == 0:
                field = data.draw(st.sampled_from(CONTENTS), label="field")
            getattr(entry.contents, field).extend(_python_values(tensor, field, data, mutate))
        else:  # FP16 / BF16 travel raw only
            raw_mode = True
            message.ClearField("raw_input_contents")
            message.raw_input_contents.extend([t.raw for t in inputs[: len(message.inputs)]])
            for previous in message.inputs:
                previous.ClearField("contents")
    if raw_mode:  # every input raw, or none
        message.ClearField("raw_input_contents")
        message.raw_input_contents.extend(t.raw for t in inputs)
        for entry in message.inputs:
            entry.ClearField("contents")
        if mutate and data.draw(st.integers(0, 9), label="raw count") == 0:
            message.raw_input_contents.append(b"\0" * 4)
    for name, params in outputs:
        out = message.outputs.add(name=name)
        for key, value in params.items():
            if isinstance(value, bool):
                out.parameters[key].bool_param = value
            elif isinstance(value, int) and -(2**63) <= value < 2**63:
                out.parameters[key].int64_param = value
            elif isinstance(value, str):
                out.parameters[key].string_param = value
    for key, value in parameters.items():
        if isinstance(value, bool):
            message.parameters[key].bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            message.parameters[key].int64_param = value
        elif isinstance(value, int) and 0 <= value < 2**64:
            message.parameters[key].uint64_param = value
    if mutate:
        for key, value in data.draw(st.lists(st.tuples(parameter_names, parameter_values), max_size=2), label="params"):
            set_parameter(message.parameters, key, value)
    return message


def record_code(tally: Tally, target: str, code: grpc.StatusCode, details: str, request: Any) -> None:
    bad = code in SERVER_ERRORS
    tally.record(target, code.name, bad)
    assert not bad, f"{code.name}: {details} for {request}"


@fuzz_settings(200)
@given(request=model_requests(), data=st.data())
def test_model_infer(stub, tally: Tally, request, data) -> None:
    message = build_request(data, request)
    try:
        response = stub.ModelInfer(message, timeout=30)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        code, details, response = error.code(), error.details(), None
    record_code(tally, "grpc_infer", code, details, message)
    if not request[0]:  # well-formed
        assert code == grpc.StatusCode.OK, f"{code.name}: {details} for {message}"
        assert len(response.raw_output_contents) == len(response.outputs)


@fuzz_settings(100)
@given(requests=st.lists(model_requests(), min_size=1, max_size=4), data=st.data())
def test_model_stream_infer(stub, tally: Tally, requests, data) -> None:
    """A stream of random requests: one answer (or in-band error) each, the stream ends OK."""
    messages = [build_request(data, r) for r in requests]
    answers = []
    try:
        for answer in stub.ModelStreamInfer(iter(messages), timeout=30):
            answers.append(answer)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
    record_code(tally, "grpc_stream", code, details, messages)
    # at least one answer each (a decoupled model adds its empty final response when asked)
    assert len(answers) >= len(messages) or code != grpc.StatusCode.OK
    for answer in answers:  # in-band errors (one per failed request) are never server errors
        assert not answer.error_message.startswith(("INTERNAL", "UNKNOWN")), f"{answer.error_message} in {messages}"


@fuzz_settings(100)
@given(request=model_requests(), data=st.data())
def test_mutated_wire_bytes(channel: grpc.Channel, tally: Tally, request, data) -> None:
    """A serialized request cut short, or with bytes flipped: grpcio's deserializer, then ours."""
    wire = bytearray(build_request(data, request).SerializeToString())
    if wire and data.draw(st.booleans(), label="truncate"):
        wire = wire[: data.draw(st.integers(0, len(wire) - 1), label="cut")]
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        if wire:
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    code, details = _call_raw(channel, bytes(wire))
    if not _parses(bytes(wire)):  # refused by the guarded decoder (server/frontends/grpc/decoding.py)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
        record_code(tally, "grpc_wire_undecodable", code, details, bytes(wire))
        return
    record_code(tally, "grpc_wire_bytes", code, details, bytes(wire))


def _parses(wire: bytes) -> bool:
    try:
        pb.ModelInferRequest.FromString(wire)
    except Exception:  # DecodeError, and a RuntimeWarning-free failure of any other kind
        return False
    return True


def _call_raw(channel: grpc.Channel, wire: bytes) -> tuple[grpc.StatusCode, str]:
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    try:
        call(wire, timeout=30)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_undecodable_message_is_invalid_argument(channel: grpc.Channel) -> None:
    wire = pb.ModelInferRequest(model_name="simple").SerializeToString()[:-1]  # a length-delimited field cut short
    assert not _parses(wire)
    code, details = _call_raw(channel, wire)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"


@fuzz_settings(4)
@given(extra=st.integers(1, 4096), raw=st.booleans())
def test_oversized_message(stub, tally: Tally, extra: int, raw: bool) -> None:
    """A message past the server's limit: RESOURCE_EXHAUSTED, from grpcio."""
    rows = (fx.SMALL_MESSAGE_BYTES + extra) // 64 + 1
    message = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        entry = message.inputs.add(name=name, datatype="FP32", shape=[rows, 16])
        if not raw:
            entry.contents.fp32_contents.extend(np.zeros(rows * 16 if name == "INPUT0" else 1, np.float32).tolist())
    if raw:
        message.raw_input_contents.extend([b"\0" * (rows * 64), b"\0" * 64])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(message, timeout=60)
    record_code(tally, "grpc_oversized", caught.value.code(), caught.value.details(), "oversized")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
