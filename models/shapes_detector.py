"""A small anchor-free, single-stage detector (CenterNet style) for ``models.shapes_data`` scenes.

Input: float32 ``(N, 3, S, S)``, letterboxed RGB in [0, 1] (``shapes_data.letterbox``; the
server's ``image.decode_resize`` with ``resize=letterbox``), ``S = config.input_size``.

Output, a tuple on the stride-4 grid (``h = w = S / 4``), everything already decoded:

=============  ================  ====================================================
name           shape             meaning
=============  ================  ====================================================
``heatmap``    ``(N, C, h, w)``  class-centre probability (sigmoid applied)
``size``       ``(N, 2, h, w)``  box width, height in input pixels (``exp`` applied)
``offset``     ``(N, 2, h, w)``  sub-cell centre offset x, y in cells, in (0, 1)
=============  ================  ====================================================

A peak of class ``c`` at cell (row ``i``, column ``j``) is the box centred at
``((j + offset_x) * 4, (i + offset_y) * 4)`` with that width and height; ``decode`` turns the
three maps into boxes (3x3 max-pool peaks, top-k, no NMS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import checkpoint
from models.shapes_data import CLASSES

WEIGHTS = Path(__file__).parent / "weights" / "shapes_detector.safetensors"
LABELS = CLASSES
STRIDE = 4


@dataclass(frozen=True)
class ShapesDetectorConfig:
    input_size: int = 320  # S; a multiple of 32
    widths: tuple[int, int, int, int, int] = (16, 32, 48, 96, 128)  # stride 2, 4, 8, 16, 32
    neck: int = 48  # channels of the top-down path
    head: int = 48  # channels of the shared head conv
    n_classes: int = len(CLASSES)
    stride: int = STRIDE  # output grid stride; the contract fixes it at 4


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn_relu(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class ShapesDetector(nn.Module):
    def __init__(self, config: ShapesDetectorConfig = ShapesDetectorConfig()) -> None:
        super().__init__()
        if config.input_size % 32 or config.stride != STRIDE:
            raise ValueError(f"input_size must be a multiple of 32 and stride {STRIDE}, got {config}")
        self.config = config
        c2, c4, c8, c16, c32 = config.widths
        self.stem = nn.Sequential(_conv_bn_relu(3, c2, 2), _conv_bn_relu(c2, c4, 2), _Residual(c4))
        self.down8 = nn.Sequential(_conv_bn_relu(c4, c8, 2), _Residual(c8))
        self.down16 = nn.Sequential(_conv_bn_relu(c8, c16, 2), _Residual(c16))
        self.down32 = nn.Sequential(_conv_bn_relu(c16, c32, 2), _Residual(c32), _Residual(c32))
        self.lateral = nn.ModuleList(nn.Conv2d(c, config.neck, 1) for c in (c4, c8, c16, c32))
        self.smooth = nn.ModuleList(_conv_bn_relu(config.neck, config.neck) for _ in range(3))
        self.head = _conv_bn_relu(config.neck, config.head)
        self.out = nn.Conv2d(config.head, config.n_classes + 4, 1)  # heatmap logits | log w, log h | offset logits
        with torch.no_grad():  # start near CenterNet's priors: p(centre) = 0.1, boxes 32 px
            self.out.bias[: config.n_classes].fill_(-2.19)
            self.out.bias[config.n_classes : config.n_classes + 2].fill_(float(np.log(32.0)))

    def forward_raw(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(heatmap logits, log size, offset logits): the undecoded maps the losses use."""
        f4 = self.stem(image)  # (N, c4, S/4, S/4)
        f8 = self.down8(f4)  # (N, c8, S/8, S/8)
        f16 = self.down16(f8)  # (N, c16, S/16, S/16)
        f32 = self.down32(f16)  # (N, c32, S/32, S/32)
        p = self.lateral[3](f32)  # (N, neck, S/32, S/32)
        for lateral, smooth, f in zip(self.lateral[2::-1], self.smooth, (f16, f8, f4), strict=True):
            p = smooth(lateral(f) + F.interpolate(p, scale_factor=2.0, mode="nearest"))  # (N, neck, 2x, 2x)
        y = self.out(self.head(p))  # (N, C + 4, S/4, S/4)
        c = self.config.n_classes
        return y[:, :c], y[:, c : c + 2], y[:, c + 2 :]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, log_size, offset_logits = self.forward_raw(image)
        max_log = float(np.log(4.0 * self.config.input_size))  # keeps exp finite on garbage input
        return logits.sigmoid(), log_size.clamp(max=max_log).exp(), offset_logits.sigmoid()


def decode(
    heatmap: np.ndarray, size: np.ndarray, offset: np.ndarray, score_threshold: float = 0.05,
    max_detections: int = 100, stride: int = STRIDE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's maps -> (boxes (K, 4) x1y1x2y2 input px, scores (K,), labels (K,) int64).

    ``heatmap`` (C, h, w), ``size`` and ``offset`` (2, h, w), as ``forward`` returns them for
    one image. A peak is a cell equal to the max of its 3x3 neighbourhood; the best
    ``max_detections`` peaks scoring at least ``score_threshold`` come back, best first.
    No NMS: overlapping boxes of one class are left to the caller. The server's own
    decoding (``detect.centernet``), so evaluation and serving cannot drift apart.
    """
    from server.pipelines.detect import decode_boxes

    boxes, scores, labels = decode_boxes(np.asarray(heatmap, np.float32), size, offset, stride, score_threshold,
                                         max_detections)
    return boxes, scores.astype(np.float32), labels.astype(np.int64)


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Indices to keep (best first): greedy NMS within each class; a box goes when its IoU
    with a better box of its class exceeds ``iou`` (the server's ``detect.centernet`` NMS)."""
    from server.pipelines.detect import nms

    return nms(boxes, scores, labels, iou)


def config_from_metadata(meta: dict[str, str] | None) -> ShapesDetectorConfig:
    meta = meta or {}
    default = ShapesDetectorConfig()
    return ShapesDetectorConfig(
        input_size=int(meta.get("input_size", default.input_size)),
        widths=tuple(int(c) for c in meta["widths"].split(",")) if "widths" in meta else default.widths,  # type: ignore[arg-type]
        neck=int(meta.get("neck", default.neck)),
        head=int(meta.get("head", default.head)),
        n_classes=int(meta.get("n_classes", default.n_classes)),
        stride=int(meta.get("stride", default.stride)),
    )


def save(model: ShapesDetector, path: Path) -> None:
    checkpoint.save(model, path)


def load(path: Path = WEIGHTS, device: str = "cpu") -> ShapesDetector:
    """Load shipped weights; the input size and widths come from the file's metadata."""
    return checkpoint.load_into(ShapesDetector(config_from_metadata(checkpoint.metadata(path))), path, device)
