"""The shapes scene generator, the letterbox the server shares, and the shipped detector."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models import shapes_data, shapes_detector
from models.train_shapes import Prepared, TrainConfig, coco_map, detect, prepare, targets

TEST_SEED = 3_000  # neither TRAIN_SEED nor HELDOUT_SEED


@pytest.fixture(scope="module")
def scenes() -> list[shapes_data.Scene]:
    return shapes_data.make_scenes(TEST_SEED, 6)


@pytest.fixture(scope="module")
def fresh() -> Prepared:
    return prepare(TEST_SEED, 20, shapes_detector.ShapesDetectorConfig().input_size, workers=1)


def test_scenes_are_deterministic_per_seed(scenes) -> None:
    again = shapes_data.make_scenes(TEST_SEED, 3)
    for a, b in zip(scenes, again, strict=False):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
        assert np.array_equal(a.labels, b.labels) and a.jpeg == b.jpeg
    other = shapes_data.make_scenes(TEST_SEED + 1, 1)[0]
    assert other.image.shape != scenes[0].image.shape or not np.array_equal(other.image, scenes[0].image)


def test_scenes_have_valid_boxes_and_labels(scenes) -> None:
    for s in scenes:
        h, w, _ = s.image.shape
        assert s.image.dtype == np.uint8 and 320 <= h <= 640 and 320 <= w <= 640
        assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64 and len(s.boxes) == len(s.labels)
        assert 1 <= len(s.labels) <= 8
        assert ((0 <= s.labels) & (s.labels < len(shapes_data.CLASSES))).all()
        x1, y1, x2, y2 = s.boxes.T
        assert (0 <= x1).all() and (x1 < x2).all() and (x2 <= w).all()
        assert (0 <= y1).all() and (y1 < y2).all() and (y2 <= h).all()


def test_jpeg_decodes_to_the_scene_image(scenes) -> None:
    from PIL import Image

    for s in scenes[:2]:
        decoded = np.asarray(Image.open(io.BytesIO(shapes_data.scene_jpeg(s))).convert("RGB"))
        assert np.array_equal(decoded, s.image)


def test_boxes_are_tight_around_drawn_pixels() -> None:
    from PIL import Image

    for seed in range(5):
        w, h, grey = 400, 360, (128, 128, 128)
        image = Image.new("RGB", (w, h), grey)
        boxes, labels = shapes_data._draw_objects(np.random.default_rng(seed), image, w, h)
        painted = (np.asarray(image) != grey).any(axis=-1)  # (h, w)
        assert len(boxes) >= 1
        for x1, y1, x2, y2 in boxes.astype(int):
            inside = painted[y1:y2, x1:x2]
            # every edge of the box touches a painted pixel: the box is no larger than the shape
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert inside.mean() > 0.2


def test_letterbox_matches_the_server_and_round_trips_boxes(scenes) -> None:
    from server.pipelines.image import ImageSpec

    size = 320
    spec = ImageSpec.from_parameters({"height": str(size), "width": str(size), "resize": "letterbox"})
    for s in scenes[:3]:
        h, w = s.image.shape[:2]
        pixels, scale, pad_x, pad_y = shapes_data.letterbox(s.image, size)
        assert pixels.shape == (3, size, size) and pixels.dtype == np.float32
        served, served_transform = spec.tensor(shapes_data.scene_jpeg(s))
        assert np.array_equal(pixels, served)  # bit-identical to what the server feeds the network
        transform = shapes_data.letterbox_transform(w, h, size)
        assert np.array_equal(transform, served_transform)
        inner_w, inner_h = round(w * scale), round(h * scale)
        assert scale == min(size / w, size / h) and max(inner_w, inner_h) == size
        assert (pad_x, pad_y) == ((size - inner_w) // 2, (size - inner_h) // 2) == tuple(transform[2:4])
        assert np.allclose(pixels[:, :, :pad_x], 114 / 255) and np.allclose(pixels[:, :pad_y], 114 / 255)
        to_input = np.tile(transform[:2], 2), np.tile(transform[2:4], 2)
        in_input = s.boxes * to_input[0] + to_input[1]
        assert (in_input >= 0).all() and (in_input <= size).all()
        np.testing.assert_allclose((in_input - to_input[1]) / to_input[0], s.boxes, atol=1e-3)
        np.testing.assert_allclose(to_input[0], scale, rtol=0.5 / min(inner_w, inner_h))


def test_decode_recovers_boxes_from_ideal_maps(fresh) -> None:
    for k in range(5):
        heat, log_size, offset, _ = targets(fresh.boxes[k], fresh.labels[k], 3, 80, TrainConfig())
        boxes, scores, labels = shapes_detector.decode(heat, np.exp(log_size), offset, 0.99, 100)
        order = np.lexsort((boxes[:, 0], labels))
        want = np.lexsort((fresh.boxes[k][:, 0], fresh.labels[k]))
        np.testing.assert_allclose(boxes[order], fresh.boxes[k][want], atol=1e-3)
        assert np.array_equal(labels[order], fresh.labels[k][want]) and (scores == 1).all()


def test_class_aware_nms_keeps_other_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    keep = shapes_detector.class_aware_nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 0]))
    assert keep.tolist() == [0, 2, 3]


def test_shipped_weights_follow_the_output_contract() -> None:
    model = shapes_detector.load()
    s = model.config.input_size
    assert s % 32 == 0 and model.config.stride == 4 and shapes_detector.LABELS == shapes_data.CLASSES
    with torch.no_grad():
        heat, size, offset = model(torch.rand(2, 3, s, s))
    assert heat.shape == (2, 3, s // 4, s // 4)
    assert size.shape == offset.shape == (2, 2, s // 4, s // 4)
    assert 0 <= heat.min() and heat.max() <= 1 and (size > 0).all()
    assert 0 <= offset.min() and offset.max() <= 1


def test_save_load_roundtrip_keeps_config(tmp_path) -> None:
    config = shapes_detector.ShapesDetectorConfig(input_size=64, widths=(8, 8, 16, 16, 16), neck=8, head=8)
    model = shapes_detector.ShapesDetector(config).eval()
    shapes_detector.save(model, tmp_path / "w.safetensors")
    loaded = shapes_detector.load(tmp_path / "w.safetensors")
    assert loaded.config == config
    x = torch.rand(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x), strict=True))


def test_shipped_detector_reaches_map50_on_fresh_scenes(fresh) -> None:
    metrics = coco_map(fresh, detect(shapes_detector.load(), fresh))
    assert metrics["map50"] >= 0.7, metrics


def test_untrained_detector_fails_the_same_bar(fresh) -> None:
    torch.manual_seed(0)
    metrics = coco_map(fresh, detect(shapes_detector.ShapesDetector().eval(), fresh))
    assert metrics["map50"] < 0.1, metrics
