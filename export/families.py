"""The model families deepserve ships: how to build each network, its export spec,
its repository defaults and its data (held-out for metrics, samples for calibration).

A family is data, not a subclass: add one by adding an entry to ``FAMILIES``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from export.spec import ExportSpec, IOSpec, MetricTolerance

HeldOut = tuple[dict[str, np.ndarray], np.ndarray]  # (inputs, integer labels)


@dataclass(frozen=True)
class Family:
    name: str
    spec: ExportSpec
    build: Callable[[Path | None], torch.nn.Module]  # weights path (None = the shipped default) -> eval module
    default_weights: Path | None = None
    labels: tuple[str, ...] | None = None
    label_output: str = "logits"
    held_out: Callable[[], HeldOut] | None = None  # real held-out data with labels
    calibration: Callable[[], dict[str, np.ndarray]] | None = None  # real samples for INT8 calibration
    finetune: Callable[[torch.nn.Module], torch.nn.Module] | None = None  # the model's own recipe, short
    max_batch_size: int = 64
    preferred_batch_size: tuple[int, ...] = (16, 32)

    @classmethod
    def for_module(cls, name: str, module: torch.nn.Module, spec: ExportSpec, **fields) -> Family:
        """Any ``nn.Module`` as a one-off family (the spec supplies the example inputs)."""
        return cls(name, spec, lambda _weights: module.eval(), **fields)

    def weights_digest(self, weights: Path | None) -> str:
        path = weights or self.default_weights
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else "seeded-init"

    def calibration_samples(self) -> dict[str, np.ndarray]:
        if self.calibration is not None:
            return self.calibration()
        return self.spec.random_inputs({"batch": 256}, seed=1234)


# -- digits ------------------------------------------------------------------------------

def _digits_build(weights: Path | None) -> torch.nn.Module:
    from models import digits_cnn

    return digits_cnn.load(weights or digits_cnn.WEIGHTS)


@cache
def _digits_split():
    from models.digits_data import load_split

    return load_split()


def _digits_held_out() -> HeldOut:
    s = _digits_split()
    return {"input": s.x_test}, s.y_test


def _digits_calibration() -> dict[str, np.ndarray]:
    """256 training images (never the held-out part), a fixed stride through the split."""
    s = _digits_split()
    return {"input": s.x_train[:: max(1, len(s.x_train) // 256)][:256]}


def _digits_finetune(model: torch.nn.Module) -> torch.nn.Module:
    from models.train_digits import FINETUNE, train

    return train(model, _digits_split(), FINETUNE)


def _digits_family() -> Family:
    from models import digits_cnn

    spec = ExportSpec(inputs=(IOSpec("input", ("batch", 1, 8, 8)),), outputs=(IOSpec("logits", ("batch", 10)),))
    return Family("digits", spec, _digits_build, digits_cnn.WEIGHTS, digits_cnn.LABELS, "logits",
                  _digits_held_out, _digits_calibration, _digits_finetune)


# -- shapes detector ---------------------------------------------------------------------

def _shapes_build(weights: Path | None) -> torch.nn.Module:
    from models import shapes_detector

    return shapes_detector.load(weights or shapes_detector.WEIGHTS).eval()


def _shapes_held_out() -> HeldOut:
    """32 held-out scenes, letterboxed as the server does; the parity inputs (detection
    quality is judged by ``models.train_shapes``' COCO evaluation, not by labels here)."""
    from models import shapes_data, shapes_detector

    size = shapes_detector.config_from_metadata(_safetensors_metadata(shapes_detector.WEIGHTS)).input_size
    scenes = shapes_data.make_scenes(shapes_data.HELDOUT_SEED, 32)
    images = np.stack([shapes_data.letterbox(scene.image, size)[0] for scene in scenes])
    return {"image": images}, np.zeros(len(scenes), np.int64)


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _shapes_family() -> Family:
    from models import shapes_detector

    size = shapes_detector.config_from_metadata(_safetensors_metadata(shapes_detector.WEIGHTS)).input_size
    grid = size // shapes_detector.STRIDE
    classes = len(shapes_detector.LABELS)
    spec = ExportSpec(
        inputs=(IOSpec("image", ("batch", 3, size, size)),),
        outputs=(IOSpec("heatmap", ("batch", classes, grid, grid)), IOSpec("size", ("batch", 2, grid, grid)),
                 IOSpec("offset", ("batch", 2, grid, grid))),
    )
    return Family("shapes", spec, _shapes_build, shapes_detector.WEIGHTS, None, "heatmap", _shapes_held_out,
                  max_batch_size=16, preferred_batch_size=(4, 8))


# -- benchmark networks (untrained, seeded) ---------------------------------------------

# No labels: lossy variants are judged by top-1 agreement with fp32 on random inputs.
# An untrained network's logits sit close together, so the bar is lower than a trained one's.
_BENCH_METRIC = {
    "int8-static": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.6),
    "int8-dynamic": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.6),
    "trt-int8": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.6),
    "sparse50": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.0),
    "pruned50": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.0),
}


def _resnet_family() -> Family:
    from models.bench import resnet_bench

    spec = ExportSpec(inputs=(IOSpec("input", ("batch", 3, 64, 64), value_range=(-1.0, 1.0)),),
                      outputs=(IOSpec("logits", ("batch", 10)),), metric_tolerances=dict(_BENCH_METRIC))
    return Family("resnet_bench", spec, lambda _w: resnet_bench(seed=0))


def _mlp_family() -> Family:
    from models.bench import mlp_tiny

    spec = ExportSpec(inputs=(IOSpec("input", ("batch", 64), value_range=(-1.0, 1.0)),),
                      outputs=(IOSpec("logits", ("batch", 10)),), metric_tolerances=dict(_BENCH_METRIC))
    return Family("mlp_tiny", spec, lambda _w: mlp_tiny(seed=0))


FAMILIES: dict[str, Callable[[], Family]] = {
    "digits": _digits_family,
    "shapes": _shapes_family,
    "resnet_bench": _resnet_family,
    "mlp_tiny": _mlp_family,
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]()
    except KeyError:
        raise KeyError(f"unknown model family '{name}'; known: {', '.join(FAMILIES)}") from None
