"""The messages every frontend turns a wire request into, and back.

A frontend decodes the wire format into an :class:`InferenceRequest` whose tensors are
numpy arrays (BYTES tensors are ``object`` arrays of ``bytes``), hands it to
:class:`server.service.InferenceService`, and encodes the :class:`InferenceResponse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the model declares it.

    ``shape`` is the full shape including the leading batch dimension (-1) when the
    model batches; -1 marks any variable dimension.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for; ``class_count`` > 0 applies the classification extension."""

    name: str
    class_count: int = 0
    binary: bool | None = None  # binary-tensor extension preference; None = request default


@dataclass(slots=True)
class InferenceRequest:
    model_name: str
    inputs: dict[str, np.ndarray]
    model_version: str = ""  # "" = the model's latest ready version
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty = all outputs
    parameters: dict[str, Any] = field(default_factory=dict)
    # Declared wire datatypes of the inputs (BYTES vs the array's dtype, BF16 vs uint16).
    datatypes: dict[str, str] = field(default_factory=dict)
    # The client's deadline (a gRPC deadline, HTTP's X-Request-Timeout-Ms), as a
    # time.monotonic() instant; None = none. Work not started by then is never run.
    deadline_s: float | None = None


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray  # shaped; BYTES as object array of bytes
    binary: bool | None = None


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
