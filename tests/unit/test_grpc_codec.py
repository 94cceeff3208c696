"""The gRPC codec and status mapping: pure functions, no sockets."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._infer_result import InferResult
from tritonclient.grpc._utils import _get_inference_request

from server.core.errors import (
    InvalidInput,
    ModelError,
    ModelNotFound,
    QueueFull,
    Timeout,
    Unavailable,
    Unsupported,
)
from server.core.types import InferenceResponse, OutputTensor, TensorSpec
from server.frontends.grpc import codec
from server.frontends.grpc.errors import status_for


def client_request(arrays: dict[str, tuple[np.ndarray, str]], **kwargs) -> pb.ModelInferRequest:
    """The very message tritonclient.grpc builds."""
    inputs = []
    for name, (array, datatype) in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    defaults = {
        "model_name": "m", "model_version": "", "request_id": "", "outputs": None, "sequence_id": 0, "sequence_start": False,
        "sequence_end": False, "priority": 0, "timeout": None, "parameters": None,
    }
    return _get_inference_request(inputs=inputs, **{**defaults, **kwargs})


# ---- decode --------------------------------------------------------------------------


def test_raw_inputs_of_every_fixed_datatype_roundtrip():
    arrays = {
        "f32": (np.arange(6, dtype=np.float32).reshape(2, 3), "FP32"),
        "f16": (np.array([1.5, -2.0], dtype=np.float16), "FP16"),
        "f64": (np.array([1e300], dtype=np.float64), "FP64"),
        "b": (np.array([True, False, True]), "BOOL"),
        "i8": (np.array([-128, 127], dtype=np.int8), "INT8"),
        "u64": (np.array([2**64 - 1], dtype=np.uint64), "UINT64"),
        "i64": (np.array([[-(2**63)]], dtype=np.int64), "INT64"),
    }
    request = codec.decode_request(client_request(arrays))
    for name, (array, datatype) in arrays.items():
        np.testing.assert_array_equal(request.inputs[name], array)
        assert request.inputs[name].dtype == array.dtype
        assert request.datatypes[name] == datatype


def test_raw_bytes_input_is_length_prefixed_and_keeps_non_utf8():
    array = np.array([[b"abc", b"\xff\x00"], [b"", "é".encode()]], dtype=object)
    request = codec.decode_request(client_request({"s": (array, "BYTES")}))
    assert request.inputs["s"].shape == (2, 2)
    assert request.inputs["s"].tolist() == array.tolist()


def test_typed_contents_are_decoded_when_no_raw_is_sent():
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="a", datatype="INT8", shape=[2], contents=pb.InferTensorContents(int_contents=[-3, 4]))
    message.inputs.add(name="b", datatype="FP32", shape=[1, 2], contents=pb.InferTensorContents(fp32_contents=[1.5, 2]))
    message.inputs.add(name="c", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"x"]))
    message.inputs.add(name="d", datatype="BOOL", shape=[2], contents=pb.InferTensorContents(bool_contents=[True, False]))
    message.inputs.add(name="e", datatype="UINT64", shape=[1], contents=pb.InferTensorContents(uint64_contents=[2**64 - 1]))
    request = codec.decode_request(message)
    assert request.inputs["a"].dtype == np.int8 and request.inputs["a"].tolist() == [-3, 4]
    assert request.inputs["b"].dtype == np.float32 and request.inputs["b"].shape == (1, 2)
    assert request.inputs["c"].tolist() == [b"x"]
    assert request.inputs["d"].dtype == np.bool_
    assert request.inputs["e"].tolist() == [2**64 - 1]


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda m: m.inputs.add(name="a", datatype="FP16", shape=[1], contents=pb.InferTensorContents(fp32_contents=[1])), "raw"),
        (lambda m: m.inputs.add(name="a", datatype="INT8", shape=[1], contents=pb.InferTensorContents(int_contents=[300])), "range"),
        (lambda m: m.inputs.add(name="a", datatype="FP32", shape=[2], contents=pb.InferTensorContents(fp32_contents=[1])), "needs 2"),
        (lambda m: m.inputs.add(name="a", datatype="FP32", shape=[1], contents=pb.InferTensorContents(int_contents=[1])), "fp32_contents"),
        (lambda m: m.inputs.add(name="a", datatype="FLOAT", shape=[1]), "datatype"),
        (lambda m: m.inputs.add(name="a", datatype="FP32", shape=[-1]), "non-negative"),
        (lambda m: None, "no inputs"),
    ],
)
def test_malformed_typed_inputs_are_invalid(build, needle):
    message = pb.ModelInferRequest(model_name="m")
    build(message)
    with pytest.raises(InvalidInput, match=needle):
        codec.decode_request(message)


def test_raw_size_count_and_mixing_are_checked():
    message = client_request({"a": (np.zeros(4, np.float32), "FP32")})
    message.raw_input_contents[0] = b"\0" * 15
    with pytest.raises(InvalidInput, match="15 bytes"):
        codec.decode_request(message)
    message = client_request({"a": (np.zeros(4, np.float32), "FP32"), "b": (np.zeros(1, np.float32), "FP32")})
    del message.raw_input_contents[1]
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        codec.decode_request(message)
    message = client_request({"a": (np.zeros(1, np.float32), "FP32")})
    message.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="one or the other"):
        codec.decode_request(message)
    message = client_request({"s": (np.array([b"ab"], dtype=object), "BYTES")})
    message.raw_input_contents[0] = struct.pack("<I", 9) + b"ab"
    with pytest.raises(InvalidInput, match="truncated"):
        codec.decode_request(message)


def test_duplicate_input_and_bad_version_are_invalid():
    message = client_request({"a": (np.zeros(1, np.float32), "FP32")})
    message.inputs.append(message.inputs[0])
    message.raw_input_contents.append(message.raw_input_contents[0])
    with pytest.raises(InvalidInput, match="twice"):
        codec.decode_request(message)
    with pytest.raises(InvalidInput, match="number"):
        codec.decode_request(client_request({"a": (np.zeros(1, np.float32), "FP32")}, model_version="v1"))


def test_parameters_priority_timeout_and_classification_reach_the_request():
    outputs = [grpcclient.InferRequestedOutput("o", class_count=3), grpcclient.InferRequestedOutput("p")]
    message = client_request(
        {"a": (np.zeros(1, np.float32), "FP32")}, priority=2, timeout=1500, request_id="r1", outputs=outputs,
        parameters={"custom": "x", "flag": True, "n": -4, "ratio": 0.5},
    )
    request = codec.decode_request(message)
    assert request.id == "r1"
    assert request.parameters == {"priority": 2, "timeout": 1500, "custom": "x", "flag": True, "n": -4, "ratio": 0.5}
    assert [(o.name, o.class_count) for o in request.outputs] == [("o", 3), ("p", 0)]


def test_shared_memory_inputs_are_unsupported():
    message = client_request({"a": (np.zeros(1, np.float32), "FP32")})
    message.inputs[0].parameters["shared_memory_region"].string_param = "r"
    with pytest.raises(Unsupported, match="shared memory"):
        codec.decode_request(message)


# ---- encode --------------------------------------------------------------------------


def test_response_is_all_raw_and_tritonclient_reads_it():
    outputs = [
        OutputTensor("f", "FP32", np.arange(6, dtype=np.float32).reshape(2, 3)),
        OutputTensor("h", "FP16", np.array([0.5], dtype=np.float16)),
        OutputTensor("s", "BYTES", np.array([[b"a\xff", b""]], dtype=object)),
        OutputTensor("b", "BOOL", np.array([True, False])),
    ]
    message = codec.encode_response(InferenceResponse("m", "1", outputs, id="x", parameters={"k": 3}))
    assert len(message.raw_output_contents) == 4
    assert not any(o.HasField("contents") for o in message.outputs)
    assert message.raw_output_contents[2] == struct.pack("<I", 2) + b"a\xff" + struct.pack("<I", 0)
    result = InferResult(message)
    for tensor in outputs:
        got = result.as_numpy(tensor.name)
        assert got.shape == tensor.data.shape
        assert got.tolist() == tensor.data.tolist()
    assert message.id == "x" and message.parameters["k"].int64_param == 3
    assert codec.FINAL_RESPONSE not in message.parameters


def test_final_flag_and_empty_final_response():
    response = InferenceResponse("m", "1", [], id="q")
    assert codec.encode_response(response, final=True).parameters[codec.FINAL_RESPONSE].bool_param is True
    assert codec.encode_response(response, final=False).parameters[codec.FINAL_RESPONSE].bool_param is False
    request = codec.decode_request(client_request({"a": (np.zeros(1, np.float32), "FP32")}, request_id="q"))
    empty = codec.empty_final_response(request)
    assert empty.id == "q" and not empty.outputs and empty.parameters[codec.FINAL_RESPONSE].bool_param


def test_parameter_values_map_onto_their_oneof():
    message = pb.ModelInferResponse()
    codec.set_parameters(message.parameters, {"b": True, "i": -1, "u": 2**63, "d": 0.25, "s": "x"})
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in message.parameters.items()}
    assert kinds == {"b": "bool_param", "i": "int64_param", "u": "uint64_param", "d": "double_param", "s": "string_param"}
    assert codec.parameters_to_dict(message.parameters) == {"b": True, "i": -1, "u": 2**63, "d": 0.25, "s": "x"}


def test_metadata_statistics_index_and_load_parameters():
    meta = codec.metadata_response("m", ("1", "2"), "onnxruntime_onnx", (TensorSpec("a", "FP32", (-1, 3)),), ())
    assert list(meta.inputs[0].shape) == [-1, 3] and list(meta.versions) == ["1", "2"]
    stats = codec.statistics_response([{
        "name": "m", "version": "1", "last_inference": 5, "inference_count": 64, "execution_count": 1,
        "inference_stats": {"success": {"count": 1, "ns": 10}}, "response_stats": {}, "batch_stats": [], "memory_usage": [],
    }])
    assert stats.model_stats[0].inference_count == 64 and stats.model_stats[0].inference_stats.success.ns == 10
    index = codec.index_response([{"name": "a", "state": "UNAVAILABLE", "reason": "unloaded"}, {"name": "b", "version": "1", "state": "READY"}])
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [("a", "", "UNAVAILABLE", "unloaded"), ("b", "1", "READY", "")]
    load = pb.RepositoryModelLoadRequest(model_name="m")
    load.parameters["config"].string_param = "{}"
    load.parameters["file:1/model.onnx"].bytes_param = b"\x00\x01"
    assert codec.load_parameters(load.parameters) == ("{}", {"file:1/model.onnx": b"\x00\x01"})
    load.parameters["config"].bytes_param = b"{}"
    with pytest.raises(InvalidInput, match="config"):
        codec.load_parameters(load.parameters)


# ---- status mapping ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (QueueFull("x"), grpc.StatusCode.UNAVAILABLE),
        (Timeout("x"), grpc.StatusCode.UNAVAILABLE),
        (Unsupported("x"), grpc.StatusCode.UNIMPLEMENTED),
        (ModelError("x"), grpc.StatusCode.INTERNAL),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_mapping_follows_triton(error, code):
    got, details = status_for(error)
    assert got == code
    assert ("x" in details) or ("boom" in details)
