"""Build, check and write the variants of a model family.

    variant        artifact                                   parity
    fp32           ONNX, simplified                           element-wise vs torch
    fp32-ortopt    ONNX Runtime offline-optimized copy        element-wise vs torch
    fp16           ONNX, float16 compute, float32 I/O         element-wise vs torch
    int8-dynamic   ONNX, dynamic INT8                         task metric + top-1 agreement vs fp32
    int8-static    ONNX QDQ INT8, calibrated on real samples  task metric + top-1 agreement vs fp32
    sparse50       ONNX, 50 % of weights zeroed (+ fine-tune) task metric + top-1 agreement vs fp32
    pruned50       ONNX, 50 % of channels removed + fine-tune element-wise vs the pruned torch net,
                                                              then task metric + agreement vs fp32
    trt-fp16       TensorRT plan, FP16 (GPU)                  element-wise vs torch
    trt-int8       TensorRT plan from the QDQ model (GPU)     task metric + top-1 agreement vs fp32

A family that declares its own task metric (``Family.metric``, e.g. the detector's mAP)
is judged by that metric and its agreement measure instead of accuracy and top-1.
Families without labelled data (the benchmark nets) are judged by top-1 agreement on
random inputs. Nothing is written for a variant whose check fails.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import onnx
import torch

from export import prune as pruning
from export import quantize
from export.families import Family
from export.onnx import export_onnx, ort_optimize_offline, ort_runner
from export.parity import ParityError, ParityReport, Runner, check_agreement, check_elementwise, check_metric
from export.repository import DynamicBatching, EntryConfig, TensorConfig, tensors_from_onnx, write_entry

log = logging.getLogger(__name__)

ONNX_VARIANTS = ("fp32", "fp32-ortopt", "fp16", "int8-dynamic", "int8-static", "sparse50", "pruned50")
TRT_VARIANTS = ("trt-fp16", "trt-int8")
VARIANTS = ONNX_VARIANTS + TRT_VARIANTS
ELEMENTWISE = frozenset({"fp32", "fp32-ortopt", "fp16", "trt-fp16"})


@dataclass(frozen=True)
class BuildOptions:
    quant: quantize.QuantSpec = field(default_factory=quantize.QuantSpec)
    prune: pruning.PruneSpec = field(default_factory=pruning.PruneSpec)
    keep_io_types: bool = True  # fp16: graph I/O stays float32


@dataclass(frozen=True)
class Artifact:
    variant: str
    data: bytes  # the file's bytes (model.onnx or model.plan)
    onnx_model: onnx.ModelProto  # the ONNX graph (for a plan: the graph it was built from)
    module: torch.nn.Module  # the torch network this artifact came from (pruned ones differ)
    parity: ParityReport
    params: int  # nonzero ones for sparse variants
    flops: int  # per sample, from torch's FLOP counter

    @property
    def platform(self) -> str:
        return "tensorrt_plan" if self.variant in TRT_VARIANTS else "onnxruntime_onnx"

    @property
    def size_bytes(self) -> int:
        return len(self.data)


class VariantBuilder:
    """Builds variants of one family from one set of weights, sharing the fp32 export."""

    def __init__(self, family: Family, weights: Path | None = None, options: BuildOptions = BuildOptions()) -> None:
        self.family = family
        self.options = options
        self.module = family.build(weights).eval()
        self.spec = family.spec

    @cached_property
    def fp32(self) -> onnx.ModelProto:
        return export_onnx(self.module, self.spec)

    @cached_property
    def _example(self) -> tuple[torch.Tensor, ...]:
        return self.spec.example_inputs()

    @cached_property
    def _flops(self) -> int:
        return pruning.count_flops(self.module, tuple(x[:1] for x in self._example))

    def build(self, variant: str) -> Artifact:
        """The checked artifact; raises ParityError (numbers inside) when it does not pass."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}'; known: {', '.join(VARIANTS)}")
        if variant in ("sparse50", "pruned50"):
            return self._pruned(variant)
        if variant in TRT_VARIANTS:
            return self._tensorrt(variant)
        model = self._onnx_variant(variant)
        report = self.check(variant, self.module, ort_runner(model, self.spec))
        return Artifact(variant, model.SerializeToString(), model, self.module, report,
                        pruning.count_params(self.module), self._flops)

    def _onnx_variant(self, variant: str) -> onnx.ModelProto:
        if variant == "fp32":
            return self.fp32
        if variant == "fp32-ortopt":
            return ort_optimize_offline(self.fp32)
        if variant == "fp16":
            return quantize.convert_fp16(self.fp32, keep_io_types=self.options.keep_io_types)
        if variant == "int8-dynamic":
            return quantize.quantize_dynamic_int8(self.fp32)
        with contextlib.redirect_stdout(io.StringIO()):  # the entropy calibrator prints progress
            return quantize.quantize_static_qdq(self.fp32, self.family.calibration_samples(), self.options.quant)

    def _pruned(self, variant: str) -> Artifact:
        how = pruning.prune_structured if variant == "pruned50" else pruning.prune_unstructured
        result = how(self.module, self._example, self.options.prune, finetune=self.family.finetune)
        model = export_onnx(result.module, self.spec)
        # The export itself must be faithful to the network it came from ...
        check_elementwise("fp32", result.module, ort_runner(model, self.spec), self.spec, self._held_inputs())
        # ... and the smaller network must still do the task about as well as fp32.
        report = self.check(variant, self.module, ort_runner(model, self.spec))
        return Artifact(variant, model.SerializeToString(), model, result.module, report,
                        result.params_after, result.flops_after)

    def _tensorrt(self, variant: str) -> Artifact:
        from export import tensorrt as trt_export
        from export.tensorrt import BatchProfile, EngineSpec

        trt_export.require_gpu()  # one clear sentence on a host without a GPU
        profile = BatchProfile.from_config(self.family.max_batch_size, self.family.preferred_batch_size)
        if variant == "trt-int8":
            with contextlib.redirect_stdout(io.StringIO()):
                source = quantize.quantize_static_qdq(self.fp32, self.family.calibration_samples(),
                                                      replace(self.options.quant, target="tensorrt"))
            engine = EngineSpec(precision="int8", profile=profile)
        else:
            source, engine = self.fp32, EngineSpec(precision="fp16", profile=profile)
        plan = trt_export.build_engine(source, engine)
        report = self.check(variant, self.module, plan_runner(plan, self.spec))
        return Artifact(variant, plan, source, self.module, report, pruning.count_params(self.module), self._flops)

    def _held_inputs(self):
        return self.family.held_out()[0] if self.family.held_out is not None else None

    def check(self, variant: str, reference: torch.nn.Module, run: Runner) -> ParityReport:
        if variant in ELEMENTWISE:
            return check_elementwise(variant, reference, run, self.spec, self._held_inputs())
        if self.family.metric is not None:
            return check_metric(variant, reference, run, self.spec, task=self.family.metric)
        if self.family.held_out is not None:
            return check_metric(variant, reference, run, self.spec, self.family.held_out())
        return check_agreement(variant, reference, run, self.spec, self.spec.random_inputs({"batch": 256}, seed=99))


def plan_runner(plan: bytes, spec) -> Runner:
    """Runs a serialized TensorRT engine through the server's own TensorRT runtime."""
    import tempfile

    from server.runtimes.base import RuntimeOptions
    from server.runtimes.tensorrt import create

    with tempfile.NamedTemporaryFile(suffix=".plan", delete=False) as f:
        f.write(plan)
    runtime = create()
    runtime.load(Path(f.name), RuntimeOptions(device="cuda:0"))

    def run(feed):
        outputs = runtime.execute(feed)
        return [outputs[name] for name in spec.output_names]

    return run


def entry_name(base: str, variant: str) -> str:
    return base if variant == "fp32" else f"{base}_{variant.replace('-', '_')}"


def write_variant(dest: Path, family: Family, artifact: Artifact, name: str, version: int = 1,
                  batching: bool = True) -> Path:
    """Write a checked artifact as ``dest/name`` with a complete config.pbtxt."""
    label_output = family.label_output if family.labels else None
    inputs, outputs = tensors_from_onnx(artifact.onnx_model, labels_for=label_output)
    if artifact.platform == "tensorrt_plan":  # TensorRT plans keep the graph's float32 I/O
        inputs = tuple(TensorConfig(t.name, t.data_type, t.dims) for t in inputs)
    db = DynamicBatching(family.preferred_batch_size, 500) if batching else None
    kind = "KIND_GPU" if artifact.platform == "tensorrt_plan" else "KIND_CPU"
    params = {"deepserve_variant": artifact.variant, "deepserve_parity": artifact.parity.summary()}
    entry = EntryConfig(name, inputs, outputs, artifact.platform, family.max_batch_size, db, 1, kind, params)
    return write_entry(dest, entry, artifact.data, version=version, labels=family.labels)


def export_variants(
    dest: Path, family: Family, variants: list[str], *, name: str | None = None, version: int = 1,
    weights: Path | None = None, options: BuildOptions = BuildOptions(),
) -> tuple[list[Artifact], list[ParityError]]:
    """Build each variant, write those that pass; return (written artifacts, parity failures)."""
    builder = VariantBuilder(family, weights, options)
    written, failed = [], []
    for variant in variants:
        try:
            artifact = builder.build(variant)
        except ParityError as err:
            log.error("not written: %s", err)
            failed.append(err)
            continue
        path = write_variant(dest, family, artifact, entry_name(name or family.name, variant), version)
        log.info("wrote %s: %s", path, artifact.parity.summary())
        written.append(artifact)
    return written, failed
