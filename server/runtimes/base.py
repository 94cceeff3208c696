"""The small protocol every runtime implements.

A runtime knows nothing about batching, HTTP or metrics: it is handed a whole batch
(a dict of numpy arrays whose first dimension is the batch when the model batches)
and returns a dict of numpy arrays. ``execute`` is called from a worker thread, one
call at a time per instance; it must release the GIL while it computes.

Heavy imports (onnxruntime, tensorrt, torch) stay inside the runtime modules, so that
importing the server on a CPU host never imports them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from server.core.types import TensorSpec


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What the repository tells a runtime instance when loading it."""

    device: str = "cpu"  # "cpu" or "cuda:<index>"
    model_name: str = ""
    version: str = ""
    # The config's declared tensors (clients' view: a leading -1 when the model batches);
    # empty where the config leaves them to be completed from the model file.
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = 0
    intra_op_threads: int = 0  # 0: let the runtime choose
    parameters: tuple[tuple[str, str], ...] = ()  # the config's `parameters` map, as strings
    # Execution providers asked for in the config (ONNX Runtime names); empty = auto.
    providers: tuple[str, ...] = ()

    def parameter(self, key: str, default: str = "") -> str:
        return dict(self.parameters).get(key, default)


@dataclass(frozen=True, slots=True)
class Signature:
    """The I/O a loaded model file declares; used to auto-complete a missing config.

    Shapes are the file's own (batch dimension included, -1 for dynamic axes).
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class Runtime(Protocol):
    def load(self, model_path: Path, options: RuntimeOptions) -> Signature:
        """Load the model file; return its declared signature. Raise on a broken file."""
        ...

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Outputs keep the batch as their first dimension."""
        ...

    def unload(self) -> None:
        """Free what ``load`` took (sessions, engines, device memory)."""
        ...


@runtime_checkable
class StreamingRuntime(Runtime, Protocol):
    """A runtime that can serve decoupled models: zero or more responses per request."""

    def execute_stream(self, inputs: dict[str, np.ndarray]) -> Iterable[dict[str, np.ndarray]]:
        """Run one request; each item yielded is one response. Closing the iterator early
        (the client went away) must free what it holds."""
        ...
