"""Quantization with ``onnxruntime.quantization`` and FP16 conversion.

- INT8 dynamic: weights int8, activations quantized per batch at run time; the choice
  for recurrent and transformer networks (MatMul/Gemm/LSTM/GRU/Attention heavy).
- INT8 static, QDQ format: activation ranges calibrated on real samples through a
  ``CalibrationDataReader`` over the model's own data (MinMax, Entropy or Percentile).
  ``target="cpu"`` uses uint8 activations / int8 per-channel weights (ONNX Runtime's fast
  path on x86); ``target="tensorrt"`` uses symmetric int8 everywhere, which is what
  TensorRT's explicit quantization accepts.
- FP16: float16 weights and compute, with graph I/O kept float32 when asked.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantSpec:
    calibration: str = "minmax"  # one of CALIBRATION_METHODS
    per_channel: bool = True
    target: str = "cpu"  # "cpu" (U8S8) or "tensorrt" (S8S8 symmetric)
    calibration_batch: int = 32
    percentile: float = 99.999


class SampleReader:
    """A ``CalibrationDataReader`` over in-memory samples, ``batch`` at a time."""

    def __init__(self, samples: dict[str, np.ndarray], batch: int) -> None:
        self._samples = samples
        self._batch = batch
        self._n = len(next(iter(samples.values())))
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= self._n:
            return None
        feed = {k: v[self._start : self._start + self._batch] for k, v in self._samples.items()}
        self._start += self._batch
        return feed

    def rewind(self) -> None:
        self._start = 0


def _calibration_reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


def quantize_static_qdq(model: onnx.ModelProto, samples: dict[str, np.ndarray], spec: QuantSpec = QuantSpec()) -> onnx.ModelProto:
    """INT8 static quantization in QDQ format, calibrated on ``samples`` (real data)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if spec.calibration not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, not '{spec.calibration}'")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[spec.calibration]
    reader_cls = type("Reader", (SampleReader, _calibration_reader_base()), {})
    reader = reader_cls(samples, spec.calibration_batch)
    tensorrt = spec.target == "tensorrt"
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if tensorrt else {}
    if spec.calibration == "percentile":
        extra["CalibPercentile"] = spec.percentile
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("src.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, src)
        # Shape inference and ORT's basic fusions first, as onnxruntime.quantization recommends.
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(
            pre, out, reader, quant_format=QuantFormat.QDQ, per_channel=spec.per_channel,
            activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method, extra_options=extra,
        )
        return onnx.load(out)


def quantize_dynamic_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """INT8 dynamic quantization (weights int8 offline; activations per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("src.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, src)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_dynamic(pre, out, weight_type=QuantType.QInt8, per_channel=False)
        return onnx.load(out)


def convert_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """Float16 weights and compute; graph inputs/outputs stay float32 when ``keep_io_types``."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=False)


def file_size(model: onnx.ModelProto) -> int:
    return len(model.SerializeToString())


def save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
