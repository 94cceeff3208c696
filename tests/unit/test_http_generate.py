"""The generate extension's pure parts: a flat JSON body <-> tensors with a batch of one."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from server.core.errors import InvalidInput
from server.core.types import InferenceResponse, OutputTensor, TensorSpec
from server.frontends.http.generate import _shape, generate_body, generate_request

INPUTS = (
    TensorSpec("prompt", "BYTES", (-1, 1)),
    TensorSpec("features", "FP32", (-1, -1)),
    TensorSpec("max_tokens", "INT32", (-1, 1)),
    TensorSpec("grid", "FP32", (-1, 2, 2)),
)


def request(body, batched: bool = True, inputs=INPUTS):
    return generate_request(body, inputs, batched, "llm", "")


def test_a_string_for_a_bytes_input_becomes_one_row_of_bytes():
    tensor = request({"prompt": "hello"}).inputs["prompt"]
    assert tensor.shape == (1, 1) and tensor.dtype == object
    assert tensor[0, 0] == b"hello"


def test_a_list_for_a_variable_fp32_input_becomes_one_row():
    tensor = request({"features": [0.5, 1.5, 2.5]}).inputs["features"]
    assert tensor.shape == (1, 3) and tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, [[0.5, 1.5, 2.5]])


def test_a_scalar_for_an_int32_input_of_one_element():
    tensor = request({"max_tokens": 16}).inputs["max_tokens"]
    assert tensor.shape == (1, 1) and tensor.dtype == np.int32
    assert tensor[0, 0] == 16


def test_a_flat_list_is_shaped_to_the_inputs_fixed_dims():
    tensor = request({"grid": [1, 2, 3, 4]}).inputs["grid"]
    assert tensor.shape == (1, 2, 2)
    np.testing.assert_array_equal(tensor[0], [[1, 2], [3, 4]])


def test_without_batching_the_value_takes_the_inputs_own_shape():
    inputs = (TensorSpec("features", "FP32", (3,)),)
    tensor = request({"features": [1, 2, 3]}, batched=False, inputs=inputs).inputs["features"]
    assert tensor.shape == (3,)


def test_id_model_and_parameters_reach_the_request():
    infer = request({"prompt": "hi", "id": "req-7", "parameters": {"priority": 2, "temperature": 0.5}})
    assert (infer.model_name, infer.model_version, infer.id) == ("llm", "", "req-7")
    assert infer.parameters == {"priority": 2, "temperature": 0.5}
    assert list(infer.inputs) == ["prompt"]


def test_an_unknown_key_is_refused_naming_the_models_inputs():
    with pytest.raises(
        InvalidInput,
        match=r"'text' is not an input of model 'llm'; it takes \['features', 'grid', 'max_tokens', 'prompt'\]",
    ):
        request({"text": "hello"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (["prompt"], "must be a JSON object"),
        ({"prompt": "x", "parameters": [1]}, "'parameters' must be a JSON object"),
        ({"prompt": "x", "id": 7}, "'id' must be a string"),
    ],
    ids=["not-an-object", "parameters-not-an-object", "id-not-a-string"],
)
def test_malformed_bodies_are_invalid_input(body, message):
    with pytest.raises(InvalidInput, match=message):
        request(body)


@pytest.mark.parametrize(
    ("name", "value"),
    [("grid", [1, 2, 3]), ("max_tokens", [1, 2]), ("grid", [[1, 2, 3], [4, 5, 6]])],
    ids=["too-few", "two-for-one", "wrong-inner-dims"],
)
def test_a_value_not_fitting_the_dims_is_invalid_input(name, value):
    with pytest.raises(InvalidInput, match=f"input '{name}' has shape"):
        request({name: value})


@pytest.mark.parametrize(
    ("name", "value"), [("features", [[1.0, 2.0], [3.0]]), ("prompt", ["a", ["b", "c"]])], ids=["fp32", "bytes"]
)
def test_a_ragged_list_is_invalid_input(name, value):
    with pytest.raises(InvalidInput, match=f"input '{name}' is a ragged list"):
        request({name: value})


@pytest.mark.parametrize(
    ("given", "dims", "shape"),
    [
        ((), (1,), [1]),  # a scalar for one element
        ((3,), (-1,), [3]),  # a list for a variable axis
        ((4,), (2, 2), [2, 2]),  # a flat list filled into fixed dims
        ((6,), (-1, 2), [3, 2]),  # the one variable axis takes the rest
        ((2, 2), (-1, 2), [2, 2]),  # the value's own shape where it fits
    ],
)
def test_shape_fits_the_value_to_the_dims(given, dims, shape):
    assert _shape("x", given, dims) == shape


@pytest.mark.parametrize(("given", "dims"), [((5,), (-1, 2)), ((2,), (-1, -1)), ((3,), (2,))])
def test_shape_refuses_what_cannot_fit(given, dims):
    with pytest.raises(InvalidInput, match=r"input 'x' has shape"):
        _shape("x", given, dims)


def response(*outputs: OutputTensor, id: str = "") -> InferenceResponse:
    return InferenceResponse("llm", "1", list(outputs), id=id)


def test_generate_body_turns_one_bytes_element_into_a_plain_string():
    text = np.array([[b"hello world"]], dtype=object)
    body = generate_body(response(OutputTensor("text", "BYTES", text), id="req-7"), batched=True)
    assert body == {"model_name": "llm", "model_version": "1", "id": "req-7", "text": "hello world"}


def test_generate_body_turns_a_row_of_floats_into_a_list():
    scores = np.array([[0.25, 0.5, 1.0]], np.float32)
    body = generate_body(response(OutputTensor("scores", "FP32", scores)), batched=True)
    assert body["scores"] == [0.25, 0.5, 1.0]
    assert "id" not in body
    assert orjson.loads(orjson.dumps(body)) == body  # plain JSON values, no numpy scalars


def test_generate_body_keeps_inner_dims_nested():
    grid = np.arange(4, dtype=np.int64).reshape(1, 2, 2)
    words = np.array([[b"a", b"bc"]], dtype=object)
    body = generate_body(
        response(OutputTensor("grid", "INT64", grid), OutputTensor("words", "BYTES", words)), batched=True
    )
    assert body["grid"] == [[0, 1], [2, 3]] and body["words"] == ["a", "bc"]


def test_generate_body_one_element_is_a_scalar():
    body = generate_body(response(OutputTensor("count", "INT32", np.array([[7]], np.int32))), batched=True)
    assert body["count"] == 7 and type(body["count"]) is int
