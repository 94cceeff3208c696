"""ONNX -> TensorRT engine (``.plan``): FP16, INT8 (explicit QDQ or a calibrator), one
optimization profile for the dynamic batch, a timing cache, and an engine cache.

The engine cache is keyed by the ONNX bytes, the build options, the GPU model, its
compute capability and the TensorRT version: an engine only runs on the GPU and
TensorRT it was built for, and with the key a restart never rebuilds what it has.

GPU only. On a host without one every entry point raises :class:`GpuUnavailable`
with one sentence saying why.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("DEEPSERVE_TRT_CACHE", Path.home() / ".cache" / "deepserve" / "tensorrt"))
PRECISIONS = ("fp32", "fp16", "int8")


class GpuUnavailable(RuntimeError):
    """TensorRT cannot run here (no GPU, or no tensorrt package)."""


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    @classmethod
    def from_config(cls, max_batch_size: int, preferred_batch_size: tuple[int, ...] = ()) -> BatchProfile:
        """min 1; opt = the largest preferred batch (what the batcher aims for), else max."""
        opt = max((b for b in preferred_batch_size if b <= max_batch_size), default=max_batch_size)
        return cls(1, opt, max_batch_size)


@dataclass(frozen=True)
class EngineSpec:
    precision: str = "fp16"  # fp32 | fp16 | int8 (int8 also allows fp16 kernels)
    profile: BatchProfile = BatchProfile(1, 32, 64)
    workspace_bytes: int = 1 << 30
    cache_dir: Path = DEFAULT_CACHE_DIR
    # For int8 on a graph without Q/DQ nodes: real samples for an entropy calibrator.
    calibration: dict[str, np.ndarray] | None = field(default=None, compare=False, hash=False)


def require_gpu() -> None:
    if shutil.which("nvidia-smi") is None:
        raise GpuUnavailable("TensorRT needs an NVIDIA GPU, and this host has none (nvidia-smi is not on PATH).")
    if importlib.util.find_spec("tensorrt") is None:
        raise GpuUnavailable("TensorRT is not installed here: install the GPU extra (pip install 'deepserve[gpu]').")


@functools.cache
def device_key(device_index: int = 0) -> str:
    """``<gpu name>-sm<major><minor>-trt<version>``: what an engine is only valid for."""
    require_gpu()
    import tensorrt as trt

    out = subprocess.run(
        ["nvidia-smi", f"--id={device_index}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    name, cap = (part.strip() for part in out.split(","))
    return f"{name.replace(' ', '_')}-sm{cap.replace('.', '')}-trt{trt.__version__}"


def engine_cache_key(model_bytes: bytes, spec: EngineSpec, device: str) -> str:
    h = hashlib.sha256(model_bytes)
    h.update(f"|{spec.precision}|{spec.profile}|{spec.workspace_bytes}|{device}".encode())
    return h.hexdigest()[:24]


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def build_engine(model: onnx.ModelProto, spec: EngineSpec = EngineSpec(), device_index: int = 0) -> bytes:
    """A serialized engine for ``model``; from the engine cache when it was built before."""
    require_gpu()
    if spec.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not '{spec.precision}'")
    model_bytes = model.SerializeToString()
    device = device_key(device_index)
    cached = spec.cache_dir / device / f"{engine_cache_key(model_bytes, spec, device)}.plan"
    if cached.is_file():
        log.info("TensorRT engine cache hit: %s", cached)
        return cached.read_bytes()
    plan = _build(model, model_bytes, spec, spec.cache_dir / device / "timing.cache")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_bytes(plan)
    tmp.replace(cached)
    return plan


def _build(model: onnx.ModelProto, model_bytes: bytes, spec: EngineSpec, timing_path: Path) -> bytes:
    import tensorrt as trt

    timing_path.parent.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    if spec.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if spec.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if not has_qdq(model):  # implicit quantization: ranges from a calibrator over real samples
            if spec.calibration is None:
                raise ValueError("int8 without Q/DQ nodes needs calibration samples (or pass the int8-static QDQ model)")
            calibrator = _entropy_calibrator(trt, spec.calibration, spec.profile.opt, timing_path.parent)
            config.int8_calibrator = calibrator
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (spec.profile.min, *rest), (spec.profile.opt, *rest), (spec.profile.max, *rest))
    config.add_optimization_profile(profile)
    if calibrator is not None:
        config.set_calibration_profile(profile)
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(plan))


def _entropy_calibrator(trt, samples: dict[str, np.ndarray], batch: int, cache_dir: Path):
    """An IInt8EntropyCalibrator2 feeding ``samples`` batch by batch from device memory."""
    from server.runtimes.tensorrt import cuda_runtime

    cudart = cuda_runtime()

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.n = len(next(iter(samples.values())))
            self.start = 0
            self.buffers = {}
            for name, arr in samples.items():
                nbytes = arr[:batch].astype(np.float32).nbytes
                self.buffers[name] = _check(cudart.cudaMalloc(nbytes))

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names):
            if self.start + batch > self.n:
                return None
            ptrs = []
            for name in names:
                host = np.ascontiguousarray(samples[name][self.start : self.start + batch], dtype=np.float32)
                _check(cudart.cudaMemcpy(self.buffers[name], host.ctypes.data, host.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
                ptrs.append(int(self.buffers[name]))
            self.start += batch
            return ptrs

        def free(self) -> None:
            for ptr in self.buffers.values():
                _check(cudart.cudaFree(ptr))
            self.buffers.clear()

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache) -> None:
            (cache_dir / "calibration.cache").write_bytes(bytes(cache))

    return Calibrator()


def _check(result):
    from server.runtimes.tensorrt import check_cuda

    return check_cuda(result)
