"""TensorRT: serves ``model.plan`` engines (built by ``deepserve export tensorrt``).

One deserialized engine, one execution context and one CUDA stream per instance.
``execute`` sets the batch's input shapes (within the engine's optimization profile),
copies inputs to device buffers that grow as needed, runs ``execute_async_v3`` and
copies the outputs back. tensorrt and the CUDA bindings (cuda-python) are imported in
``load``: importing this module on a CPU host imports neither.

An engine only runs on the GPU model and TensorRT version it was built for; a plan
from elsewhere fails to load with a message that says to rebuild it.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np

from server.core.errors import InvalidInput, ModelError, Unavailable
from server.core.types import TensorSpec
from server.runtimes.base import RuntimeOptions, Signature

log = logging.getLogger(__name__)

# numpy dtype -> wire datatype
_NP_TO_WIRE = {
    np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.int8): "INT8",
    np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
}


def host_problem(device: str) -> str | None:
    """Why TensorRT cannot run on ``device`` here, in one sentence; None when it can."""
    if not device.startswith("cuda"):
        return (f"TensorRT plans run only on an NVIDIA GPU, but this instance is on '{device}' "
                "(this host has no GPU, or the config's instance_group asks for KIND_CPU).")
    if shutil.which("nvidia-smi") is None:
        return "TensorRT plans need an NVIDIA GPU and driver, and this host has none (nvidia-smi is not on PATH)."
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed here: install the GPU extra (pip install 'deepserve[gpu]')."
    if importlib.util.find_spec("cuda") is None:
        return "The CUDA Python bindings are not installed here: install the GPU extra (pip install 'deepserve[gpu]')."
    return None


def cuda_runtime():
    """cuda-python's runtime API module, under its new name or its old one."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]
    return cudart


def check_cuda(result):
    """cuda-python returns (error, *values): raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ModelError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


class _DeviceBuffer:
    """A device allocation that grows (never shrinks) to the largest batch seen."""

    def __init__(self, cudart) -> None:
        self._cudart = cudart
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(check_cuda(self._cudart.cudaMalloc(max(nbytes, 1))))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            check_cuda(self._cudart.cudaFree(self.ptr))
        self.ptr, self.nbytes = 0, 0


class TensorRTRuntime:
    def __init__(self) -> None:
        self._engine = None
        self._context = None
        self._stream = None
        self._cudart = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._buffers: dict[str, _DeviceBuffer] = {}

    def load(self, model_path: Path, options: RuntimeOptions) -> Signature:
        problem = host_problem(options.device)
        if problem is not None:
            raise Unavailable(problem)
        import tensorrt as trt

        cudart = self._cudart = cuda_runtime()
        check_cuda(cudart.cudaSetDevice(int(options.device.partition(":")[2] or 0)))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(model_path.read_bytes())
        if self._engine is None:
            raise InvalidInput(f"TensorRT cannot load {model_path.name}: it was built for another GPU or TensorRT "
                               f"version (this is TensorRT {trt.__version__}); rebuild it with `deepserve export tensorrt`")
        self._context = self._engine.create_execution_context()
        self._stream = check_cuda(cudart.cudaStreamCreate())
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            spec = TensorSpec(name, _NP_TO_WIRE.get(dtype, "FP32"), shape)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(spec)
            self._dtypes[name] = dtype
            self._buffers[name] = _DeviceBuffer(cudart)
        self._inputs = [s.name for s in inputs]
        self._outputs = [s.name for s in outputs]
        log.info("loaded TensorRT engine %s on %s", model_path, options.device)
        return Signature(tuple(inputs), tuple(outputs))

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise ModelError("the model is not loaded")
        cudart, ctx, stream = self._cudart, self._context, self._stream
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = []  # keep host arrays alive until the stream has finished with them
        for name in self._inputs:
            host = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
            hosts.append(host)
            if not ctx.set_input_shape(name, host.shape):
                raise InvalidInput(f"input '{name}' shape {host.shape} is outside the engine's optimization profile")
            ptr = self._buffers[name].ensure(host.nbytes)
            check_cuda(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, stream))
            ctx.set_tensor_address(name, ptr)
        results = {}
        for name in self._outputs:
            host = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtypes[name])
            results[name] = host
            ctx.set_tensor_address(name, self._buffers[name].ensure(host.nbytes))
        if not ctx.execute_async_v3(int(stream)):
            raise ModelError("TensorRT failed to execute the batch")
        for name, host in results.items():
            check_cuda(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name].ptr, host.nbytes, d2h, stream))
        check_cuda(cudart.cudaStreamSynchronize(stream))
        return results

    def unload(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers.clear()
        if self._stream is not None:
            check_cuda(self._cudart.cudaStreamDestroy(self._stream))
        self._context = self._engine = self._stream = None


def create() -> TensorRTRuntime:
    return TensorRTRuntime()
