"""Checks an InferenceRequest against the model's declared inputs before it is queued."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from server.core.datatypes import numpy_dtype
from server.core.errors import InvalidInput
from server.core.types import InferenceRequest, TensorSpec

MAX_NAME_BYTES = 255  # a model name is a folder name: NAME_MAX on Linux
MAX_VERSION_DIGITS = 19  # int64, as Triton's versions


def _shown(text: str) -> str:
    """A client's string, quoted for an error message: control characters escaped, cut short."""
    shown = text if len(text) <= 64 else text[:64] + "..."
    return repr(shown) if not shown.isprintable() else f"'{shown}'"


def check_model_name(name: str) -> str:
    """A model name as given on the wire: one plain folder name of the repository.

    Refused (InvalidInput): empty, ``.``/``..`` and other names starting with a dot (the
    repository skips hidden folders), a path separator, NUL or another control character,
    more than 255 bytes. So a name never reaches outside the repository folder.
    """
    if not name:
        raise InvalidInput("model name is empty")
    problem = ""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"it is longer than {MAX_NAME_BYTES} bytes"
    elif name.startswith("."):
        problem = "it starts with '.'"
    elif "/" in name or "\\" in name:
        problem = "it holds a path separator"
    elif not name.isprintable():
        problem = "it holds a control character"
    if problem:
        raise InvalidInput(f"invalid model name {_shown(name)}: {problem}; a model name is one folder name of the repository")
    return name


def check_version(version: str) -> str:
    """A model version as given on the wire: empty (the latest) or a number, as in Triton."""
    if version and not (version.isascii() and version.isdigit() and len(version) <= MAX_VERSION_DIGITS):
        raise InvalidInput(f"model version must be a number, got {_shown(version)}")
    return version


def check_request(
    request: InferenceRequest,
    inputs: Mapping[str, TensorSpec],
    outputs: tuple[TensorSpec, ...],
    max_batch_size: int,
) -> int:
    """Validate names, datatypes, shapes and batch size; return the request's row count
    (1 for a model that does not batch)."""
    unknown = [name for name in request.inputs if name not in inputs]
    if unknown:
        raise InvalidInput(
            f"unexpected input(s) {unknown} for model '{request.model_name}'; it takes {sorted(inputs)}"
        )
    missing = [name for name, spec in inputs.items() if not spec.optional and name not in request.inputs]
    if missing:
        raise InvalidInput(f"missing input(s) {missing} for model '{request.model_name}'")
    rows: int | None = None
    for name, array in request.inputs.items():
        spec = inputs[name]
        declared = request.datatypes.get(name)
        if declared is not None and declared != spec.datatype:
            raise InvalidInput(f"input '{name}' has datatype {declared}; the model expects {spec.datatype}")
        if declared is None and array.dtype != numpy_dtype(spec.datatype):
            raise InvalidInput(f"input '{name}' has dtype {array.dtype}; the model expects {spec.datatype}")
        _check_shape(name, array.shape, spec.shape)
        if max_batch_size > 0:
            if array.shape[0] < 1:
                raise InvalidInput(f"input '{name}' has batch size 0; send at least one row")
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(f"inputs disagree on the batch size: '{name}' has {array.shape[0]} rows, others {rows}")
            rows = array.shape[0]
    if max_batch_size > 0 and rows is not None and rows > max_batch_size:
        raise InvalidInput(
            f"batch size {rows} exceeds the model's max_batch_size {max_batch_size}; split the request"
        )
    names = {o.name for o in outputs}
    for requested in request.outputs:
        if requested.name not in names:
            raise InvalidInput(f"unknown output '{requested.name}' requested; the model has {sorted(names)}")
        if requested.class_count < 0:
            raise InvalidInput("classification count must be positive")
    return rows if max_batch_size > 0 and rows is not None else 1


def check_utf8(request: InferenceRequest, names: frozenset[str]) -> None:
    """BYTES inputs that the runtime takes as text must be UTF-8; checked before queueing so
    that one bad request never fails the batch it would have joined."""
    for name in names & request.inputs.keys():
        for item in request.inputs[name].reshape(-1):
            try:
                item.decode() if isinstance(item, bytes) else None
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{name}' holds bytes that are not UTF-8; this model takes text") from None


def shape_matches(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """``shape`` fits a declared shape whose -1 entries take any size."""
    return len(shape) == len(expected) and all(e == -1 or e == s for s, e in zip(shape, expected, strict=True))


def _check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if not shape_matches(shape, expected):
        shown = "[" + ",".join("-1" if d == -1 else str(d) for d in expected) + "]"
        raise InvalidInput(f"input '{name}' has shape {list(shape)}; the model expects {shown} (-1 = any)")


def classify(array: np.ndarray, k: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """Triton's classification extension: the top ``k`` of each row as
    ``b"<value>:<index>[:<label>]"``, shape ``[batch, k]`` (or ``[k]`` unbatched)."""
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for r, indices in enumerate(order):
        for c, index in enumerate(indices):
            text = f"{float(rows[r, index]):f}:{int(index)}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[r, c] = text.encode()
    return out if batched else out.reshape(k)
