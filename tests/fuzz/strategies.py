"""Hypothesis strategies for v2 infer requests: tensors close to what the fuzz server's
models take (so requests reach validation, batching and the runtimes) with random
mutations of names, datatypes, shapes, sizes and parameters, plus plain random values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from server.core.datatypes import DATATYPES, element_size

# The fuzz server's models: input name -> (datatype, dims with the batch dim as -1 where it batches).
MODELS: dict[str, dict[str, tuple[str, list[int]]]] = {
    "simple": {"INPUT0": ("FP32", [-1, 16]), "INPUT1": ("FP32", [-1, 16])},
    "add_sub_twice": {"A": ("FP32", [-1, 16]), "B": ("FP32", [-1, 16])},
    "types": {
        "S": ("BYTES", [-1]),
        "H": ("FP16", [-1]),
        "B": ("BOOL", [-1]),
        "I64": ("INT64", [-1]),
        "I8": ("INT8", [-1]),
        "U16": ("UINT16", [-1]),
        "F64": ("FP64", [-1]),
    },
    "decoupled": {"INPUT": ("FP32", [-1])},
    "strings": {"TEXT": ("BYTES", [-1, 1])},
    "reloadable": {"INPUT0": ("FP32", [-1, 16]), "INPUT1": ("FP32", [-1, 16])},
    "no_such_model": {"INPUT0": ("FP32", [-1, 16])},
}
OUTPUTS: dict[str, list[str]] = {
    "simple": ["OUTPUT0", "OUTPUT1"],
    "reloadable": ["OUTPUT0", "OUTPUT1"],
    "add_sub_twice": ["TWO_A", "TWO_B"],
    "types": [f"{n}_OUT" for n in MODELS["types"]],
    "decoupled": ["INPUT_OUT"],
    "strings": ["TEXT_OUT"],
    "no_such_model": ["OUTPUT0"],
}
DATATYPE_LIST = sorted(DATATYPES)
RESERVED_PARAMETERS = [
    "priority",
    "timeout",
    "binary_data_output",
    "triton_enable_empty_final_response",
    "sequence_id",
    "sequence_start",
    "classification",
    "binary_data_size",
    "shared_memory_region",
]

names = st.text(min_size=0, max_size=12)
versions = st.one_of(st.sampled_from(["", "1", "2", "01", "999999999999999999999"]), st.text(max_size=6))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)


@dataclass
class Tensor:
    """One drawn input: ``values`` is a numpy array whose size may disagree with ``shape``,
    ``raw`` its bytes as the binary extension / raw_input_contents carry them."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray
    raw: bytes
    parameters: dict[str, Any] = field(default_factory=dict)


def _numpy_dtype(datatype: str) -> np.dtype:
    from server.core.datatypes import numpy_dtype

    return numpy_dtype(datatype)


@st.composite
def tensors(draw, name: str, datatype: str, dims: list[int], mutate: bool = True) -> Tensor:
    """A tensor for an input of ``datatype`` / ``dims``; with ``mutate``, sometimes not quite."""
    if mutate and draw(st.integers(0, 9)) == 0:
        name = draw(st.one_of(names, st.just(name + "_")))
    if mutate and draw(st.integers(0, 7)) == 0:
        datatype = draw(st.one_of(st.sampled_from(DATATYPE_LIST), st.text(max_size=6)))
    batch = st.integers(1, 4) | st.sampled_from([0, 65]) if mutate else st.integers(1, 4)  # `strings` batches up to 4
    shape = [draw(batch) if d == -1 else d for d in dims]
    if mutate and draw(st.integers(0, 7)) == 0:
        shape = draw(st.lists(st.integers(0, 6), max_size=4))
    count = math.prod(shape)
    if mutate and draw(st.integers(0, 7)) == 0:
        count = max(0, count + draw(st.sampled_from([-1, 1, 3])))
    if datatype == "BYTES":
        element = st.binary(max_size=24) if mutate else st.text(max_size=12).map(str.encode)  # `strings` takes text
        items = draw(st.lists(element, min_size=count, max_size=count))
        values = np.empty(len(items), dtype=object)
        values[:] = items
        raw = b"".join(len(b).to_bytes(4, "little") + b for b in items)
    else:
        size = element_size(datatype) if datatype in DATATYPES else 4
        raw = draw(st.binary(min_size=count * size, max_size=count * size))
        dtype = _numpy_dtype(datatype) if datatype in DATATYPES else np.dtype(np.float32)
        values = np.frombuffer(raw, dtype=dtype) if len(raw) % dtype.itemsize == 0 else np.zeros(0, np.float32)
        if datatype == "BOOL":
            values = values.astype(bool)
        elif not mutate and values.dtype.kind == "f":
            values = np.nan_to_num(values, posinf=1.0, neginf=-1.0)  # JSON has no NaN
            raw = values.tobytes()
    if mutate and draw(st.integers(0, 9)) == 0:
        raw = draw(st.binary(max_size=64))
    return Tensor(name, datatype, shape, values, raw)


@st.composite
def model_requests(draw) -> tuple[bool, str, str, list[Tensor], list[tuple[str, dict]], dict[str, Any], Any]:
    """(mutate, model, version, inputs, requested outputs, request parameters, id).

    A third of the requests are well-formed (``mutate`` False: only sizes, values,
    encodings and valid options vary), so they reach batching and the runtimes; the
    rest carry random mutations."""
    mutate = draw(st.integers(0, 2)) > 0
    model = draw(st.sampled_from(sorted(MODELS)))
    if not mutate:
        model = draw(st.sampled_from([m for m in sorted(MODELS) if m not in ("decoupled", "no_such_model")]))
        spec = MODELS[model]
        inputs = [draw(tensors(n, *spec[n], mutate=False)) for n in spec]
        rows = {t.shape[0] for t in inputs}
        if len(rows) > 1 and model != "types":
            inputs = [Tensor(t.name, t.datatype, [inputs[0].shape[0], *t.shape[1:]], *_resize(t, inputs[0].shape[0])) for t in inputs]
        outputs = [(o, {"binary_data": draw(st.booleans())}) for o in draw(st.lists(st.sampled_from(OUTPUTS[model]), unique=True))]
        if model in ("simple", "reloadable") and outputs and draw(st.booleans()):
            outputs[0] = (outputs[0][0], {"classification": draw(st.integers(0, 20))})
        parameters = draw(
            st.fixed_dictionaries(
                {}, optional={"binary_data_output": st.booleans(), "priority": st.integers(0, 1), "timeout": st.integers(0, 10**8)}
            )
        )
        return mutate, model, draw(st.sampled_from(["", "1"])), inputs, outputs, parameters, draw(st.text(max_size=8))
    version = draw(st.sampled_from(["", "1"])) if draw(st.integers(0, 5)) else draw(versions)
    spec = dict(MODELS[model])
    chosen = [n for n in spec if draw(st.integers(0, 11))]  # now and then an input is left out
    inputs = [draw(tensors(n, *spec[n])) for n in chosen]
    if draw(st.integers(0, 9)) == 0:
        inputs.append(draw(tensors(draw(names), draw(st.sampled_from(DATATYPE_LIST)), [-1])))
    if inputs and draw(st.integers(0, 19)) == 0:
        inputs.append(inputs[0])  # the same input twice
    outputs = []
    for out in draw(st.lists(st.sampled_from(OUTPUTS[model]) | names, max_size=3)):
        params: dict[str, Any] = {}
        if draw(st.booleans()):
            params["binary_data"] = draw(st.booleans() | json_scalars)
        if draw(st.integers(0, 3)) == 0:
            params["classification"] = draw(st.integers(-2, 20) | json_scalars)
        outputs.append((out, params))
    parameters = draw(st.dictionaries(st.sampled_from(RESERVED_PARAMETERS) | st.text(max_size=8), json_scalars, max_size=4))
    request_id = draw(st.one_of(st.just(""), st.text(max_size=8), json_scalars))
    return mutate, model, version, inputs, outputs, parameters, request_id


def _resize(tensor: Tensor, rows: int) -> tuple[np.ndarray, bytes]:
    """``tensor``'s values cut or tiled to ``rows`` rows (same row size), and their raw bytes."""
    per_row = math.prod(tensor.shape[1:])
    flat = np.resize(tensor.values, rows * per_row) if tensor.values.size else np.zeros(rows * per_row, tensor.values.dtype)
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in flat) if flat.dtype == object else flat.tobytes()
    return flat, raw
