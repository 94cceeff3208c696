"""The v2 protocol's tensor datatypes and how they map to numpy and to Triton's config enum.

BYTES tensors are numpy ``object`` arrays whose elements are ``bytes``.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from server.core.errors import InvalidInput

# wire datatype -> numpy dtype (BYTES -> object)
_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPES = frozenset(_NUMPY) | {"BF16"}
# FP16/BF16 have no JSON representation: they travel as binary / raw only.
BINARY_ONLY = frozenset({"FP16", "BF16"})


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype that holds ``datatype`` (BF16 is carried as raw uint16 words)."""
    if datatype == "BF16":
        return np.dtype(np.uint16)
    try:
        return _NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"unknown datatype '{datatype}'; expected one of {sorted(DATATYPES)}") from None


def datatype_of(array: np.ndarray) -> str:
    """The wire datatype for a numpy array."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    for name, dtype in _NUMPY.items():
        if dtype == array.dtype:
            return name
    raise InvalidInput(f"numpy dtype {array.dtype} has no v2 datatype")


def element_size(datatype: str) -> int:
    """Bytes per element for fixed-size datatypes (BYTES has none: returns 0)."""
    if datatype == "BYTES":
        return 0
    return numpy_dtype(datatype).itemsize


def config_to_wire(config_type: str) -> str:
    """Triton config enum name (``TYPE_FP32``) -> wire datatype (``FP32``)."""
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def wire_to_config(datatype: str) -> str:
    """Wire datatype (``FP32``) -> Triton config enum name (``TYPE_FP32``)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


# ---- BYTES tensors: each element is a 4-byte little-endian length, then the bytes ----


def serialize_bytes(array: np.ndarray) -> bytes:
    """Row-major, length-prefixed encoding of a BYTES tensor."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """Decode a length-prefixed BYTES payload into a flat object array.

    ``count``, when given, is the number of elements the shape promises; the payload must
    hold exactly that many and nothing after them.
    """
    view = memoryview(buffer)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput("BYTES tensor is truncated: a 4-byte length prefix is cut off")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(f"BYTES tensor is truncated: an element claims {length} bytes, {end - offset} remain")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise InvalidInput(f"BYTES tensor holds {len(items)} elements, its shape needs {count}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def tensor_from_bytes(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """Wrap one tensor's raw payload (binary extension or gRPC raw contents) without copying;
    the payload must hold exactly what ``shape`` of ``datatype`` needs."""
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            return deserialize_bytes(raw, count).reshape(shape)
        except InvalidInput as exc:
            raise InvalidInput(f"input '{name}': {exc.message}") from None
    expected = count * element_size(datatype)
    if len(raw) != expected:
        raise InvalidInput(f"input '{name}' has {len(raw)} bytes of data; shape {shape} of {datatype} needs {expected}")
    return np.frombuffer(raw, dtype=numpy_dtype(datatype)).reshape(shape)


def bytes_from_json(values: list) -> np.ndarray:
    """JSON strings (or nested lists of them) -> flat object array of ``bytes``."""
    flat = np.asarray(values, dtype=object).reshape(-1)
    out = np.empty(flat.size, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            out[i] = item.encode()
        elif isinstance(item, bytes | bytearray):
            out[i] = bytes(item)
        else:
            raise InvalidInput(f"BYTES data must be strings, got {type(item).__name__}")
    return out


def bytes_to_json(array: np.ndarray) -> list[str]:
    """Object array of ``bytes`` -> flat list of str for a JSON response.

    Elements that are not UTF-8 cannot travel in JSON; they need the binary extension.
    """
    out: list[str] = []
    for item in array.reshape(-1):
        if isinstance(item, bytes):
            try:
                out.append(item.decode())
            except UnicodeDecodeError:
                raise InvalidInput(
                    "output holds bytes that are not UTF-8; request it with binary_data=true"
                ) from None
        else:
            out.append(str(item))
    return out
