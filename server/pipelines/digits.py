"""``image.digit``: a photo or drawing of one handwritten digit -> the digits CNN's input.

scikit-learn's digits are 8x8, light ink on a dark ground, values 0..1 (0..16 / 16), the
digit centred and filling the height. Any image is brought to that: decoded to grey,
inverted when its border is lighter than its ink (a dark digit on paper), stretched from
the ground's level to the ink's brightest, cropped to the ink (``crop``: ``ink`` or
``none``) in a square with a ``margin`` (fraction of the side on each side), then area-
averaged down to ``size`` x ``size`` (default 8). Output: FP32 ``(1, size, size)``.
"""

from __future__ import annotations

import numpy as np

from server.pipelines.image import open_image
from server.runtimes.python import ModelContext

INK_LEVEL = 0.25  # stretched values above this count as ink when cropping


def digit_tensor(data: bytes, size: int = 8, crop: bool = True, margin: float = 0.0) -> np.ndarray:
    from PIL import Image

    grey = np.asarray(open_image(data, "L")[0], np.float32) / 255.0  # (H, W)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    ground = float(np.median(border))
    if ground > 0.5 * (float(grey.min()) + float(grey.max())):  # light ground: dark ink
        grey, ground = 1.0 - grey, 1.0 - ground
    top = float(grey.max())
    if top - ground < 1e-3:  # a blank image: nothing to stretch
        return np.zeros((1, size, size), np.float32)
    ink = np.clip((grey - ground) / (top - ground), 0.0, 1.0)
    if crop:
        rows, cols = np.nonzero(ink > INK_LEVEL)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        side = max(y1 - y0, x1 - x0)
        side_m = int(round(side * (1 + 2 * margin)))
        square = np.zeros((side_m, side_m), np.float32)
        oy, ox = (side_m - (y1 - y0)) // 2, (side_m - (x1 - x0)) // 2
        square[oy : oy + y1 - y0, ox : ox + x1 - x0] = ink[y0:y1, x0:x1]
        ink = square
    image = Image.fromarray(ink, mode="F").resize((size, size), Image.Resampling.BOX)
    out = np.asarray(image, np.float32)
    return (out / max(float(out.max()), 1e-6)).reshape(1, size, size)


class Digit:
    def setup(self, context: ModelContext) -> None:
        p = context.parameters
        self.size = int(p.get("size", 8))
        crop = p.get("crop", "ink")
        if crop not in ("ink", "none"):
            raise ValueError(f"crop must be ink or none, not '{crop}'")
        self.crop = crop == "ink"
        self.margin = float(p.get("margin", 0.0))
        self.input = context.inputs[0].name
        self.output = context.outputs[0].name

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs[self.input].reshape(-1)
        return {self.output: np.stack([digit_tensor(d, self.size, self.crop, self.margin) for d in images])}
