"""The image route's pure parts: which digit a prompt names, sizes, PNG encoding."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from server.core.errors import InvalidInput
from server.frontends.http.images import _scale, digit_from_prompt, png_base64


@pytest.mark.parametrize(("prompt", "digit"), [
    ("7", 7), ("seven", 7), ("a seven", 7), ("A handwritten SEVEN, please", 7), ("the digit 0", 0),
    ("nine", 9), ("draw a 3.", 3), ("one one one", 1),
])
def test_a_prompt_names_one_digit(prompt, digit):
    assert digit_from_prompt(prompt) == digit


@pytest.mark.parametrize(("prompt", "message"), [
    ("a cat", "names no digit"), ("", "non-empty"), (None, "non-empty"), (7, "non-empty"),
    ("3 or 4", "several digits"), ("twelve", "names no digit"), ("10", "names no digit"), ("someone", "names no digit"),
])
def test_prompts_naming_no_single_digit_are_refused(prompt, message):
    with pytest.raises(InvalidInput, match=message):
        digit_from_prompt(prompt)


def test_sizes_are_the_native_one_or_integer_upscales():
    assert _scale(None, (16, 16)) == 1 and _scale("auto", (16, 16)) == 1
    assert _scale("16x16", (16, 16)) == 1 and _scale("32x32", (16, 16)) == 2 and _scale("256x256", (16, 16)) == 16
    for size in ("24x24", "512x512", "32x16", "big", 32):
        with pytest.raises(InvalidInput, match="integer upscales"):
            _scale(size, (16, 16))


def test_png_is_the_image_with_each_pixel_repeated():
    from PIL import Image

    image = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    picture = Image.open(io.BytesIO(base64.b64decode(png_base64(image, 3))))
    pixels = np.asarray(picture)
    assert picture.format == "PNG" and picture.mode == "L" and pixels.shape == (48, 48)
    np.testing.assert_array_equal(pixels[::3, ::3], np.rint(image[0] * 255).astype(np.uint8))
    np.testing.assert_array_equal(pixels[1::3, 2::3], pixels[::3, ::3])
