"""The v2 REST infer body, with Triton's binary tensor extension: decode and encode.

Pure functions (no FastAPI): bytes in, ``InferenceRequest`` out, and back. Binary
tensors are wrapped with ``numpy.frombuffer`` — never copied through JSON.

Body layout with binary data::

    | JSON header (Inference-Header-Content-Length bytes) | tensor 0 raw | tensor 1 raw | ...
                                                          ^ in the order the JSON lists them,
                                                            each `parameters.binary_data_size` long
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from server.core import datatypes as dt
from server.core.errors import InvalidInput
from server.core.types import InferenceRequest, InferenceResponse, RequestedOutput, TensorSpec

HEADER = "inference-header-content-length"


def decode_request(
    body: bytes, header_length: int | None, model_name: str, model_version: str
) -> InferenceRequest:
    """Parse an infer body (JSON, or JSON + binary tensors)."""
    json_end = len(body) if header_length is None else header_length
    if json_end > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {json_end} but the body has only {len(body)} bytes"
        )
    try:
        header = orjson.loads(body[:json_end])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in the request body: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    binary = memoryview(body)[json_end:]
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for item in raw_inputs:
        name, array, offset = _decode_input(item, binary, offset)
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        inputs[name], datatypes[name] = array, item["datatype"]
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    parameters = _object(header.get("parameters", {}), "parameters")
    binary_default = parameters.pop("binary_data_output", False)
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        inputs=inputs,
        datatypes=datatypes,
        outputs=_decode_outputs(header.get("outputs"), bool(binary_default)),
        parameters={**parameters, "binary_data_output": bool(binary_default)},
    )


def decode_raw_binary(body: bytes, spec: TensorSpec, model_name: str, model_version: str) -> InferenceRequest:
    """``Inference-Header-Content-Length: 0``: the body is the single input's bytes, batch 1."""
    if spec.datatype == "BYTES":
        array = dt.deserialize_bytes(body, 1)
        shape = [1] * len(spec.shape)
    else:
        itemsize = dt.element_size(spec.datatype)
        if len(body) % itemsize:
            raise InvalidInput(f"raw body of {len(body)} bytes is not a whole number of {spec.datatype} elements")
        count = len(body) // itemsize
        shape = [1 if i == 0 and spec.shape and spec.shape[0] == -1 else d for i, d in enumerate(spec.shape)]
        variable = [i for i, d in enumerate(shape) if d == -1]
        if len(variable) > 1:
            raise InvalidInput("a raw binary request needs a model input with at most one variable dimension")
        fixed = math.prod(d for d in shape if d != -1)
        if variable:
            shape[variable[0]] = count // fixed if fixed else 0
        if math.prod(shape) != count:
            raise InvalidInput(f"raw body holds {count} elements; input '{spec.name}' needs {math.prod(shape)}")
        array = np.frombuffer(body, dtype=dt.numpy_dtype(spec.datatype))
    return InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        inputs={spec.name: array.reshape(shape)},
        datatypes={spec.name: spec.datatype},
        parameters={"binary_data_output": True},
    )


def _decode_input(item: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(item, dict):
        raise InvalidInput("each entry of 'inputs' must be an object with name, shape, datatype and data")
    name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
    if not isinstance(name, str) or not name:
        raise InvalidInput("an input has no 'name'")
    if not isinstance(datatype, str) or datatype not in dt.DATATYPES:
        raise InvalidInput(f"input '{name}' has datatype {datatype!r}; expected one of {sorted(dt.DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"input '{name}' needs 'shape' as a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    parameters = _object(item.get("parameters", {}), f"parameters of input '{name}'")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in item:
            raise InvalidInput(f"input '{name}' has both 'data' and binary_data_size")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input '{name}' claims {size} bytes of binary data but only {len(binary) - offset} remain in the body"
            )
        array = dt.tensor_from_bytes(name, datatype, shape, binary[offset : offset + size])
        return name, array, offset + size
    if "data" not in item:
        raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    return name, tensor_from_json(name, datatype, shape, count, item["data"]), offset


_KINDS = {"b": "BOOL", "i": "int", "u": "int", "f": "float"}


def tensor_from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    if datatype in dt.BINARY_ONLY:
        raise InvalidInput(f"input '{name}' is {datatype}, which has no JSON form; send it as binary data")
    if datatype == "BYTES":
        array = dt.bytes_from_json(data if isinstance(data, list) else [data])
    else:
        try:
            array = np.asarray(data)
        except ValueError:
            raise InvalidInput(f"input '{name}': 'data' is ragged; give a flat or evenly nested list") from None
        kind = array.dtype.kind
        if array.size and (kind not in _KINDS or (datatype == "BOOL") != (kind == "b")):
            raise InvalidInput(f"input '{name}': 'data' holds {array.dtype} values; {datatype} needs numbers of that type")
        if array.size and datatype[0] in "IU" and kind == "f":
            raise InvalidInput(f"input '{name}': 'data' holds fractional numbers; {datatype} needs integers")
        try:
            array = array.astype(dt.numpy_dtype(datatype), casting="unsafe")
        except (OverflowError, ValueError) as exc:
            raise InvalidInput(f"input '{name}': {exc}") from None
    if array.size != count:
        raise InvalidInput(f"input '{name}' has {array.size} elements in 'data'; shape {shape} needs {count}")
    return array.reshape(shape)


def _decode_outputs(raw: Any, binary_default: bool) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each entry of 'outputs' must be an object with a 'name'")
        params = _object(item.get("parameters", {}), f"parameters of output '{item['name']}'")
        count = params.get("classification", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidInput(f"output '{item['name']}': classification must be a non-negative integer")
        binary = params.get("binary_data", binary_default)
        outputs.append(RequestedOutput(item["name"], count, bool(binary)))
    return outputs


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return dict(value)


# ---- encode ------------------------------------------------------------------------


def encode_response(response: InferenceResponse, binary_default: bool) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    outputs: list[dict] = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.data.shape)}
        binary = tensor.binary if tensor.binary is not None else binary_default
        if binary or tensor.datatype in dt.BINARY_ONLY:
            raw = dt.serialize_bytes(tensor.data) if tensor.datatype == "BYTES" else np.ascontiguousarray(tensor.data).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(tensor.datatype, tensor.data)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _json_data(datatype: str, array: np.ndarray) -> Any:
    if datatype == "BYTES":
        return dt.bytes_to_json(array)
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype in (np.float16,):
        return flat.tolist()
    return flat
