"""Declarative export specs: one per model family, in the spirit of optimum's exporters.

A spec says what the exported graph's I/O looks like (names, dtypes, dimensions, which
axes are dynamic and what they are called), which opset to target, and how close each
variant must stay to the torch model. Functions take a spec, not twenty arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

Dim = int | str  # an int is a fixed size; a str names a dynamic axis ("batch", "time")


@dataclass(frozen=True)
class IOSpec:
    name: str
    shape: tuple[Dim, ...]  # full shape, batch axis included, e.g. ("batch", 1, 8, 8)
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)  # where random parity inputs are drawn from

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @property
    def dims(self) -> tuple[int, ...]:
        """Triton's ``dims``: the shape without the batch axis, -1 for other dynamic axes."""
        return tuple(-1 if isinstance(d, str) else d for d in self.shape[1:])

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class Tolerance:
    """Element-wise: ``|got - want| <= atol + rtol * |want|`` everywhere."""

    atol: float
    rtol: float = 0.0


@dataclass(frozen=True)
class MetricTolerance:
    """For lossy variants (int8, pruned): judged by the task, not element-wise."""

    max_metric_drop: float  # absolute, on held-out data, in the metric's units (0.01 = one accuracy point)
    # Fraction of held-out inputs whose top-1 matches fp32; for a family with its own
    # TaskMetric, the floor of that metric's agreement measure (e.g. box agreement).
    min_top1_agreement: float


ELEMENTWISE_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4),
    "fp32-ortopt": Tolerance(atol=1e-4, rtol=1e-4),
    "fp16": Tolerance(atol=2e-2, rtol=2e-2),
    "trt-fp32": Tolerance(atol=1e-3, rtol=1e-3),
    "trt-fp16": Tolerance(atol=3e-2, rtol=3e-2),
}
METRIC_TOLERANCES: dict[str, MetricTolerance] = {
    "int8-static": MetricTolerance(max_metric_drop=0.01, min_top1_agreement=0.97),
    "int8-dynamic": MetricTolerance(max_metric_drop=0.01, min_top1_agreement=0.97),
    "trt-int8": MetricTolerance(max_metric_drop=0.01, min_top1_agreement=0.97),
    "sparse50": MetricTolerance(max_metric_drop=0.01, min_top1_agreement=0.97),
    "pruned50": MetricTolerance(max_metric_drop=0.015, min_top1_agreement=0.95),
}


@dataclass(frozen=True)
class ExportSpec:
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    opset: int = 18
    exporter: str = "dynamo"  # "dynamo" (torch.export based) or "torchscript" (legacy)
    # Sizes used for dynamic axes when tracing and when drawing random parity inputs.
    trace_sizes: dict[str, int] = field(default_factory=lambda: {"batch": 2})
    parity_sizes: tuple[dict[str, int], ...] = ({"batch": 1}, {"batch": 7})
    max_dim: int = 4096  # upper bound declared for every dynamic axis
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(ELEMENTWISE_TOLERANCES))
    metric_tolerances: dict[str, MetricTolerance] = field(default_factory=lambda: dict(METRIC_TOLERANCES))

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def example_inputs(self, sizes: dict[str, int] | None = None) -> tuple[torch.Tensor, ...]:
        """Deterministic random inputs for tracing, as torch tensors in ``inputs`` order."""
        feed = self.random_inputs(sizes or self.trace_sizes, seed=0)
        return tuple(torch.from_numpy(feed[name]) for name in self.input_names)

    def random_inputs(self, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        feed = {}
        for io in self.inputs:
            shape = io.concrete(sizes)
            lo, hi = io.value_range
            if np.issubdtype(np.dtype(io.dtype), np.integer):
                feed[io.name] = rng.integers(int(lo), int(hi), size=shape).astype(io.dtype)
            else:
                feed[io.name] = rng.uniform(lo, hi, size=shape).astype(io.dtype)
        return feed

    def tolerance(self, variant: str) -> Tolerance:
        try:
            return self.tolerances[variant]
        except KeyError:
            raise KeyError(f"the export spec has no element-wise tolerance for variant '{variant}'") from None

    def metric_tolerance(self, variant: str) -> MetricTolerance:
        try:
            return self.metric_tolerances[variant]
        except KeyError:
            raise KeyError(f"the export spec has no metric tolerance for variant '{variant}'") from None
