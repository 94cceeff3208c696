"""Parity: an artifact is checked against the torch model before it is written.

Two kinds of check, picked by variant:

- element-wise (fp32, fp16, TensorRT): every output element within the variant's
  tolerance, on random inputs at several batch sizes and on real held-out inputs;
- by the task (int8, pruned): the task metric on held-out data may drop at most
  ``max_metric_drop`` below fp32's, and top-1 must agree with fp32 on at least
  ``min_top1_agreement`` of the held-out inputs. The task metric is top-1 accuracy unless
  the family declares its own :class:`TaskMetric` (a detector: mAP); then that metric is
  compared, and the family's own agreement measure (if any) stands in for top-1 agreement.

A failed check raises :class:`ParityError`, whose message carries the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from export.spec import ExportSpec, MetricTolerance, Tolerance

# Runs one batch through an artifact: feed -> outputs (in spec.outputs order).
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class TaskMetric:
    """How a family's lossy variants are judged when top-1 accuracy does not apply.

    ``predict`` runs an artifact over the family's held-out set once; ``score`` turns those
    predictions into the metric (higher is better; ``max_metric_drop`` is in its units);
    ``agreement`` compares fp32's predictions with a variant's, in [0, 1], and is held to
    ``min_top1_agreement`` in place of top-1 agreement. Without ``agreement`` only the
    metric is checked, and the reports say so.
    """

    name: str  # "mAP@0.5", as reports and parity summaries print it
    predict: Callable[[Runner], Any]  # runner -> predictions on the held-out set
    score: Callable[[Any], float]  # predictions -> metric, higher is better
    samples: int  # held-out inputs ``predict`` runs
    agreement: Callable[[Any, Any], float] | None = None  # (fp32's predictions, the variant's) -> [0, 1]
    agreement_name: str = ""  # e.g. "box agreement"
    description: str = ""  # one line for reports: the data, the metric and the agreement measure

    def evaluate(self, run: Runner) -> float:
        return self.score(self.predict(run))


@dataclass(frozen=True)
class ParityReport:
    variant: str
    kind: str  # "elementwise" or "metric"
    passed: bool
    n_inputs: int  # samples checked
    max_abs_err: float = 0.0  # element-wise
    worst_excess: float = 0.0  # max(|err| - (atol + rtol*|want|)); <= 0 means within tolerance
    tolerance: str = ""
    metric: float | None = None  # the variant's held-out metric (accuracy, or the family's TaskMetric)
    reference_metric: float | None = None  # fp32 torch's held-out metric
    top1_agreement: float | None = None  # agreement with fp32: top-1, or the family's own measure
    metric_name: str = "accuracy"
    agreement_name: str = "top-1 agreement"

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        if self.kind == "elementwise":
            return (f"{self.variant}: {verdict} element-wise on {self.n_inputs} inputs, "
                    f"max |err| {self.max_abs_err:.3g} (tolerance {self.tolerance})")
        where = "held-out" if self.metric is not None else "random"
        parts = [f"{self.variant}: {verdict} on {self.n_inputs} {where} inputs"]
        if self.metric is not None and self.reference_metric is not None:
            parts.append(f"{self.metric_name} {self.metric:.4f} vs fp32 {self.reference_metric:.4f} "
                         f"(delta {100 * (self.metric - self.reference_metric):+.2f} pt)")
        if self.top1_agreement is not None:
            parts.append(f"{self.agreement_name} {self.top1_agreement:.4f}")
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
    held_out: tuple[dict[str, np.ndarray], np.ndarray] | None = None,
    batch_size: int = 64,
    *,
    task: TaskMetric | None = None,
) -> ParityReport:
    """Top-1 accuracy of the artifact vs the fp32 torch ``reference`` on held-out data;
    with ``task``, the family's own metric (and agreement measure) instead."""
    tol = spec.metric_tolerance(variant)
    if task is not None:
        return _check_task_metric(variant, reference, run, spec, task, tol)
    if held_out is None:
        raise ValueError("check_metric needs held-out data or a task metric")
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


def torch_runner(module: torch.nn.Module, spec: ExportSpec) -> Runner:
    """The torch module as a :data:`Runner` (what artifacts are compared with)."""
    return lambda feed: torch_outputs(module, spec, feed)


def _check_task_metric(
    variant: str, reference: torch.nn.Module, run: Runner, spec: ExportSpec, task: TaskMetric, tol: MetricTolerance
) -> ParityReport:
    want = task.predict(torch_runner(reference, spec))
    got = task.predict(run)
    ref_metric, metric = float(task.score(want)), float(task.score(got))
    agreement = float(task.agreement(want, got)) if task.agreement is not None else None
    passed = (ref_metric - metric) <= tol.max_metric_drop + 1e-9
    if agreement is not None:
        passed = passed and agreement >= tol.min_top1_agreement
    report = ParityReport(variant, "metric", passed, task.samples, metric=metric, reference_metric=ref_metric,
                          top1_agreement=agreement, tolerance=_fmt(tol, task), metric_name=task.name,
                          agreement_name=task.agreement_name or "agreement")
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


@dataclass(frozen=True)
class Closeness:
    """How close an artifact's outputs are to the fp32 reference's on some inputs."""

    n_inputs: int
    max_abs_err: float
    rel_err: float  # max |err| / max |reference output|
    cosine: float  # per-sample cosine similarity of all outputs flattened, worst sample
    # argmax over the first output's last axis, fraction of positions that agree; None when that
    # output is not scores: (batch, classes) or (batch, time, classes), not an image
    top1_agreement: float | None


def measure_closeness(variant: str, reference: torch.nn.Module, run: Runner, spec: ExportSpec,
                      feed: dict[str, np.ndarray], batch_size: int = 64) -> Closeness:
    """Max |err|, worst cosine and top-1 agreement of ``run`` against ``reference`` on ``feed``.
    Outputs of another shape raise ParityError."""
    n = next(iter(feed.values())).shape[0]
    max_abs, peak, cosines, agree = 0.0, 0.0, [], []
    for start in range(0, n, batch_size):
        part = {k: v[start : start + batch_size] for k, v in feed.items()}
        want = torch_outputs(reference, spec, part)
        got = [np.asarray(g, np.float32) for g in run(part)]
        for g, w in zip(got, want, strict=True):
            _same_shape(variant, g, w)
            max_abs = max(max_abs, float(np.abs(g - w).max(initial=0.0)))
            peak = max(peak, float(np.abs(w).max(initial=0.0)))
        g = np.concatenate([x.reshape(len(x), -1) for x in got], axis=1).astype(np.float64)
        w = np.concatenate([x.reshape(len(x), -1) for x in want], axis=1).astype(np.float64)
        norms = np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1)
        cosines.append(np.where(norms > 0, (g * w).sum(axis=1) / np.maximum(norms, 1e-30), 1.0))
        agree.append((got[0].argmax(axis=-1) == want[0].argmax(axis=-1)).ravel())
    rel = max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else float("inf"))
    top1 = float(np.concatenate(agree).mean()) if len(spec.outputs[0].shape) in (2, 3) else None
    return Closeness(n, max_abs, rel, float(np.concatenate(cosines).min()), top1)


def _same_shape(variant: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape:
        raise ParityError(ParityReport(variant, "metric", False, len(want),
                                       tolerance=f"output shape {got.shape} != fp32's {want.shape}"))


def _fmt(tol: Tolerance | MetricTolerance, task: TaskMetric | None = None) -> str:
    if isinstance(tol, Tolerance):
        return f"atol={tol.atol:g}, rtol={tol.rtol:g}"
    if task is None:
        return f"drop <= {100 * tol.max_metric_drop:g} pt, top-1 agreement >= {tol.min_top1_agreement:g}"
    drop = f"{task.name} drop <= {100 * tol.max_metric_drop:g} pt"
    if task.agreement is None:
        return f"{drop}; no agreement check (the family declares no agreement measure)"
    return f"{drop}, {task.agreement_name or 'agreement'} >= {tol.min_top1_agreement:g}"
