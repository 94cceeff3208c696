"""The v2 REST body codec: JSON and binary tensors, both ways, and its refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from server.core.errors import InvalidInput
from server.core.types import InferenceResponse, OutputTensor, TensorSpec
from server.frontends.http.codec import decode_raw_binary, decode_request, encode_response


def binary(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def test_json_and_binary_inputs_in_one_body():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = {
        "id": "r1",
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}},
            {"name": "b", "shape": [2], "datatype": "INT64", "data": [[1], [2]]},
            {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}},
        ],
        "outputs": [{"name": "y", "parameters": {"classification": 2, "binary_data": False}}],
        "parameters": {"binary_data_output": True, "priority": 1},
    }
    strings = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)
    body, n = binary(header, a.tobytes(), strings)
    req = decode_request(body, n, "m", "1")
    np.testing.assert_array_equal(req.inputs["a"], a)
    np.testing.assert_array_equal(req.inputs["b"], np.array([1, 2]))
    assert list(req.inputs["s"]) == [b"abc", b""]
    assert req.id == "r1" and req.parameters["priority"] == 1 and req.parameters["binary_data_output"] is True
    assert req.outputs[0].class_count == 2 and req.outputs[0].binary is False
    assert req.datatypes == {"a": "FP32", "b": "INT64", "s": "BYTES"}


@pytest.mark.parametrize(
    "header, blob, message",
    [
        ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1.0]}]}, b"", "elements"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1.5]}]}, b"", "fractional"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "BOOL", "data": [1]}]}, b"", "BOOL"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}, b"\0" * 8, "no input claims"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0], "parameters": {"binary_data_size": 4}}]}, b"\0" * 4, "both"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}, b"", "neither"),
        ({"inputs": [{"name": "a", "shape": [True], "datatype": "FP32", "data": [1.0]}]}, b"", "shape"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}] * 2}, b"", "twice"),
        ({"inputs": "x"}, b"", "inputs"),
        ([1, 2], b"", "JSON object"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}], "id": 5}, b"", "id"),
    ],
)
def test_refusals_name_the_problem(header, blob, message):
    body, n = binary(header, blob)
    with pytest.raises(InvalidInput, match=message):
        decode_request(body, n, "m", "")


def test_raw_binary_request_fills_the_one_variable_dimension():
    spec = TensorSpec("x", "FP32", (-1, 3, -1))
    req = decode_raw_binary(np.zeros(6, np.float32).tobytes(), spec, "m", "")
    assert req.inputs["x"].shape == (1, 3, 2)
    with pytest.raises(InvalidInput):
        decode_raw_binary(b"\0" * 5, spec, "m", "")


def test_encode_mixes_json_and_binary_outputs_in_order():
    y = np.arange(4, dtype=np.float32).reshape(2, 2)
    s = np.array([b"x", b"yz"], dtype=object)
    resp = InferenceResponse("m", "1", [OutputTensor("y", "FP32", y, binary=True), OutputTensor("s", "BYTES", s, binary=False),
                                        OutputTensor("h", "FP16", np.ones(2, np.float16))], id="r")
    body, n = encode_response(resp, binary_default=False)
    header = json.loads(body[:n])
    assert header["id"] == "r" and header["model_version"] == "1"
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 16 and "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == ["x", "yz"]
    assert header["outputs"][2]["parameters"]["binary_data_size"] == 4  # FP16 is always binary
    np.testing.assert_array_equal(np.frombuffer(body[n : n + 16], np.float32).reshape(2, 2), y)


def test_encode_json_only_has_no_header_length():
    resp = InferenceResponse("m", "1", [OutputTensor("b", "BOOL", np.array([True, False]))])
    body, n = encode_response(resp, binary_default=False)
    assert n is None and json.loads(body)["outputs"][0]["data"] == [True, False]
