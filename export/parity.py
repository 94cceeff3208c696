"""Parity: an artifact is checked against the torch model before it is written.

Two kinds of check, picked by variant:

- element-wise (fp32, fp16, TensorRT): every output element within the variant's
  tolerance, on random inputs at several batch sizes and on real held-out inputs;
- by the task (int8, pruned): the task metric on held-out data may drop at most
  ``max_metric_drop`` below fp32's, and top-1 must agree with fp32 on at least
  ``min_top1_agreement`` of the held-out inputs.

A failed check raises :class:`ParityError`, whose message carries the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from export.spec import ExportSpec, MetricTolerance, Tolerance

# Runs one batch through an artifact: feed -> outputs (in spec.outputs order).
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class ParityReport:
    variant: str
    kind: str  # "elementwise" or "metric"
    passed: bool
    n_inputs: int  # samples checked
    max_abs_err: float = 0.0  # element-wise
    worst_excess: float = 0.0  # max(|err| - (atol + rtol*|want|)); <= 0 means within tolerance
    tolerance: str = ""
    metric: float | None = None  # the variant's held-out metric (accuracy)
    reference_metric: float | None = None  # fp32 torch's held-out metric
    top1_agreement: float | None = None

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        if self.kind == "elementwise":
            return (f"{self.variant}: {verdict} element-wise on {self.n_inputs} inputs, "
                    f"max |err| {self.max_abs_err:.3g} (tolerance {self.tolerance})")
        where = "held-out" if self.metric is not None else "random"
        parts = [f"{self.variant}: {verdict} on {self.n_inputs} {where} inputs"]
        if self.metric is not None and self.reference_metric is not None:
            parts.append(f"accuracy {self.metric:.4f} vs fp32 {self.reference_metric:.4f} "
                         f"(delta {100 * (self.metric - self.reference_metric):+.2f} pt)")
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement {self.top1_agreement:.4f}")
        return ", ".join(parts) + f" (tolerance {self.tolerance})"


class ParityError(Exception):
    """The artifact does not match the torch model; it was not written."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(report.summary())
        self.report = report


@torch.no_grad()
def torch_outputs(module: torch.nn.Module, spec: ExportSpec, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    module.eval()
    out = module(*(torch.from_numpy(feed[name]) for name in spec.input_names))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().numpy() for o in outs]


def check_elementwise(
    variant: str,
    module: torch.nn.Module,
    run: Runner,
    spec: ExportSpec,
    held_out: dict[str, np.ndarray] | None = None,
) -> ParityReport:
    tol = spec.tolerance(variant)
    feeds = [spec.random_inputs(sizes, seed=i + 1) for i, sizes in enumerate(spec.parity_sizes)]
    if held_out is not None:
        feeds.append(held_out)
    max_abs, worst, n = 0.0, -np.inf, 0
    for feed in feeds:
        want = torch_outputs(module, spec, feed)
        got = run(feed)
        for w, g in zip(want, got, strict=True):
            g = np.asarray(g, dtype=np.float32)
            if g.shape != w.shape:
                raise ParityError(ParityReport(variant, "elementwise", False, n, float("inf"), float("inf"),
                                               f"shape {g.shape} != torch's {w.shape}"))
            err = np.abs(g - w)
            max_abs = max(max_abs, float(err.max(initial=0.0)))
            worst = max(worst, float((err - (tol.atol + tol.rtol * np.abs(w))).max(initial=-np.inf)))
        n += next(iter(feed.values())).shape[0]
    report = ParityReport(variant, "elementwise", bool(worst <= 0.0), n, max_abs, worst, _fmt(tol))
    if not report.passed:
        raise ParityError(report)
    return report


def check_metric(
    variant: str,
    reference: torch.nn.Module,
    run: Runner,
    spec: ExportSpec,
    held_out: tuple[dict[str, np.ndarray], np.ndarray],
    batch_size: int = 64,
) -> ParityReport:
    """Top-1 accuracy of the artifact vs the fp32 torch ``reference`` on held-out data."""
    tol = spec.metric_tolerance(variant)
    feed, labels = held_out
    n = len(labels)
    want, got = [], []
    for start in range(0, n, batch_size):
        part = {k: v[start : start + batch_size] for k, v in feed.items()}
        ref_out, out = torch_outputs(reference, spec, part)[0], np.asarray(run(part)[0])
        _same_shape(variant, out, ref_out)
        want.append(ref_out.argmax(axis=1))
        got.append(out.argmax(axis=1))
    want_top1, got_top1 = np.concatenate(want), np.concatenate(got)
    ref_acc = float((want_top1 == labels).mean())
    acc = float((got_top1 == labels).mean())
    agreement = float((want_top1 == got_top1).mean())
    passed = (ref_acc - acc) <= tol.max_metric_drop + 1e-9 and agreement >= tol.min_top1_agreement
    report = ParityReport(variant, "metric", passed, n, metric=acc, reference_metric=ref_acc,
                          top1_agreement=agreement, tolerance=_fmt(tol))
    if not passed:
        raise ParityError(report)
    return report


def check_agreement(
    variant: str, reference: torch.nn.Module, run: Runner, spec: ExportSpec, feed: dict[str, np.ndarray]
) -> ParityReport:
    """For families without labelled data: top-1 agreement with fp32 on the given inputs."""
    tol = spec.metric_tolerance(variant)
    ref_out, out = torch_outputs(reference, spec, feed)[0], np.asarray(run(feed)[0])
    _same_shape(variant, out, ref_out)
    want, got = ref_out.argmax(axis=1), out.argmax(axis=1)
    agreement = float((want == got).mean())
    report = ParityReport(variant, "metric", agreement >= tol.min_top1_agreement, len(want),
                          top1_agreement=agreement, tolerance=f"top-1 agreement >= {tol.min_top1_agreement}")
    if not report.passed:
        raise ParityError(report)
    return report


def _same_shape(variant: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape:
        raise ParityError(ParityReport(variant, "metric", False, len(want),
                                       tolerance=f"output shape {got.shape} != fp32's {want.shape}"))


def _fmt(tol: Tolerance | MetricTolerance) -> str:
    if isinstance(tol, Tolerance):
        return f"atol={tol.atol:g}, rtol={tol.rtol:g}"
    return f"drop <= {100 * tol.max_metric_drop:g} pt, top-1 agreement >= {tol.min_top1_agreement:g}"
