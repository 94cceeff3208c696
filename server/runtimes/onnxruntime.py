"""ONNX Runtime: one InferenceSession per instance, providers chosen from the host.

Provider order, unless the config names its own: TensorRT EP, CUDA EP (when the
instance is on a GPU and the installed onnxruntime has them), then CPU. A config picks
providers with Triton's ``optimization { execution_accelerators { gpu_execution_accelerator
[{ name: "tensorrt" }] } }`` or with the parameter ``execution_providers`` (a comma list of
ONNX Runtime provider names).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from server.core.errors import InvalidInput, ModelError
from server.core.types import TensorSpec
from server.runtimes.base import RuntimeOptions, Signature

log = logging.getLogger(__name__)

# ONNX Runtime's tensor type strings -> wire datatypes
ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def choose_providers(options: RuntimeOptions, available: list[str]) -> list[str | tuple[str, dict]]:
    """The provider list for one session (pure: tested without a GPU)."""
    if options.providers:
        missing = [p for p in options.providers if p not in available]
        if missing:
            raise InvalidInput(f"execution provider(s) {missing} are not available here; available: {available}")
        return list(options.providers)
    providers: list[str | tuple[str, dict]] = []
    if options.device.startswith("cuda"):
        device_id = int(options.device.partition(":")[2] or 0)
        if "TensorrtExecutionProvider" in available and options.parameter("disable_tensorrt_ep") != "true":
            providers.append(("TensorrtExecutionProvider", {"device_id": device_id, "trt_engine_cache_enable": True}))
        if "CUDAExecutionProvider" in available:
            providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    providers.append("CPUExecutionProvider")
    return providers


class OnnxRuntime:
    def __init__(self) -> None:
        self._session = None
        self._output_names: list[str] = []
        self._bytes_inputs: set[str] = set()

    def load(self, model_path: Path, options: RuntimeOptions) -> Signature:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if options.intra_op_threads > 0:
            so.intra_op_num_threads = options.intra_op_threads
        # Spinning threads burn the cores the HTTP front end and other instances need.
        so.add_session_config_entry("session.intra_op.allow_spinning", options.parameter("allow_spinning", "0"))
        providers = choose_providers(options, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InvalidInput(f"ONNX Runtime cannot load {model_path.name}: {exc}") from None
        log.info("loaded %s with providers %s", model_path, self._session.get_providers())
        inputs = tuple(_spec(arg) for arg in self._session.get_inputs())
        outputs = tuple(_spec(arg) for arg in self._session.get_outputs())
        self._output_names = [o.name for o in outputs]
        self._bytes_inputs = {i.name for i in inputs if i.datatype == "BYTES"}
        return Signature(inputs, outputs)

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise ModelError("the model is not loaded")
        try:
            feed = {k: (_as_str(v) if k in self._bytes_inputs else v) for k, v in inputs.items()}
        except UnicodeDecodeError:
            raise InvalidInput("ONNX Runtime string tensors must be UTF-8; a BYTES element is not") from None
        try:
            results = self._session.run(self._output_names, feed)
        except Exception as exc:
            raise ModelError(f"ONNX Runtime failed: {exc}") from None
        return dict(zip(self._output_names, results, strict=True))

    def unload(self) -> None:
        self._session = None

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers() if self._session is not None else []


def _spec(arg) -> TensorSpec:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        raise InvalidInput(f"tensor '{arg.name}' has type {arg.type}, which deepserve does not serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def _as_str(array: np.ndarray) -> np.ndarray:
    """ONNX string tensors take str, not bytes."""
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[object])(array)


def create() -> OnnxRuntime:
    return OnnxRuntime()
