"""Runtime registry: a model config's platform/backend -> the module that runs it.

Modules are imported lazily so that a CPU host never imports tensorrt or torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from server.core.errors import InvalidInput
from server.runtimes.base import Runtime


@dataclass(frozen=True, slots=True)
class RuntimeKind:
    backend: str  # Triton's backend name
    platform: str  # Triton's platform name, reported in model metadata
    default_filename: str
    module: str  # module defining `create() -> Runtime`


KINDS: tuple[RuntimeKind, ...] = (
    RuntimeKind("onnxruntime", "onnxruntime_onnx", "model.onnx", "server.runtimes.onnxruntime"),
    RuntimeKind("tensorrt", "tensorrt_plan", "model.plan", "server.runtimes.tensorrt"),
    RuntimeKind("pytorch", "pytorch_libtorch", "model.pt", "server.runtimes.torch"),
)


def kind_for(platform: str, backend: str) -> RuntimeKind:
    """Resolve a config's ``platform`` / ``backend`` (either may be empty)."""
    for kind in KINDS:
        if (backend and backend == kind.backend) or (platform and platform == kind.platform):
            return kind
    wanted = backend or platform or "(none)"
    names = ", ".join(f"{k.backend} / {k.platform}" for k in KINDS)
    raise InvalidInput(f"unsupported backend/platform '{wanted}'; deepserve runs: {names}")


def create(kind: RuntimeKind) -> Runtime:
    return importlib.import_module(kind.module).create()
