"""The repository deepserve serves out of the box, and the benchmark repository.

Both builds are idempotent: an entry whose fingerprint (weights, export spec, config,
exporter versions) matches what is on disk is left alone unless ``force``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from export.families import Family, get_family
from export.onnx import export_onnx, ort_runner
from export.parity import ParityReport, check_elementwise
from export.pipelines import ImagePreprocess, write_classify_pipeline, write_detect_pipeline
from export.repository import (
    FINGERPRINT_KEY,
    DynamicBatching,
    EntryConfig,
    TensorConfig,
    config_text,
    fingerprint,
    is_up_to_date,
    model_config,
    tensors_from_onnx,
    write_entry,
)

log = logging.getLogger(__name__)


def export_family_entry(
    dest: Path,
    family: Family,
    name: str,
    *,
    batching: bool = True,
    weights: Path | None = None,
    version: int = 1,
    force: bool = False,
) -> ParityReport | None:
    """Write ``dest/name`` as the family's fp32 ONNX; None when already up to date."""
    entry = _entry_for(family, name, batching)
    print_ = fingerprint(family.weights_digest(weights), repr(family.spec), config_text(model_config(entry)),
                         torch.__version__, onnx.__version__)
    if not force and is_up_to_date(dest, name, print_, version):
        log.info("%s is up to date in %s", name, dest)
        return None
    module = family.build(weights)
    model = export_onnx(module, family.spec)
    held = family.held_out()[0] if family.held_out is not None else None
    report = check_elementwise("fp32", module, ort_runner(model, family.spec), family.spec, held)
    inputs, outputs = tensors_from_onnx(model, labels_for=family.label_output if family.labels else None)
    entry = replace(entry, inputs=inputs, outputs=outputs, parameters={**entry.parameters, FINGERPRINT_KEY: print_})
    write_entry(dest, entry, model.SerializeToString(), version=version, labels=family.labels)
    log.info("wrote %s: %s", dest / name, report.summary())
    return report


def _entry_for(family: Family, name: str, batching: bool) -> EntryConfig:
    spec = family.spec
    inputs = tuple(TensorConfig(i.name, "TYPE_FP32", i.dims) for i in spec.inputs)
    outputs = tuple(TensorConfig(o.name, "TYPE_FP32", o.dims, "labels.txt" if family.labels and o.name == family.label_output else None)
                    for o in spec.outputs)
    db = DynamicBatching(family.preferred_batch_size, 500) if batching else None
    return EntryConfig(name, inputs, outputs, max_batch_size=family.max_batch_size, dynamic_batching=db)


def build_default_repository(dest: Path, *, force: bool = False) -> None:
    """``digits``: the trained digits CNN, fp32 ONNX, dynamically batched on one CPU instance;
    ``digits_classify``: the ensemble /v1/classify calls (any image of a digit -> top-k);
    ``shapes``: the shapes detector, fp32 ONNX; ``shapes_detect``: the ensemble /v1/detect calls."""
    from models import shapes_detector

    dest = Path(dest)
    export_family_entry(dest, get_family("digits"), "digits", force=force)
    write_classify_pipeline(
        dest, "digits_classify", "digits", ("input", "logits"), classes=10, labels=dest / "digits" / "labels.txt",
        preprocess=ImagePreprocess("image.digit", (1, 8, 8)), top_k=10,
    )
    shapes = get_family("shapes")
    export_family_entry(dest, shapes, "shapes", force=force)
    write_detect_pipeline(dest, "shapes_detect", "shapes", shapes.spec.inputs[0].shape[-1], shapes_detector.LABELS)


def build_benchmark_repository(dest: Path, *, force: bool = False) -> None:
    """``resnet_bench``, ``mlp_tiny`` (dynamic batching) and their ``*_nobatch`` twins."""
    dest = Path(dest)
    for family_name, name in (("resnet_bench", "resnet_bench"), ("mlp_tiny", "mlp_tiny")):
        family = get_family(family_name)
        export_family_entry(dest, family, name, force=force)
        export_family_entry(dest, family, f"{name}_nobatch", batching=False, force=force)
