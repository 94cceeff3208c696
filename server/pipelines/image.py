"""Image steps: encoded bytes (JPEG, PNG, WebP, ...) in, network-ready tensors out.

``image.decode_resize`` parameters (all strings, as config parameters are):

=============  ==========================================================  ===========
key            meaning                                                     default
=============  ==========================================================  ===========
``height``     output height in pixels                                     (required)
``width``      output width in pixels                                      (required)
``color``      ``RGB`` or ``L`` (grayscale)                                ``RGB``
``resize``     ``stretch`` to the size, or ``letterbox`` (keep the aspect   ``stretch``
               ratio, pad with ``pad_value``)
``scale``      multiplier applied to the 0..255 pixels first               ``1/255``
``mean``       per-channel mean subtracted after scaling (comma list)      ``0``
``std``        per-channel divisor after the mean (comma list)             ``1``
``layout``     ``NCHW`` or ``NHWC``                                        ``NCHW``
``pad_value``  letterbox fill (0..255)                                     ``114``
=============  ==========================================================  ===========

The first input is the BYTES tensor of images (one per row), the first output the FP32
batch. EXIF orientation is applied before anything else. An image that does not decode
fails only its own request (``InvalidInput``: the batcher reruns the batch one request
at a time).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from server.core.errors import InvalidInput
from server.runtimes.python import ModelContext

MAX_PIXELS = 64 * 1024 * 1024  # refuse decompression bombs before decoding them


_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap the axes


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """Pillow's errors on bad bytes, as the one 400 a caller gets."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except UnidentifiedImageError:
        raise InvalidInput("the image cannot be decoded (not a known image format); send JPEG, PNG, WebP, BMP or GIF bytes") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"the image cannot be decoded ({exc}); send JPEG, PNG, WebP, BMP or GIF bytes") from None


def _header(data: bytes):
    """The image opened lazily (header only) and its (width, height) after EXIF orientation;
    call inside ``_decoding``."""
    from PIL import Image

    if not isinstance(data, bytes | bytearray | memoryview) or not data:
        raise InvalidInput("an image input is empty or not bytes")
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > MAX_PIXELS:
        raise InvalidInput(f"the image is {image.width}x{image.height}; at most {MAX_PIXELS} pixels are accepted")
    turned = image.getexif().get(0x0112, 1) in _TURNED
    return image, ((image.height, image.width) if turned else (image.width, image.height))


def open_image(data: bytes, color: str, shrink_to: Callable[[tuple[int, int]], tuple[int, int]] | None = None):
    """Decode one image, EXIF orientation applied, converted to ``color`` (RGB or L); returns
    it with its original (width, height) after orientation.

    ``shrink_to(original size) -> (width, height)``: the image will only be needed at about
    that size, so a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode: the
    DCT is scaled, several times faster), never below that size.
    """
    from PIL import ImageOps

    with _decoding():
        image, size = _header(data)
        if shrink_to is not None and image.format == "JPEG":
            width, height = shrink_to(size)
            turned = image.getexif().get(0x0112, 1) in _TURNED  # the draft is in the file's own axes
            image.draft(color, (max(1, height), max(1, width)) if turned else (max(1, width), max(1, height)))
        return ImageOps.exif_transpose(image).convert(color), size


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header alone (nothing decoded)."""
    with _decoding():
        return _header(data)[1]


def _floats(text: str, default: float, channels: int) -> np.ndarray:
    values = [float(v) for v in text.split(",")] if text else [default]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ValueError(f"expected 1 or {channels} comma-separated values, got '{text}'")
    return np.asarray(values, np.float32)


@dataclass(frozen=True, slots=True)
class ImageSpec:
    height: int
    width: int
    color: str = "RGB"
    letterbox: bool = False
    pad_value: int = 114
    scale: float = 1 / 255
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    nchw: bool = True

    @classmethod
    def from_parameters(cls, p: dict[str, str]) -> ImageSpec:
        color = p.get("color", "RGB").upper()
        if color not in ("RGB", "L"):
            raise ValueError(f"color must be RGB or L, not '{color}'")
        resize = p.get("resize", "stretch")
        if resize not in ("stretch", "letterbox"):
            raise ValueError(f"resize must be stretch or letterbox, not '{resize}'")
        layout = p.get("layout", "NCHW").upper()
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, not '{layout}'")
        channels = 3 if color == "RGB" else 1
        return cls(
            height=int(p["height"]), width=int(p["width"]), color=color, letterbox=resize == "letterbox",
            pad_value=int(p.get("pad_value", 114)), scale=float(p.get("scale", 1 / 255)),
            mean=_floats(p.get("mean", ""), 0.0, channels), std=_floats(p.get("std", ""), 1.0, channels),
            nchw=layout == "NCHW",
        )

    def _needed(self, original: tuple[int, int]) -> tuple[int, int]:
        """The size the image is resized to: the letterbox's inner box, or the output."""
        if not self.letterbox:
            return self.width, self.height
        ratio = min(self.width / original[0], self.height / original[1])
        return max(1, round(original[0] * ratio)), max(1, round(original[1] * ratio))

    def tensor(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """One image -> ((C, H, W) or (H, W, C) float32, its transform).

        The transform is ``[scale_x, scale_y, pad_x, pad_y, width, height]``: a point of the
        original image maps to ``x * scale_x + pad_x`` in the tensor, and back.
        """
        from PIL import Image

        size = (self.width, self.height)
        image, (width, height) = open_image(data, self.color, shrink_to=self._needed)
        if self.letterbox:
            inner = self._needed((width, height))
            pad = ((size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2)
            canvas = Image.new(self.color, size, (self.pad_value,) * (3 if self.color == "RGB" else 1))
            canvas.paste(image.resize(inner, Image.Resampling.BILINEAR), pad)
            image = canvas
            transform = (inner[0] / width, inner[1] / height, pad[0], pad[1], width, height)
        else:
            if image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            transform = (size[0] / width, size[1] / height, 0, 0, width, height)
        pixels = np.array(image, np.float32).reshape(self.height, self.width, -1)  # (H, W, C), our own copy
        pixels *= self.scale  # in place: one pass each, no temporaries
        if self.mean.any():
            pixels -= self.mean
        if (self.std != 1).any():
            pixels /= self.std
        return (pixels.transpose(2, 0, 1) if self.nchw else pixels), np.asarray(transform, np.float32)


class DecodeResize:
    """The first output gets the batch of tensors; a second output, if the config declares
    one (FP32, dims [6]), each image's transform (see :meth:`ImageSpec.tensor`), which
    post-processing uses to map boxes back to the original pixels."""

    def setup(self, context: ModelContext) -> None:
        self.spec = ImageSpec.from_parameters(context.parameters)
        self.input = context.inputs[0].name
        self.outputs = [spec.name for spec in context.outputs[:2]]

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [self.spec.tensor(data) for data in inputs[self.input].reshape(-1)]
        arrays = (np.stack([t for t, _ in done]).astype(np.float32, copy=False), np.stack([m for _, m in done]))
        return dict(zip(self.outputs, arrays, strict=False))


class ImageSize:
    """``image.size``: each image's (height, width) after EXIF orientation, as INT32."""

    def setup(self, context: ModelContext) -> None:
        self.input = context.inputs[0].name
        self.output = context.outputs[0].name

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes = [image_size(data) for data in inputs[self.input].reshape(-1)]
        return {self.output: np.asarray([(h, w) for w, h in sizes], np.int32).reshape(-1, 2)}
