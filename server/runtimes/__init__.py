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
    filenames: tuple[str, ...]  # model files it loads, looked for in this order
    module: str  # module defining `create() -> Runtime`

    @property
    def default_filename(self) -> str:
        return self.filenames[0]


KINDS: tuple[RuntimeKind, ...] = (
    RuntimeKind("onnxruntime", "onnxruntime_onnx", ("model.onnx",), "server.runtimes.onnxruntime"),
    RuntimeKind("tensorrt", "tensorrt_plan", ("model.plan",), "server.runtimes.tensorrt"),
    # model.pt2: a torch.export program; model.pt: TorchScript (Triton's default name).
    RuntimeKind("pytorch", "pytorch_libtorch", ("model.pt2", "model.pt"), "server.runtimes.torch"),
    RuntimeKind("python", "", ("model.py",), "server.runtimes.python"),
)


def kind_for(platform: str, backend: str) -> RuntimeKind:
    """Resolve a config's ``platform`` / ``backend`` (either may be empty)."""
    for kind in KINDS:
        if (backend and backend == kind.backend) or (platform and platform == kind.platform):
            return kind
    wanted = backend or platform or "(none)"
    names = ", ".join(f"{k.backend} / {k.platform}" if k.platform else k.backend for k in KINDS)
    raise InvalidInput(f"unsupported backend/platform '{wanted}'; deepserve runs: {names}, and ensemble")


def create(kind: RuntimeKind) -> Runtime:
    return importlib.import_module(kind.module).create()
