"""The v2 gRPC messages <-> the core's types. Pure functions: protobuf in, dataclasses out, and back.

Tensor payloads on the wire (``ModelInferRequest`` / ``ModelInferResponse``)::

    inputs[i]               raw_input_contents[i]       <- same index; all inputs raw, or none
    ---------------------   -------------------------
    name, datatype, shape   row-major little-endian bytes; BYTES = (u32 LE length, bytes)*
                            FP16 / BF16 travel only this way

    or, with no raw contents, ``inputs[i].contents.<typed>_contents`` (never for FP16/BF16).
    Outputs always go out raw (tritonclient reads ``raw_output_contents`` only).

Raw tensors are wrapped with ``numpy.frombuffer`` (read-only views of the message's bytes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from server.core import datatypes as dt
from server.core.errors import InvalidInput, Unsupported
from server.core.types import InferenceRequest, InferenceResponse, RequestedOutput, TensorSpec
from server.core.validation import check_version

# Reserved request parameter: the client wants an (empty) response flagged final on streams.
ENABLE_EMPTY_FINAL = "triton_enable_empty_final_response"
FINAL_RESPONSE = "triton_final_response"
_SHM_KEYS = frozenset({"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"})

# datatype -> the typed field of InferTensorContents that carries it
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# ---- parameters --------------------------------------------------------------------


def parameters_to_dict(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """``map<string, InferParameter>`` -> plain Python values (bool, int, str, float)."""
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which is not None else None
    return out


def set_parameters(target: Mapping[str, pb.InferParameter], values: Mapping[str, Any]) -> None:
    """Plain Python values -> a message's ``parameters`` map (in place)."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool | np.bool_):
            param.bool_param = bool(value)
        elif isinstance(value, int | np.integer):
            if value < 2**63:
                param.int64_param = int(value)
            else:
                param.uint64_param = int(value)
        elif isinstance(value, float | np.floating):
            param.double_param = float(value)
        else:
            param.string_param = str(value)


# ---- ModelInferRequest -> InferenceRequest ------------------------------------------


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    """Decode a ``ModelInferRequest``; raises ``InvalidInput`` for anything malformed."""
    version = check_version(message.model_version)
    if not message.inputs:
        raise InvalidInput("the request has no inputs")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"the request has {len(message.inputs)} inputs but {len(raw)} raw_input_contents; "
            "give one raw buffer per input, in the same order"
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for index, tensor in enumerate(message.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        _refuse_shared_memory(tensor.parameters, f"input '{tensor.name}'")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{tensor.name}' has typed contents while the request uses raw_input_contents; use one or the other"
                )
            array = dt.tensor_from_bytes(tensor.name, tensor.datatype, _check_tensor(tensor)[0], raw[index])
        else:
            array = _from_contents(tensor)
        inputs[tensor.name], datatypes[tensor.name] = array, tensor.datatype
    return InferenceRequest(
        model_name=message.model_name,
        model_version=version,
        id=message.id,
        inputs=inputs,
        datatypes=datatypes,
        outputs=[_decode_output(o) for o in message.outputs],
        parameters=parameters_to_dict(message.parameters),
    )


def _check_tensor(tensor: pb.ModelInferRequest.InferInputTensor) -> tuple[list[int], int]:
    if not tensor.name:
        raise InvalidInput("an input has no name")
    if tensor.datatype not in dt.DATATYPES:
        raise InvalidInput(
            f"input '{tensor.name}' has datatype '{tensor.datatype}'; expected one of {sorted(dt.DATATYPES)}"
        )
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{tensor.name}' has shape {shape}; dimensions must be non-negative")
    return shape, math.prod(shape)


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> np.ndarray:
    shape, count = _check_tensor(tensor)
    if tensor.datatype in dt.BINARY_ONLY:
        raise InvalidInput(f"input '{tensor.name}' is {tensor.datatype}, which travels only in raw_input_contents")
    field = CONTENTS_FIELD[tensor.datatype]
    contents = tensor.contents
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidInput(f"input '{tensor.name}' is {tensor.datatype} but its data is in {others}; use {field}")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(f"input '{tensor.name}' has {len(values)} elements in {field}; shape {shape} needs {count}")
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = dt.numpy_dtype(tensor.datatype)
    if dtype.kind not in "iu":
        return np.array(values, dtype=dtype).reshape(shape)
    # int_contents / uint_contents are 32-bit on the wire: check narrower types' range.
    wide = np.array(values, dtype=np.uint64 if dtype == np.uint64 else np.int64)
    info = np.iinfo(dtype)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise InvalidInput(f"input '{tensor.name}' has values outside the range of {tensor.datatype}")
    return wide.astype(dtype).reshape(shape)


def _decode_output(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    _refuse_shared_memory(output.parameters, f"output '{output.name}'")
    params = parameters_to_dict(output.parameters)
    count = params.get("classification", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidInput(f"output '{output.name}': classification must be a non-negative integer")
    return RequestedOutput(output.name, count)


def _refuse_shared_memory(parameters: Mapping[str, pb.InferParameter], what: str) -> None:
    if _SHM_KEYS.intersection(parameters.keys()):
        raise Unsupported(f"{what} uses shared memory, which deepserve does not support; send the data in the request")


# ---- InferenceResponse -> ModelInferResponse ----------------------------------------


def encode_response(response: InferenceResponse, final: bool | None = None) -> pb.ModelInferResponse:
    """Every output goes into ``raw_output_contents`` (BYTES length-prefixed).

    ``final``: on a stream, the value of the ``triton_final_response`` parameter (None: omit it).
    """
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    for tensor in response.outputs:
        data = tensor.data
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=data.shape)
        if tensor.datatype == "BYTES":
            message.raw_output_contents.append(dt.serialize_bytes(data))
        else:
            message.raw_output_contents.append(np.ascontiguousarray(data).tobytes())
    set_parameters(message.parameters, response.parameters)
    if final is not None:
        message.parameters[FINAL_RESPONSE].bool_param = final
    return message


def empty_final_response(request: InferenceRequest) -> pb.ModelInferResponse:
    """The empty response that closes a decoupled request's responses on a stream."""
    message = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    message.parameters[FINAL_RESPONSE].bool_param = True
    return message


# ---- metadata, statistics, repository ------------------------------------------------


def metadata_response(
    name: str, versions: tuple[str, ...], platform: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> pb.ModelMetadataResponse:
    def tensors(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]

    return pb.ModelMetadataResponse(
        name=name, versions=list(versions), platform=platform, inputs=tensors(inputs), outputs=tensors(outputs)
    )


def statistics_response(stats: list[dict]) -> pb.ModelStatisticsResponse:
    """The core's statistics (Triton's JSON shape) -> ``ModelStatisticsResponse``."""
    return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())


def index_response(rows: list[dict]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=r["name"], version=r.get("version", ""), state=r.get("state", ""), reason=r.get("reason", "")
            )
            for r in rows
        ]
    )


def load_parameters(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> tuple[str | None, dict[str, bytes]]:
    """``RepositoryModelLoad`` parameters -> (config JSON override, {"file:<version>/<name>": bytes})."""
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        which = value.WhichOneof("parameter_choice")
        if key == "config":
            if which != "string_param":
                raise InvalidInput("parameter 'config' must be the model config as a JSON string (string_param)")
            config = value.string_param
        elif key.startswith("file:"):
            if which != "bytes_param":
                raise InvalidInput(f"parameter '{key}' must carry the file's content as bytes_param")
            files[key] = value.bytes_param
    return config, files
