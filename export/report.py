"""The variant report: one table per model family, printed and written as Markdown and JSON.

Latency is measured in-process with ONNX Runtime's CPU provider (or TensorRT for plans),
one request at a time: p50 of single calls at batch 1 and at the preferred batch (the
largest ``preferred_batch_size``); throughput = preferred batch / p50 at that batch.
Parity columns are measured alike for every variant, against the fp32 torch network on the
family's held-out inputs (else its calibration samples): max |err|, the worst per-sample
cosine of all outputs flattened, and top-1 agreement (argmax over the first output's last
axis). These are measurements of this host, not assertions: no test checks a timing.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from export.families import Family
from export.onnx import ort_runner
from export.parity import Runner, measure_closeness
from export.variants import Artifact, plan_runner


@dataclass(frozen=True)
class Row:
    variant: str
    runtime: str
    size_bytes: int
    params: int
    flops: int
    p50_b1_ms: float
    p50_pref_ms: float
    throughput: float  # samples/s at the preferred batch
    metric: float | None  # held-out top-1 accuracy, or the family's TaskMetric (None: no labelled data)
    parity: str
    max_abs_err: float  # vs the fp32 torch network, on the closeness inputs
    cosine: float
    top1_agreement: float | None  # None: the first output is not class scores


def measure(run: Runner, feed: dict[str, np.ndarray], budget_s: float = 1.5, max_iters: int = 200) -> float:
    """p50 latency of ``run(feed)`` in milliseconds (after warm-up), within a time budget."""
    for _ in range(3):
        run(feed)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_iters and (len(times) < 10 or time.perf_counter() < deadline):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def runner_for(artifact: Artifact, family: Family, threads: int) -> tuple[Runner, str]:
    if artifact.platform == "tensorrt_plan":
        return plan_runner(artifact.data, family.spec), "TensorRT"
    return ort_runner(artifact.onnx_model, family.spec, threads=threads), f"ORT CPU ({threads} threads)"


def accuracy(run: Runner, family: Family) -> float | None:
    """The family's held-out metric for ``run``: its own TaskMetric, else top-1 accuracy."""
    if family.metric is not None:
        return family.metric.evaluate(run)
    if family.held_out is None:
        return None
    feed, labels = family.held_out()
    top1 = np.concatenate([run({k: v[i : i + 64] for k, v in feed.items()})[0].argmax(axis=1)
                           for i in range(0, len(labels), 64)])
    return float((top1 == labels).mean())


def closeness_inputs(family: Family, limit: int = 512) -> dict[str, np.ndarray]:
    """The family's held-out inputs, else its calibration samples (at most ``limit``)."""
    feed = family.held_out()[0] if family.held_out is not None else family.calibration_samples()
    return {k: v[:limit] for k, v in feed.items()}


def measure_rows(family: Family, artifacts: list[Artifact], threads: int | None = None, rounds: int = 5,
                 reference: torch.nn.Module | None = None) -> list[Row]:
    """Variants are measured round-robin, ``rounds`` times, keeping each one's best p50:
    slow drift of the host (other processes, clocks) then hits every variant alike.
    ``reference`` is the fp32 torch network (default: the family's with its default weights)."""
    threads = threads or os.cpu_count() or 1
    reference = reference if reference is not None else family.build(None)
    close_feed = closeness_inputs(family)
    pref = max(family.preferred_batch_size)
    runners = [runner_for(art, family, threads) for art in artifacts]
    sizes = family.spec.trace_sizes  # other dynamic axes (a time axis) at their tracing sizes
    feeds = (family.spec.random_inputs({**sizes, "batch": 1}, seed=5), family.spec.random_inputs({**sizes, "batch": pref}, seed=6))
    best = [[float("inf"), float("inf")] for _ in artifacts]
    for _ in range(rounds):
        for i, (run, _runtime) in enumerate(runners):
            for j, feed in enumerate(feeds):
                best[i][j] = min(best[i][j], measure(run, feed, budget_s=0.5))
    rows = []
    for art, (run, runtime), (b1, bp) in zip(artifacts, runners, best, strict=True):
        close = measure_closeness(art.variant, reference, run, family.spec, close_feed)
        rows.append(Row(art.variant, runtime, art.size_bytes, art.params, art.flops, b1, bp,
                        pref / (bp / 1000.0), accuracy(run, family), "PASS" if art.parity.passed else "FAIL",
                        close.max_abs_err, close.cosine, close.top1_agreement))
    return rows


def to_markdown(family: Family, rows: list[Row], command: str) -> str:
    pref = max(family.preferred_batch_size)
    base = next((r for r in rows if r.variant == "fp32"), rows[0])
    task = family.metric
    head = (f"| variant | runtime | file size | fp32 size / size | params | MFLOPs/sample | fp32 FLOPs / FLOPs "
            f"| p50 b=1 (ms) | p50 b={pref} (ms) | throughput b={pref} (/s) | throughput vs fp32 "
            f"| held-out {task.name if task else 'accuracy'} | Δ vs fp32 (pt) | max abs err | worst cosine "
            f"| top-1 agreement | parity |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        acc = "n/a" if r.metric is None else f"{r.metric:.4f}" if task else f"{100 * r.metric:.2f} %"
        delta = f"{100 * (r.metric - base.metric):+.2f}" if r.metric is not None and base.metric is not None else "n/a"
        lines.append(
            f"| {r.variant} | {r.runtime} | {r.size_bytes / 1024:.1f} KiB | {base.size_bytes / r.size_bytes:.2f}x "
            f"| {r.params:,} | {r.flops / 1e6:.2f} | {base.flops / r.flops:.2f}x "
            f"| {r.p50_b1_ms:.3f} | {r.p50_pref_ms:.3f} | {r.throughput:,.0f} "
            f"| {r.throughput / base.throughput:.2f}x | {acc} | {delta} | {r.max_abs_err:.3g} | {r.cosine:.4f} "
            f"| {'n/a' if r.top1_agreement is None else f'{r.top1_agreement:.4f}'} | {r.parity} |"
        )
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return "\n".join([
        f"# Variants of `{family.name}`", "",
        f"Measured on this host ({host}); regenerate with:", "", f"    {command}", "",
        *lines, "",
        ("Parameters are nonzero ones for sparse variants; FLOPs are torch's count for one sample "
         "(2 per multiply-add), unchanged by quantization or by zeroed weights."),
        ("Max abs err, worst cosine and top-1 agreement: each variant against the fp32 torch network on "
         f"the same {'held-out' if family.held_out is not None else 'calibration'} inputs; "
         "parity is the variant's own check, with its bars, listed below."),
        ("Latency is the median of single in-process calls (best of 5 interleaved rounds) on random inputs"
         + "".join(f", {axis} {size}" for axis, size in family.spec.trace_sizes.items() if axis != "batch")
         + f"; throughput = {pref} / p50 at batch {pref}."),
        *([f"Held-out {task.name}: {task.description}. Δ is in points of {task.name} (0.01 = 1 pt)."]
          if task else []), "",
    ])


def print_table(rows: list[Row]) -> str:
    cols = ("variant", "runtime", "KiB", "params", "MFLOPs", "p50 b1 ms", "p50 pref ms", "thr/s", "acc", "parity")
    data = [(r.variant, r.runtime, f"{r.size_bytes / 1024:.1f}", f"{r.params:,}", f"{r.flops / 1e6:.2f}",
             f"{r.p50_b1_ms:.3f}", f"{r.p50_pref_ms:.3f}", f"{r.throughput:,.0f}",
             f"{100 * r.metric:.2f}" if r.metric is not None else "n/a", r.parity) for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols), *(fmt.format(*d) for d in data)])


def to_json(family: Family, rows: list[Row], command: str) -> str:
    """The same table as data: one object per variant, plus the host and the command."""
    host = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}
    return json.dumps({"family": family.name, "command": command, "host": host,
                       "preferred_batch": max(family.preferred_batch_size),
                       "variants": [asdict(r) for r in rows]}, indent=2) + "\n"


def write_report(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
