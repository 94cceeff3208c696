"""The ceiling: ONNX Runtime called in-process, with exactly the session the server builds.

The session comes from deepserve's own runtime class and option logic
(``server.runtimes.onnxruntime.OnnxRuntime`` + ``server.repository.model.runtime_options``
on the model's ``config.pbtxt``), so intra-op threads, graph optimisation, execution mode
and spinning are the server's, not a guess.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.repository.config import read_config
from server.repository.model import LoadOptions, instance_devices, runtime_options
from server.runtimes.base import RuntimeOptions
from server.runtimes.onnxruntime import OnnxRuntime


@dataclass(frozen=True)
class InProcessPoint:
    batch: int
    runs: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float


def load_like_server(model_dir: Path) -> tuple[OnnxRuntime, RuntimeOptions]:
    config = read_config(model_dir)
    cpu_instances = sum(1 for d in instance_devices(config) if d == "cpu")
    options = runtime_options(config, "1", "cpu", cpu_instances, LoadOptions())
    runtime = OnnxRuntime()
    runtime.load(model_dir / "1" / "model.onnx", options)
    return runtime, options


def measure(runtime: OnnxRuntime, input_name: str, row: np.ndarray, batch: int, duration_s: float) -> InProcessPoint:
    """Back-to-back ``execute`` calls on a (batch, ...) input for ``duration_s``."""
    x = np.ascontiguousarray(np.repeat(row, batch, axis=0))
    for _ in range(5):
        runtime.execute({input_name: x})
    samples: list[float] = []
    end = time.perf_counter() + duration_s
    while (t0 := time.perf_counter()) < end:
        runtime.execute({input_name: x})
        samples.append(time.perf_counter() - t0)
    samples.sort()
    total = sum(samples)
    return InProcessPoint(
        batch=batch,
        runs=len(samples),
        rows_per_s=batch * len(samples) / total,
        p50_ms=statistics.median(samples) * 1e3,
        p99_ms=samples[min(len(samples) - 1, int(0.99 * len(samples)))] * 1e3,
    )
