"""torch -> files the PyTorch runtime serves: a torch.export program (``model.pt2``) or
TorchScript (``model.pt``).

Each artifact is run on the example inputs, and on their first row alone, and checked
against the module with the fp32 element-wise tolerance of ``export.spec`` before
anything is written; the write is atomic (temp file + rename), so a server scanning the
folder never sees half a file. A failed check raises :class:`export.parity.ParityError`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.parity import ParityError, ParityReport
from export.spec import ELEMENTWISE_TOLERANCES


def write_torch_program(module: torch.nn.Module, example_inputs: tuple, path: Path, dynamic_batch: bool = True) -> None:
    """Export ``module`` (put in eval mode) with torch.export and save it to ``path`` (``.pt2``).

    With ``dynamic_batch``, the first axis of every tensor input is one dynamic dimension
    named ``batch`` (min 1), shared by all inputs, as a batching server needs.
    """
    module = module.eval()
    examples = _batch_of_two(example_inputs) if dynamic_batch else tuple(example_inputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} if _batched(x) else None for x in examples)
    program = torch.export.export(module, examples, dynamic_shapes=dynamic_shapes)
    _check("torch.export", module, program.module(), examples)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    _write(path, buffer.getvalue())


def write_torchscript(module: torch.nn.Module, example_inputs: tuple, path: Path) -> None:
    """Trace ``module`` (put in eval mode) with torch.jit.trace and save it to ``path`` (``.pt``)."""
    module = module.eval()
    examples = tuple(example_inputs)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch.jit.trace/save warn that TorchScript is deprecated; Triton's PyTorch backend
        # still serves it. Filtered by message: TracerWarnings (a trace that baked in a
        # value) still surface.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(trace|save).*", category=DeprecationWarning)
        # strict=False: a dict or list output is allowed (the runtime reads a dict by key).
        traced = torch.jit.trace(module, examples, strict=False)
        _check("torchscript", module, traced, examples)
        torch.jit.save(traced, buffer)
    _write(path, buffer.getvalue())


def _batched(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() > 0


def _batch_of_two(examples: tuple) -> tuple:
    # torch.export specializes dimensions of size 0 or 1, so a batch of 1 could not be
    # marked dynamic: repeat such examples to a batch of 2.
    return tuple(torch.cat([x, x]) if _batched(x) and x.shape[0] == 1 else x for x in examples)


def _check(variant: str, module: torch.nn.Module, artifact: Callable[..., Any], examples: tuple) -> None:
    """``artifact`` must match ``module`` on ``examples`` and on their first row alone."""
    tol = ELEMENTWISE_TOLERANCES["fp32"]
    first_row = tuple(x[:1] if _batched(x) else x for x in examples)
    max_abs, worst, n = 0.0, -np.inf, 0
    with torch.no_grad():
        for feed in (examples, first_row):
            want, got = _leaves(module(*feed)), _leaves(artifact(*feed))
            if [w.shape for w in want] != [g.shape for g in got]:
                raise ParityError(ParityReport(variant, "elementwise", False, n, float("inf"), float("inf"),
                                               f"output shapes {[tuple(g.shape) for g in got]} != "
                                               f"torch's {[tuple(w.shape) for w in want]}"))
            for w, g in zip(want, got, strict=True):
                w, g = w.double(), g.double()
                err = (g - w).abs()
                max_abs = max(max_abs, float(err.max()) if err.numel() else 0.0)
                excess = err - (tol.atol + tol.rtol * w.abs())
                worst = max(worst, float(excess.max()) if excess.numel() else -np.inf)
            n += next((x.shape[0] for x in feed if _batched(x)), 1)
    report = ParityReport(variant, "elementwise", bool(worst <= 0.0), n, max_abs, worst,
                          f"atol={tol.atol:g}, rtol={tol.rtol:g}")
    if not report.passed:
        raise ParityError(report)


def _leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
