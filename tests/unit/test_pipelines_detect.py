"""``detect.centernet`` and ``image.digit`` on hand-made inputs: peaks, class-aware NMS,
the letterbox mapped back, per-request thresholds; digits of any size and polarity."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from server.core.errors import InvalidInput
from server.core.types import TensorSpec
from server.pipelines.detect import CenterNetDecode, nms, peaks
from server.pipelines.digits import digit_tensor
from server.runtimes.python import ModelContext

INPUTS = tuple(TensorSpec(n, "FP32", (-1,)) for n in ("heatmap", "size", "offset", "transform"))
OUTPUTS = (
    TensorSpec("boxes", "FP32", (-1, 5, 4)), TensorSpec("scores", "FP32", (-1, 5)),
    TensorSpec("classes", "INT32", (-1, 5)), TensorSpec("labels", "BYTES", (-1, 5)), TensorSpec("count", "INT32", (-1, 1)),
)


def decoder(tmp_path: Path, **parameters: str) -> CenterNetDecode:
    (tmp_path / "labels.txt").write_text("circle\nrectangle\ntriangle\n")
    step = CenterNetDecode()
    params = {"max_detections": "5", "labels": "labels.txt", **parameters}
    step.setup(ModelContext("post", "1", tmp_path, params, inputs=INPUTS, outputs=OUTPUTS, max_batch_size=8))
    return step


def maps(points: list[tuple[int, int, int, float, float, float]]) -> dict[str, np.ndarray]:
    """(class, row, col, score, w, h) centres on a 3-class 16x16 grid, stride 4; identity transform."""
    heatmap = np.zeros((1, 3, 16, 16), np.float32)
    size = np.zeros((1, 2, 16, 16), np.float32)
    for c, r, col, score, w, h in points:
        heatmap[0, c, r, col] = score
        size[0, :, r, col] = (w, h)
    transform = np.array([[1, 1, 0, 0, 64, 64]], np.float32)
    return {"heatmap": heatmap, "size": size, "offset": np.zeros((1, 2, 16, 16), np.float32), "transform": transform}


def test_peaks_are_local_maxima_best_first():
    heatmap = np.zeros((2, 5, 5), np.float32)
    heatmap[0, 1, 1], heatmap[0, 1, 2], heatmap[1, 3, 3] = 0.9, 0.5, 0.7  # (0,1,2) is not a peak
    classes, rows, cols, scores = peaks(heatmap, 10)
    assert list(zip(classes[:2], rows[:2], cols[:2], strict=True)) == [(0, 1, 1), (1, 3, 3)]
    assert scores[:2].tolist() == pytest.approx([0.9, 0.7]) and scores[2] == 0


def test_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11]], np.float32)
    kept = nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.5)
    assert kept.tolist() == [0, 2]


def test_boxes_scores_labels_and_count(tmp_path):
    out = decoder(tmp_path).execute(maps([(0, 4, 4, 0.9, 8, 8), (2, 10, 12, 0.6, 12, 4), (1, 2, 2, 0.1, 4, 4)]))
    assert out["count"].tolist() == [[2]]  # the 0.1 peak is under the 0.3 threshold
    np.testing.assert_allclose(out["boxes"][0, :2], [[12, 12, 20, 20], [42, 38, 54, 42]])
    assert out["labels"][0, :3].tolist() == [b"circle", b"triangle", b""] and out["classes"][0, 2] == -1


def test_the_letterbox_is_undone_and_boxes_are_clipped(tmp_path):
    m = maps([(0, 4, 4, 0.9, 8, 8), (1, 0, 0, 0.8, 8, 8)])
    m["transform"] = np.array([[0.5, 0.5, 4, 0, 100, 120]], np.float32)  # scaled by half, 4 px padding on x
    out = decoder(tmp_path).execute(m)
    np.testing.assert_allclose(out["boxes"][0, 0], [16, 24, 32, 40])  # ((12 - 4) / 0.5, 12 / 0.5, ...)
    np.testing.assert_allclose(out["boxes"][0, 1], [0, 0, 0, 8])  # x clipped to the image


def test_request_thresholds_override_the_config(tmp_path):
    m = maps([(0, 4, 4, 0.9, 8, 8), (0, 4, 5, 0.85, 8, 8), (1, 10, 10, 0.5, 8, 8)])
    m["heatmap"][0, 0, 4, 5] = 0.85  # not a peak next to 0.9: only two candidates
    step = decoder(tmp_path)
    assert step.execute({**m, "score_threshold": np.array([[0.6]], np.float32)})["count"].tolist() == [[1]]
    assert step.execute({**m, "max_detections": np.array([[1]], np.int32)})["count"].tolist() == [[1]]
    with pytest.raises(InvalidInput):
        step.execute({**m, "iou_threshold": np.array([[1.5]], np.float32)})


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(array * 255).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_a_digit_of_any_size_and_polarity_comes_back_to_8x8():
    from models.digits_data import load_split

    x = load_split().x_test[0, 0]  # (8, 8) in [0, 1]
    big = np.pad(np.kron(x, np.ones((7, 7))), 20)  # 96 x 96, digit in the middle of a wide border
    light, dark = digit_tensor(png(big))[0], digit_tensor(png(1.0 - big * 0.6))[0]  # dark ink on a light page
    assert light.shape == (8, 8) and np.abs(light - dark).max() < 0.02  # polarity and contrast do not matter
    assert light.max() == pytest.approx(1.0) and light[0].any() and light[7].any()  # the digit fills the height
    assert not digit_tensor(png(np.full((20, 30), 0.4))).any()  # a blank image stays blank
