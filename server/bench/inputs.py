"""Request tensors for ``deepserve bench``: synthesized from a model's v2 metadata, or read from
a user's file (perf_analyzer's ``--input-data`` JSON, or ``.npz`` with one array per input), and
encoded once per sweep as an HTTP JSON body, an HTTP binary-tensor body, or a gRPC request.

Synthesized shapes: every ``-1`` of the metadata shape becomes 1 unless ``--shape NAME:d1,d2,...``
gives the whole shape. Values are seeded random numbers in each datatype's range (BOOL random,
BYTES short ASCII strings), so a run is repeatable.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.datatypes import DATATYPES, numpy_dtype, serialize_bytes

# v2 datatype -> numpy dtype (BYTES: object arrays of bytes): the server's own table.
DTYPES: dict[str, np.dtype] = {name: numpy_dtype(name) for name in sorted(DATATYPES - {"BF16"})}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    data: np.ndarray  # BYTES: an object array of ``bytes``

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.data.shape]


def parse_shapes(values: Sequence[str]) -> dict[str, list[int]]:
    """``["INPUT0:1,16", "X:3"]`` -> ``{"INPUT0": [1, 16], "X": [3]}`` (perf_analyzer's ``--shape``)."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape {value!r}: expected NAME:d1,d2,...")
        try:
            shape = [int(d) for d in dims.split(",") if d.strip()]
        except ValueError:
            raise ValueError(f"--shape {value!r}: dimensions must be integers") from None
        if not shape or any(d < 0 for d in shape):
            raise ValueError(f"--shape {value!r}: dimensions must be >= 0")
        shapes[name] = shape
    return shapes


def _resolve_shape(spec: Mapping, overrides: Mapping[str, list[int]]) -> list[int]:
    name, shape = spec["name"], [int(d) for d in spec.get("shape", [])]
    if name in overrides:
        given = overrides[name]
        if len(given) != len(shape) or any(m >= 0 and m != g for m, g in zip(shape, given, strict=False)):
            raise ValueError(f"--shape {name}:{','.join(map(str, given))} does not fit the model's shape {shape}")
        return list(given)
    return [1 if d < 0 else d for d in shape]


def random_array(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    if datatype not in DTYPES:
        raise ValueError(f"datatype {datatype!r} cannot be synthesized; pass --input-data")
    dtype = DTYPES[datatype]
    if datatype == "BYTES":
        flat = [f"s{int(v)}".encode() for v in rng.integers(0, 1000, size=int(np.prod(shape, dtype=np.int64)))]
        return np.array(flat, dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f":
        return rng.random(size=shape, dtype=np.float32).astype(dtype)
    return rng.integers(0, 100, size=shape).astype(dtype)  # small values fit every integer type


def synthesize(metadata: Mapping, overrides: Mapping[str, list[int]] | None = None, seed: int = 0) -> list[Tensor]:
    """One request's inputs from ``GET /v2/models/{m}``'s metadata."""
    overrides = dict(overrides or {})
    names = {spec["name"] for spec in metadata.get("inputs", [])}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"--shape names {unknown}, which the model does not take (inputs: {sorted(names)})")
    rng = np.random.default_rng(seed)
    return [Tensor(spec["name"], spec["datatype"], random_array(spec["datatype"], _resolve_shape(spec, overrides), rng))
            for spec in metadata.get("inputs", [])]


def _as_array(datatype: str, values, shape: Sequence[int] | None) -> np.ndarray:
    if datatype == "BYTES":
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in np.asarray(values, dtype=object).reshape(-1)]
        array = np.array(flat, dtype=object)
    else:
        array = np.asarray(values, dtype=DTYPES[datatype])
    return array.reshape(shape) if shape is not None else array


def _fit_shape(spec: Mapping, array: np.ndarray, overrides: Mapping[str, list[int]]) -> list[int]:
    """A flat ``content`` list: its shape from --shape, else the metadata shape with the one
    variable dimension inferred (perf_analyzer's rule)."""
    if spec["name"] in overrides:
        return overrides[spec["name"]]
    shape = [int(d) for d in spec.get("shape", [])]
    known = int(np.prod([d for d in shape if d >= 0], dtype=np.int64)) or 1
    unknown = [i for i, d in enumerate(shape) if d < 0]
    if not unknown:
        return shape
    fitted = [d if d >= 0 else 1 for d in shape]
    fitted[unknown[0]] = max(1, array.size // known)
    return fitted


def load_input_data(path: Path, metadata: Mapping, overrides: Mapping[str, list[int]] | None = None) -> list[list[Tensor]]:
    """Requests from a file: ``.npz`` (one array per input name: one request) or perf_analyzer's
    JSON (``{"data": [{"INPUT0": [...] | {"content": [...], "shape": [...]} | {"b64": "..."}}, ...]}``:
    one request per entry, cycled through during the run)."""
    overrides = dict(overrides or {})
    specs = {spec["name"]: spec for spec in metadata.get("inputs", [])}
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            entries = [{name: npz[name] for name in npz.files}]
    else:
        document = json.loads(path.read_text())
        entries = document.get("data") if isinstance(document, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: expected perf_analyzer's JSON, {{\"data\": [{{input: values}}, ...]}}")
    requests: list[list[Tensor]] = []
    for i, entry in enumerate(entries):
        missing = sorted(set(specs) - set(entry))
        if missing:
            raise ValueError(f"{path}: request {i} lacks input(s) {missing}")
        unknown = sorted(set(entry) - set(specs))
        if unknown:
            raise ValueError(f"{path}: request {i} names input(s) {unknown} the model does not take")
        tensors = []
        for name, spec in specs.items():
            value, datatype = entry[name], spec["datatype"]
            if isinstance(value, np.ndarray):
                array = value.astype(object) if datatype == "BYTES" else value.astype(DTYPES[datatype])
                if datatype == "BYTES":
                    array = _as_array("BYTES", array, array.shape)
            elif isinstance(value, dict) and "b64" in value:
                raw = base64.b64decode(value["b64"])
                array = (np.array([raw], dtype=object) if datatype == "BYTES"
                         else np.frombuffer(raw, dtype=DTYPES[datatype]).copy())
                array = array.reshape(value.get("shape") or _fit_shape(spec, array, overrides))
            else:
                content = value["content"] if isinstance(value, dict) else value
                shape = value.get("shape") if isinstance(value, dict) else None
                array = _as_array(datatype, content, None)
                if shape is None:
                    shape = _fit_shape(spec, array, overrides) if array.ndim <= 1 else list(array.shape)
                array = array.reshape(shape)
            tensors.append(Tensor(name, datatype, array))
        requests.append(tensors)
    return requests


# -- encodings ---------------------------------------------------------------------------------


def _raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data).tobytes()


def _json_values(tensor: Tensor) -> list:
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8") for v in tensor.data.reshape(-1)]
    return tensor.data.reshape(-1).tolist()


def _utf8(tensor: Tensor) -> bool:
    """BYTES that are not text go as binary data in the JSON encoding too."""
    if tensor.datatype != "BYTES":
        return True
    try:
        for v in tensor.data.reshape(-1):
            v.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


NO_JSON_FORM = ("FP16", "BF16")  # the v2 JSON form has no half floats: these travel as binary data


def http_body(tensors: Sequence[Tensor], binary: bool, outputs: Sequence[Mapping] = ()) -> tuple[bytes, dict[str, str]]:
    """The v2 ``/infer`` body and its headers: binary tensors after a JSON header
    (``Inference-Header-Content-Length``) with binary outputs asked for too; or JSON tensors,
    where FP16 / BF16 inputs still go as binary data (they have no JSON form) and, when the
    model has such ``outputs`` (metadata), every output is named with those asked for binary;
    BYTES that are not UTF-8 go as binary data too."""
    raws = [_raw(t) if binary or t.datatype in NO_JSON_FORM or not _utf8(t) else None for t in tensors]
    specs = []
    for t, raw in zip(tensors, raws, strict=True):
        spec: dict = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if raw is None:
            spec["data"] = _json_values(t)
        else:
            spec["parameters"] = {"binary_data_size": len(raw)}
        specs.append(spec)
    header: dict = {"inputs": specs}
    if binary:
        header["parameters"] = {"binary_data_output": True}
    elif any(o.get("datatype") in NO_JSON_FORM for o in outputs):
        header["outputs"] = [{"name": o["name"], **({"parameters": {"binary_data": True}}
                                                   if o.get("datatype") in NO_JSON_FORM else {})} for o in outputs]
    head = json.dumps(header).encode()
    if all(r is None for r in raws):
        return head, {"content-type": "application/json"}
    return head + b"".join(r for r in raws if r is not None), {
        "content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}


def grpc_request(model: str, version: str, tensors: Sequence[Tensor]):
    """A ``ModelInferRequest`` with every input in ``raw_input_contents``."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model, model_version=version or "")
    for t in tensors:
        request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        request.raw_input_contents.append(_raw(t))
    return request
