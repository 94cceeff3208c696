"""Procedural detection scenes: filled circles, rectangles and triangles on cluttered backgrounds.

Every scene is a pure function of a ``numpy.random.Generator``, so ``make_scenes(seed, n)``
gives the same images and boxes on every machine (numpy's PCG64 streams and Pillow's
rasteriser and JPEG codec are deterministic). Nothing is downloaded.

A scene, drawn back to front::

    background   linear gradient + low-frequency colour noise + soft blobs
    clutter      long lines, arcs and stars (never a target class)
    objects      1..8 filled shapes, 16..200 px, any angle, may overlap
    noise        per-pixel gaussian noise, then a JPEG round trip (quality 40..95)

Ground truth comes from the objects' *visible* pixels: each object owns the pixels it
painted until a later object paints over them. An object keeps its label only if at least
``MIN_VISIBLE`` of its full (analytic) area is still visible inside the image, and its box
is the axis-aligned bounding box of those visible pixels (x2, y2 exclusive, so
``x2 - x1`` is the width in pixels).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

CLASSES = ("circle", "rectangle", "triangle")
TRAIN_SEED = 1_000
HELDOUT_SEED = 2_000

MIN_SIDE_PX, MAX_SIDE_PX = 320, 640  # image width and height, drawn independently
MIN_OBJECT_PX, MAX_OBJECT_PX = 16, 200  # an object's longest extent before rotation
MAX_OBJECTS = 8
MIN_VISIBLE = 0.4  # fraction of an object's area that must stay visible to be labelled
MIN_CONTRAST = 90.0  # RGB distance between an object's colour and the background under it
PAD_VALUE = 114  # letterbox grey, as the server's image.decode_resize pads


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB, after the JPEG round trip
    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2 in pixels of ``image``
    labels: np.ndarray  # (K,) int64 indices into CLASSES
    jpeg: bytes = field(default=b"", repr=False)  # the bytes ``image`` was decoded from


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) float32: gradient + upsampled coarse noise + a few soft blobs."""
    from PIL import Image

    angle = rng.uniform(0, 2 * np.pi)
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    t = np.float32(np.cos(angle)) * xs[None, :] + np.float32(np.sin(angle)) * ys[:, None]  # (h, w)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32)  # (h, w, 3)
    grid = int(rng.integers(3, 13))
    coarse = rng.normal(0, rng.uniform(10, 45), (grid, grid, 3)).astype(np.float32)
    img += np.stack([np.asarray(Image.fromarray(coarse[..., c], "F").resize((w, h), Image.Resampling.BICUBIC))
                     for c in range(3)], axis=-1)
    for _ in range(int(rng.integers(0, 6))):  # soft blobs: round but edgeless, not circles
        cx, cy, sigma = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 60)
        bump_x = np.exp(-((np.arange(w, dtype=np.float32) - cx) ** 2) / (2 * sigma**2))  # (w,)
        bump_y = np.exp(-((np.arange(h, dtype=np.float32) - cy) ** 2) / (2 * sigma**2))  # (h,)
        img += (bump_y[:, None] * bump_x[None, :])[..., None] * rng.uniform(-90, 90, 3).astype(np.float32)
    return img


def _clutter(rng: np.random.Generator, draw, w: int, h: int) -> None:
    """Distractors drawn under the objects: long lines, arcs, stars."""
    def colour() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(0, 256, 3))

    for _ in range(int(rng.integers(0, 9))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        length, a = rng.uniform(80, 500), rng.uniform(0, 2 * np.pi)
        draw.line([x0, y0, x0 + length * np.cos(a), y0 + length * np.sin(a)], fill=colour(),
                  width=int(rng.integers(1, 5)))
    for _ in range(int(rng.integers(0, 4))):
        x0, y0, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 120)
        start = rng.uniform(0, 360)
        draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start, start + rng.uniform(60, 300), fill=colour(),
                 width=int(rng.integers(1, 5)))
    for _ in range(int(rng.integers(0, 3))):
        n, r = int(rng.integers(5, 9)), rng.uniform(12, 60)
        inner, a0 = rng.uniform(0.35, 0.6), rng.uniform(0, 2 * np.pi)
        a = a0 + np.arange(2 * n) * np.pi / n
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        draw.polygon(list(zip(cx + rad * np.cos(a), cy + rad * np.sin(a), strict=True)), fill=colour())


def _shape_polygon(rng: np.random.Generator, label: int) -> np.ndarray:
    """(P, 2) vertices around the origin: longest extent 16..200 px (log-uniform), any angle."""
    size = float(np.exp(rng.uniform(np.log(MIN_OBJECT_PX), np.log(MAX_OBJECT_PX))))
    if label == 0:  # circle: round-ish, aspect <= 1.2
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        pts = np.stack([np.cos(t) * size / 2, np.sin(t) * size / 2 / rng.uniform(1.0, 1.2)], axis=1)
    elif label == 1:  # rectangle: aspect up to 3:1
        half_w, half_h = size / 2, size / 2 / rng.uniform(1.0, 3.0)
        pts = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    else:  # triangle: base and height within 3:1 of each other, apex anywhere over the base
        base, height = size, size / rng.uniform(1.0, 3.0)
        if rng.random() < 0.5:
            base, height = height, base
        apex = rng.uniform(0.0, 1.0) * base
        pts = np.array([[0.0, 0.0], [base, 0.0], [apex, height]])
        pts -= pts.mean(axis=0)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return pts @ rot.T


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least MIN_CONTRAST away from ``under`` (mean RGB), else its complement."""
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if np.linalg.norm(c - under) >= MIN_CONTRAST:
            return tuple(int(v) for v in c)
    return tuple(int(v) for v in 255 - np.round(under).clip(0, 255))


def _draw_objects(rng: np.random.Generator, image, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint 1..8 objects onto ``image`` (PIL RGB); returns the visible boxes and labels."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(image)
    owner = np.full((h, w), -1, np.int16)  # which object painted each pixel last
    areas, labels = [], []
    for k in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(0, len(CLASSES)))
        pts = _shape_polygon(rng, label) + (rng.uniform(0, w), rng.uniform(0, h))
        poly = [tuple(p) for p in pts.tolist()]
        mask_img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask_img).polygon(poly, fill=255)
        mask = np.asarray(mask_img) > 0  # (h, w)
        if not mask.any():
            continue  # thinner than a pixel row where it lands; nothing to see or label
        under = np.asarray(image)[mask].mean(axis=0)
        draw.polygon(poly, fill=_contrasting_colour(rng, under))
        owner[mask] = k
        areas.append((k, _polygon_area(pts)))
        labels.append(label)
    boxes, kept = [], []
    for (k, area), label in zip(areas, labels, strict=True):
        ys, xs = np.nonzero(owner == k)
        if len(xs) < MIN_VISIBLE * area:
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        kept.append(label)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(kept, np.int64)


def make_scene(rng: np.random.Generator) -> Scene:
    """One scene; consumes ``rng``. The image is what a JPEG decoder returns for ``scene.jpeg``."""
    from PIL import Image, ImageDraw

    w, h = (int(v) for v in rng.integers(MIN_SIDE_PX, MAX_SIDE_PX + 1, 2))
    image = Image.fromarray(_background(rng, w, h).clip(0, 255).astype(np.uint8))
    _clutter(rng, ImageDraw.Draw(image), w, h)
    boxes, labels = _draw_objects(rng, image, w, h)
    pixels = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(0, 10), (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(40, 96)))
    jpeg = buf.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).copy()
    return Scene(image=decoded, boxes=boxes, labels=labels, jpeg=jpeg)


def make_scenes(seed: int, n: int) -> list[Scene]:
    """``n`` scenes; scene i depends only on (seed, i), so a prefix of a longer list is the same."""
    return [make_scene(np.random.default_rng([seed, i])) for i in range(n)]


def scene_jpeg(scene: Scene) -> bytes:
    """The encoded JPEG a client would send; decoding it gives back ``scene.image`` exactly."""
    if scene.jpeg:
        return scene.jpeg
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, "PNG")  # lossless, for scenes built by hand
    return buf.getvalue()


def letterbox_geometry(width: int, height: int, size: int) -> tuple[float, int, int, int, int]:
    """(scale, inner_w, inner_h, pad_x, pad_y): the server's letterbox arithmetic, in one place."""
    scale = min(size / width, size / height)
    inner_w, inner_h = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, inner_w, inner_h, (size - inner_w) // 2, (size - inner_h) // 2


def letterbox_transform(width: int, height: int, size: int) -> np.ndarray:
    """float32 ``[scale_x, scale_y, pad_x, pad_y, width, height]``, as the server's
    ``image.decode_resize`` reports it: the exact per-axis map of the resize (``inner / width``,
    within half a pixel of ``scale``), so a point goes to ``x * scale_x + pad_x`` and back."""
    _, inner_w, inner_h, pad_x, pad_y = letterbox_geometry(width, height, size)
    return np.asarray((inner_w / width, inner_h / height, pad_x, pad_y, width, height), np.float32)


def letterbox_uint8(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """(size, size, 3) uint8 letterboxed RGB, scale, pad_x, pad_y; see ``letterbox``."""
    from PIL import Image

    h, w = image.shape[:2]
    scale, inner_w, inner_h, pad_x, pad_y = letterbox_geometry(w, h, size)
    canvas = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    canvas.paste(Image.fromarray(image).resize((inner_w, inner_h), Image.Resampling.BILINEAR), (pad_x, pad_y))
    return np.asarray(canvas), scale, pad_x, pad_y


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """The network input for ``image`` (H, W, 3) uint8 RGB, exactly as the server builds it.

    Returns (pixels float32 (3, size, size) in [0, 1], scale, pad_x, pad_y). Matches
    ``server/pipelines/image.py`` with ``resize=letterbox``: Pillow BILINEAR resize by
    ``scale = min(size/W, size/H)`` to ``(round(W*scale), round(H*scale))`` (each >= 1), pasted
    at ``((size-w)//2, (size-h)//2)`` on a 114-grey canvas, then ``* (1/255)`` in float32.
    ``scale`` is the ratio the size was chosen by; the resize itself is exactly
    ``round(W * scale) / W`` in x (and likewise in y), which ``letterbox_transform`` gives and
    both training and evaluation use to map boxes.
    """
    pixels, scale, pad_x, pad_y = letterbox_uint8(image, size)
    return (pixels.astype(np.float32) * (1 / 255)).transpose(2, 0, 1), scale, pad_x, pad_y
