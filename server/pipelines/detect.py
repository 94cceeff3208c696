"""``detect.centernet``: a CenterNet-style network's maps -> boxes in the original pixels.

Inputs, in the config's order: ``heatmap`` (N, C, h, w) class-centre probabilities,
``size`` (N, 2, h, w) box width and height in network-input pixels, ``offset`` (N, 2, h,
w) sub-cell centre offsets, ``transform`` (N, 6) from ``image.decode_resize``; then the
optional per-request ``score_threshold`` (N, 1), ``iou_threshold`` (N, 1) and
``max_detections`` (N, 1) inputs, matched by those names. A peak is a cell that is the
maximum of its 3x3 neighbourhood; boxes go through class-aware non-maximum suppression
and are mapped back through the letterbox (``(x - pad) / scale``), clipped to the image.

Outputs, padded to the ``max_detections`` parameter (K, default 100), best first:
``boxes`` FP32 (N, K, 4) x1 y1 x2 y2, ``scores`` FP32 (N, K), ``classes`` INT32 (N, K),
``labels`` BYTES (N, K) and ``count`` INT32 (N, 1) valid rows; matched by datatype and
name (``boxes`` is the FP32 output whose name contains "box").

Parameters: ``stride`` (4), ``score_threshold`` (0.3), ``iou_threshold`` (0.5),
``max_detections`` (100), ``labels`` (a file in the version folder), ``candidates`` (peaks
kept per image before NMS, 200).
"""

from __future__ import annotations

import numpy as np

from server.core.errors import InvalidInput
from server.runtimes.python import ModelContext


def peaks(heatmap: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(classes, rows, cols, scores) of the ``limit`` best 3x3 local maxima of (C, h, w)."""
    c, h, w = heatmap.shape
    padded = np.pad(heatmap, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    # The 3x3 maximum as two 1-D maxima of shifted views (contiguous, ~10x a windowed reduce).
    across = np.maximum(np.maximum(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])  # (C, h + 2, w)
    local = np.maximum(np.maximum(across[:, :-2], across[:, 1:-1]), across[:, 2:])  # (C, h, w)
    is_peak = heatmap >= local
    scores = np.where(is_peak, heatmap, 0.0).reshape(-1)
    top = np.argpartition(-scores, min(limit, scores.size - 1))[:limit] if scores.size > limit else np.arange(scores.size)
    top = top[np.argsort(-scores[top], kind="stable")]
    classes, rest = np.divmod(top, h * w)
    rows, cols = np.divmod(rest, w)
    return classes, rows, cols, scores[top]


def decode_boxes(
    heatmap: np.ndarray, size: np.ndarray, offset: np.ndarray, stride: float, threshold: float, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's maps -> (boxes (K, 4) x1 y1 x2 y2 in network-input pixels, scores, classes),
    best first: the ``limit`` best peaks scoring at least ``threshold``; no NMS."""
    cls, rows, cols, score = peaks(heatmap, limit)
    chosen = score >= threshold
    cls, rows, cols, score = cls[chosen], rows[chosen], cols[chosen], score[chosen]
    cx = (cols + offset[0, rows, cols]) * stride
    cy = (rows + offset[1, rows, cols]) * stride
    half_w, half_h = size[0, rows, cols] / 2, size[1, rows, cols] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(np.float32)
    return boxes.reshape(-1, 4), score, cls


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    return inter / np.maximum(area(box) + area(others) - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by class-aware NMS, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for i, index in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(index)
        rest = order[i + 1 :]
        same = classes[rest] == classes[index]
        overlap = iou(boxes[index], boxes[rest]) > iou_threshold
        suppressed[i + 1 :] |= same & overlap
    return np.asarray(keep, dtype=np.int64)


class CenterNetDecode:
    def setup(self, context: ModelContext) -> None:
        p = context.parameters
        self.stride = float(p.get("stride", 4))
        self.score_threshold = float(p.get("score_threshold", 0.3))
        self.iou_threshold = float(p.get("iou_threshold", 0.5))
        self.k = int(p.get("max_detections", 100))
        self.candidates = int(p.get("candidates", 200))
        labels_file = p.get("labels", "")
        self.labels = (context.directory / labels_file).read_text().splitlines() if labels_file else []
        names = [spec.name for spec in context.inputs]
        self.maps = names[:4]  # heatmap, size, offset, transform
        self.outputs = {spec.name: spec.datatype for spec in context.outputs}

    def _option(self, inputs: dict, name: str, row: int, default: float) -> float:
        value = inputs.get(name)
        return default if value is None else float(value.reshape(len(value), -1)[row, 0])

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        heatmap, size, offset, transform = (inputs[name] for name in self.maps)
        n = heatmap.shape[0]
        boxes = np.zeros((n, self.k, 4), np.float32)
        scores = np.zeros((n, self.k), np.float32)
        classes = np.full((n, self.k), -1, np.int32)
        count = np.zeros((n, 1), np.int32)
        for row in range(n):
            threshold = self._option(inputs, "score_threshold", row, self.score_threshold)
            overlap = self._option(inputs, "iou_threshold", row, self.iou_threshold)
            most = int(self._option(inputs, "max_detections", row, self.k))
            if not (0.0 <= threshold <= 1.0 and 0.0 <= overlap <= 1.0 and most >= 0):
                raise InvalidInput("score_threshold and iou_threshold must be in [0, 1], max_detections >= 0")
            b, s, c = self._image(heatmap[row], size[row], offset[row], transform[row], threshold, overlap)
            m = min(len(s), most, self.k)
            boxes[row, :m], scores[row, :m], classes[row, :m], count[row, 0] = b[:m], s[:m], c[:m], m
        return self._named(boxes, scores, classes, count)

    def _image(self, heatmap, size, offset, transform, threshold: float, overlap: float):
        boxes, score, cls = decode_boxes(heatmap, size, offset, self.stride, threshold, self.candidates)
        keep = nms(boxes, score, cls, overlap)
        scale_x, scale_y, pad_x, pad_y, width, height = transform
        boxes = boxes[keep]
        boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - pad_x) / scale_x, 0, width)
        boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - pad_y) / scale_y, 0, height)
        return boxes, score[keep].astype(np.float32), cls[keep].astype(np.int32)

    def _named(self, boxes, scores, classes, count) -> dict[str, np.ndarray]:
        labels = np.array(
            [[self.labels[c].encode() if 0 <= c < len(self.labels) else (str(c).encode() if c >= 0 else b"") for c in row]
             for row in classes],
            dtype=object,
        ).reshape(classes.shape)
        out: dict[str, np.ndarray] = {}
        for name, datatype in self.outputs.items():
            if datatype == "BYTES":
                out[name] = labels
            elif datatype == "FP32":
                out[name] = boxes if "box" in name.lower() else scores
            elif "count" in name.lower():
                out[name] = count
            else:
                out[name] = classes
        return out
