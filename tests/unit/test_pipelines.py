"""deepserve's own pipeline steps (image decoding, top-k), run through the Python runtime."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.core.errors import InvalidInput
from server.core.types import TensorSpec
from server.runtimes.base import RuntimeOptions
from server.runtimes.python import PythonRuntime

IMAGE_IN = (TensorSpec("IMAGE", "BYTES", (-1, 1)),)


def processor(
    tmp_path: Path, name: str, outputs: tuple[TensorSpec, ...], inputs=IMAGE_IN, **parameters
) -> PythonRuntime:
    runtime = PythonRuntime()
    options = RuntimeOptions(
        parameters=(("processor", name), *((k, str(v)) for k, v in parameters.items())),
        inputs=inputs,
        outputs=outputs,
    )
    runtime.load(tmp_path / "model.py", options)  # a processor needs no file; its folder is the model's
    return runtime


def decoder(tmp_path: Path, **parameters) -> PythonRuntime:
    return processor(tmp_path, "image.decode_resize", (TensorSpec("PIXELS", "FP32", (-1, -1, -1, -1)),), **parameters)


def encode(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def images(*blobs: bytes) -> dict[str, np.ndarray]:
    batch = np.empty((len(blobs), 1), dtype=object)
    for i, blob in enumerate(blobs):
        batch[i, 0] = blob
    return {"IMAGE": batch}


def gradient(height: int = 2, width: int = 4) -> np.ndarray:
    """(H, W, 3) uint8: pixel (y, x, c) = 50*y + 10*x + c."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return (50 * y + 10 * x + c).astype(np.uint8)


def test_png_decodes_to_exact_pixels_in_nchw(tmp_path):
    pixels = gradient()
    runtime = decoder(tmp_path, height=2, width=4, scale=1)
    out = runtime.execute(images(encode(Image.fromarray(pixels, "RGB"))))["PIXELS"]
    assert out.shape == (1, 3, 2, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], pixels.transpose(2, 0, 1).astype(np.float32))


def test_nhwc_layout_keeps_channels_last(tmp_path):
    pixels = gradient()
    runtime = decoder(tmp_path, height=2, width=4, scale=1, layout="NHWC")
    out = runtime.execute(images(encode(Image.fromarray(pixels, "RGB"))))["PIXELS"]
    assert out.shape == (1, 2, 4, 3)
    np.testing.assert_array_equal(out[0], pixels.astype(np.float32))


def test_grayscale_has_one_channel(tmp_path):
    pixels = gradient()[:, :, 0]
    runtime = decoder(tmp_path, height=2, width=4, scale=1, color="L")
    out = runtime.execute(images(encode(Image.fromarray(pixels, "L"))))["PIXELS"]
    assert out.shape == (1, 1, 2, 4)
    np.testing.assert_array_equal(out[0, 0], pixels.astype(np.float32))


def test_scale_mean_and_std_are_applied_per_channel(tmp_path):
    pixels = gradient()
    runtime = decoder(tmp_path, height=2, width=4, mean="0.1,0.2,0.3", std="0.5,0.25,2")
    out = runtime.execute(images(encode(Image.fromarray(pixels, "RGB"))))["PIXELS"][0]
    expected = (pixels / 255 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 2]
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-6)


def test_each_image_of_a_batch_is_resized_to_the_configured_size(tmp_path):
    small, large = Image.new("RGB", (3, 5), (10, 20, 30)), Image.new("RGB", (40, 17), (10, 20, 30))
    runtime = decoder(tmp_path, height=6, width=8, scale=1)
    out = runtime.execute(images(encode(small), encode(large)))["PIXELS"]
    assert out.shape == (2, 3, 6, 8)
    np.testing.assert_array_equal(out[:, :, 0, 0], [[10, 20, 30], [10, 20, 30]])  # a flat color stays flat


def rotated_jpeg() -> bytes:
    """Stored 8 wide and 4 tall, dark left half, bright right half; EXIF orientation 6
    (display rotated 90 degrees clockwise: 4 wide, 8 tall, bright half at the bottom)."""
    stored = np.zeros((4, 8), np.uint8)
    stored[:, 4:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(stored, "L"), "JPEG", exif=exif, quality=95)


def test_exif_orientation_is_applied_before_anything_else(tmp_path):
    size = processor(tmp_path, "image.size", (TensorSpec("SIZE", "INT32", (-1, 2)),))
    out = size.execute(images(rotated_jpeg()))["SIZE"]
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[8, 4]])  # (height, width) as displayed


def test_exif_rotated_image_is_decoded_upright(tmp_path):
    runtime = decoder(tmp_path, height=8, width=4, scale=1, color="L")
    out = runtime.execute(images(rotated_jpeg()))["PIXELS"][0, 0]  # (8, 4)
    assert out[:3].max() < 60 and out[-3:].min() > 200  # dark top, bright bottom


def test_letterbox_keeps_the_aspect_ratio_and_pads(tmp_path):
    wide = Image.new("L", (8, 4), 255)
    runtime = decoder(tmp_path, height=8, width=8, scale=1, color="L", resize="letterbox", pad_value=7)
    out = runtime.execute(images(encode(wide)))["PIXELS"][0, 0]
    np.testing.assert_array_equal(out[:2], np.full((2, 8), 7.0))  # padding above
    np.testing.assert_array_equal(out[2:6], np.full((4, 8), 255.0))  # the image, not stretched
    np.testing.assert_array_equal(out[6:], np.full((2, 8), 7.0))  # and below


def test_letterbox_pads_every_rgb_channel(tmp_path):
    tall = Image.new("RGB", (2, 4), (200, 100, 50))
    runtime = decoder(tmp_path, height=4, width=4, scale=1, resize="letterbox")
    out = runtime.execute(images(encode(tall)))["PIXELS"][0]  # (3, 4, 4)
    np.testing.assert_array_equal(out[:, :, 0], np.full((3, 4), 114.0))  # default pad value, left column
    np.testing.assert_array_equal(out[:, 0, 1], [200, 100, 50])


@pytest.mark.parametrize("blob", [b"definitely not an image", b""], ids=["garbage", "empty"])
def test_undecodable_bytes_are_invalid_input(tmp_path, blob):
    runtime = decoder(tmp_path, height=2, width=2)
    with pytest.raises(InvalidInput, match="image"):
        runtime.execute(images(blob))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"height": 2, "width": 2, "color": "CMYK"}, "color must be RGB or L, not 'CMYK'"),
        ({"height": 2, "width": 2, "layout": "CHW"}, "layout must be NCHW or NHWC"),
        ({"height": 2, "width": 2, "resize": "crop"}, "resize must be stretch or letterbox"),
        ({"height": 2, "width": 2, "mean": "1,2"}, "expected 1 or 3 comma-separated values"),
        ({"width": 2}, "KeyError: 'height'"),
    ],
    ids=["color", "layout", "resize", "mean", "no-height"],
)
def test_bad_parameters_are_refused_at_load(tmp_path, parameters, message):
    with pytest.raises(InvalidInput, match=rf"processor 'image.decode_resize' .*{message}"):
        decoder(tmp_path, **parameters)


# -- classify.topk ---------------------------------------------------------------------

TOPK_OUT = (
    TensorSpec("LABELS", "BYTES", (-1, -1)),
    TensorSpec("SCORES", "FP32", (-1, -1)),
    TensorSpec("INDICES", "INT64", (-1, -1)),
)
LOGITS_IN = (TensorSpec("LOGITS", "FP32", (-1, 4)),)
LOGITS = np.array([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 9.0]], np.float32)


def topk(tmp_path: Path, **parameters) -> PythonRuntime:
    (tmp_path / "labels.txt").write_text("zero\none\ntwo\nthree\n")
    return processor(tmp_path, "classify.topk", TOPK_OUT, inputs=LOGITS_IN, labels="labels.txt", **parameters)


def test_topk_gives_labels_scores_and_indices_best_first(tmp_path):
    out = topk(tmp_path, k=2).execute({"LOGITS": LOGITS})
    assert out["LABELS"].tolist() == [[b"one", b"two"], [b"three", b"zero"]]
    assert out["INDICES"].dtype == np.int64
    np.testing.assert_array_equal(out["INDICES"], [[1, 2], [3, 0]])
    probabilities = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["SCORES"], [probabilities[0, [1, 2]], probabilities[1, [3, 0]]], rtol=1e-6)
    assert out["SCORES"].dtype == np.float32
    assert (np.diff(out["SCORES"], axis=1) <= 0).all()
    assert (out["SCORES"].sum(axis=1) <= 1 + 1e-6).all()


def test_topk_larger_than_the_classes_returns_every_class(tmp_path):
    out = topk(tmp_path, k=10).execute({"LOGITS": LOGITS[:1]})
    assert out["INDICES"].shape == (1, 4)
    np.testing.assert_array_equal(out["INDICES"], [[1, 2, 0, 3]])
    np.testing.assert_allclose(out["SCORES"].sum(), 1.0, rtol=1e-6)


def test_topk_without_softmax_returns_the_raw_scores(tmp_path):
    out = topk(tmp_path, k=1, softmax="false").execute({"LOGITS": LOGITS})
    np.testing.assert_array_equal(out["SCORES"], [[3.0], [9.0]])


def test_topk_without_a_labels_file_labels_by_index(tmp_path):
    runtime = processor(tmp_path, "classify.topk", TOPK_OUT, inputs=LOGITS_IN, k=1)
    assert runtime.execute({"LOGITS": LOGITS})["LABELS"].tolist() == [[b"1"], [b"3"]]


def test_topk_refuses_k_below_one(tmp_path):
    with pytest.raises(InvalidInput, match="k must be at least 1"):
        topk(tmp_path, k=0)
