"""Training recipe for the shapes detector, and its held-out COCO evaluation.

    python -m models.train_shapes --seed 0 --out models/weights/shapes_detector.safetensors

Scenes are generated once (two worker processes), letterboxed to the network size and
kept in memory as uint8; every epoch revisits them under a random one of the 8 flips and
transposes of the square (the three classes do not change under them). Losses are
CenterNet's: penalty-reduced focal loss on a gaussian centre heatmap (elliptical, the
box's aspect), L1 on log width/height and on the sub-cell offset at each centre cell.
The held-out scenes (``HELDOUT_SEED``) are scored with pycocotools' COCOeval, boxes mapped
back to each original image.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer

from models import shapes_detector
from models.shapes_data import CLASSES, HELDOUT_SEED, TRAIN_SEED, letterbox_transform, letterbox_uint8, make_scene

RESULTS = Path(__file__).parent / "results" / "shapes_detector.json"


@dataclass(frozen=True)
class TrainConfig:
    scenes: int = 6_000
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    gaussian_alpha: float = 0.54  # heatmap sigma = alpha * box side / 6 (TTFNet's elliptical gaussian)
    size_weight: float = 1.0
    offset_weight: float = 1.0
    seed: int = 0


@dataclass
class Prepared:
    """Scenes letterboxed to the network input, plus what maps boxes back to the originals."""

    pixels: torch.Tensor  # (N, 3, S, S) uint8
    boxes: list[np.ndarray]  # (K, 4) float32 x1y1x2y2 in input pixels
    labels: list[np.ndarray]  # (K,) int64
    original_boxes: list[np.ndarray]  # (K, 4) in the original image's pixels
    transform: np.ndarray  # (N, 6) float32: scale_x, scale_y, pad_x, pad_y, width, height (the server's)


def _prepare_one(args: tuple[int, int, int]) -> tuple:
    seed, index, size = args
    scene = make_scene(np.random.default_rng([seed, index]))  # the same scene as make_scenes(seed, n)[index]
    pixels = letterbox_uint8(scene.image, size)[0]  # (S, S, 3)
    h, w = scene.image.shape[:2]
    transform = letterbox_transform(w, h, size)
    boxes = scene.boxes * np.tile(transform[:2], 2) + np.tile(transform[2:4], 2)  # (K, 4) input pixels
    return pixels.transpose(2, 0, 1).copy(), boxes.astype(np.float32), scene.labels, scene.boxes, transform


def prepare(seed: int, n: int, size: int, workers: int = 2) -> Prepared:
    """Generate and letterbox ``n`` scenes of ``seed`` (in ``workers`` processes when > 1)."""
    jobs = [(seed, i, size) for i in range(n)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_prepare_one, jobs, chunksize=32)
    else:
        rows = [_prepare_one(job) for job in jobs]
    return Prepared(
        pixels=torch.from_numpy(np.stack([r[0] for r in rows])),
        boxes=[r[1] for r in rows], labels=[r[2] for r in rows], original_boxes=[r[3] for r in rows],
        transform=np.stack([r[4] for r in rows]),
    )


def targets(boxes: np.ndarray, labels: np.ndarray, n_classes: int, grid: int, config: TrainConfig) -> tuple:
    """One image's dense targets on the stride-4 grid.

    Returns heatmap (C, g, g) with exact 1s at centre cells, log_size (2, g, g), offset (2, g, g)
    and mask (g, g) marking the centre cells that carry size/offset targets.
    """
    stride = shapes_detector.STRIDE
    heat = np.zeros((n_classes, grid, grid), np.float32)
    log_size = np.zeros((2, grid, grid), np.float32)
    offset = np.zeros((2, grid, grid), np.float32)
    mask = np.zeros((grid, grid), np.float32)
    cells = np.arange(grid, dtype=np.float32)
    for (x1, y1, x2, y2), c in zip(boxes, labels, strict=True):
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride  # centre in cells
        j, i = min(int(cx), grid - 1), min(int(cy), grid - 1)
        sx = max(config.gaussian_alpha * w / stride / 6, 0.4)
        sy = max(config.gaussian_alpha * h / stride / 6, 0.4)
        g = np.exp(-((cells[None, :] - j) ** 2) / (2 * sx**2) - ((cells[:, None] - i) ** 2) / (2 * sy**2))
        np.maximum(heat[c], g, out=heat[c])
        heat[c, i, j] = 1.0
        log_size[:, i, j] = np.log(w), np.log(h)
        offset[:, i, j] = cx - j, cy - i
        mask[i, j] = 1.0
    return heat, log_size, offset, mask


def _dihedral(pixels: torch.Tensor, boxes: np.ndarray, code: int) -> tuple[torch.Tensor, np.ndarray]:
    """Apply one of the square's 8 symmetries (bit 0: flip x, bit 1: flip y, bit 2: transpose)."""
    size = pixels.shape[-1]
    boxes = boxes.copy()
    if code & 1:
        pixels = pixels.flip(-1)
        boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
    if code & 2:
        pixels = pixels.flip(-2)
        boxes[:, [1, 3]] = size - boxes[:, [3, 1]]
    if code & 4:
        pixels = pixels.transpose(-1, -2)
        boxes = boxes[:, [1, 0, 3, 2]]
    return pixels, boxes


def losses(model: torch.nn.Module, batch: tuple, config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    image, heat, log_size, offset, mask = batch
    logits, pred_log_size, pred_offset_logits = model.forward_raw(image)  # (B, C, g, g), (B, 2, g, g) x2
    pos = heat.eq(1.0).float()
    n_pos = pos.sum().clamp(min=1.0)
    p = logits.sigmoid()
    focal = -(pos * F.logsigmoid(logits) * (1 - p) ** 2
              + (1 - pos) * F.logsigmoid(-logits) * p**2 * (1 - heat) ** 4).sum() / n_pos
    m = mask.unsqueeze(1)  # (B, 1, g, g)
    size_l1 = (m * (pred_log_size - log_size).abs()).sum() / n_pos
    offset_l1 = (m * (pred_offset_logits.sigmoid() - offset).abs()).sum() / n_pos
    total = focal + config.size_weight * size_l1 + config.offset_weight * offset_l1
    return total, {"focal": focal.item(), "size": size_l1.item(), "offset": offset_l1.item()}


def _batch(data: Prepared, idx: np.ndarray, codes: np.ndarray, n_classes: int, config: TrainConfig) -> tuple:
    images, rows = [], []
    grid = data.pixels.shape[-1] // shapes_detector.STRIDE
    for k, code in zip(idx.tolist(), codes.tolist(), strict=True):
        pixels, boxes = _dihedral(data.pixels[k], data.boxes[k], code)
        images.append(pixels)
        rows.append(targets(boxes, data.labels[k], n_classes, grid, config))
    image = torch.stack(images).float().mul_(1 / 255).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
    return (image, *(torch.from_numpy(np.stack(col)) for col in zip(*rows, strict=True)))


def train(model: shapes_detector.ShapesDetector, data: Prepared, config: TrainConfig = TrainConfig()) -> None:
    """Train in place; leaves the model in eval mode."""
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(data.boxes)
    per_epoch = n // config.batch_size  # drop the ragged last batch: BatchNorm wants full batches
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * per_epoch,
                                                pct_start=0.15)
    model.to(memory_format=torch.channels_last).train()
    for epoch in range(config.epochs):
        order, codes = rng.permutation(n), rng.integers(0, 8, n)
        start, sums = time.monotonic(), {"focal": 0.0, "size": 0.0, "offset": 0.0}
        for b in range(per_epoch):
            sl = slice(b * config.batch_size, (b + 1) * config.batch_size)
            loss, parts = losses(model, _batch(data, order[sl], codes[sl], model.config.n_classes, config), config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums = {k: sums[k] + v / per_epoch for k, v in parts.items()}
        print(f"epoch {epoch + 1}/{config.epochs} " + " ".join(f"{k}={v:.4f}" for k, v in sums.items())
              + f" ({time.monotonic() - start:.0f} s)", flush=True)
    model.eval()


@torch.no_grad()
def detect(model: shapes_detector.ShapesDetector, data: Prepared, score_threshold: float = 0.01,
           max_detections: int = 100, batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (boxes in ORIGINAL pixels, scores, labels) after class-aware NMS at IoU 0.5."""
    model.eval()
    out = []
    for start in range(0, len(data.boxes), batch_size):
        image = data.pixels[start : start + batch_size].float().mul_(1 / 255)  # (B, 3, S, S)
        heat, size, offset = (t.numpy() for t in model(image))
        for k in range(len(image)):
            boxes, scores, labels = shapes_detector.decode(heat[k], size[k], offset[k], score_threshold, max_detections)
            keep = shapes_detector.class_aware_nms(boxes, scores, labels, 0.5)
            scale_x, scale_y, pad_x, pad_y, w, h = data.transform[start + k]  # as detect.centernet maps back
            boxes = (boxes[keep] - np.array([pad_x, pad_y] * 2)) / np.array([scale_x, scale_y] * 2)
            boxes = boxes.clip(0, np.array([w, h, w, h])).astype(np.float32)
            out.append((boxes, scores[keep], labels[keep]))
    return out


def coco_map(data: Prepared, detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """{map50, map50_95, ap50: {class: AP}} from pycocotools' COCOeval (bbox)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for k, (gt_boxes, gt_labels, (boxes, scores, labels)) in enumerate(
            zip(data.original_boxes, data.labels, detections, strict=True)):
        images.append({"id": k, "width": int(data.transform[k, 4]), "height": int(data.transform[k, 5])})
        for (x1, y1, x2, y2), c in zip(gt_boxes.tolist(), gt_labels.tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": c + 1, "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            results.append({"image_id": k, "category_id": c + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval print progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": name} for c, name in enumerate(CLASSES)]}
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][0, :, :, 0, 2]  # (recall points, classes) at IoU 0.5, all areas, 100 dets
    ap50 = {name: float(p[p > -1].mean()) if (p > -1).any() else None  # None: no such object in the set
            for name, p in zip(CLASSES, precision.T, strict=True)}
    return {"map50": float(ev.stats[1]), "map50_95": float(ev.stats[0]), "ap50": ap50}


def main(
    seed: Annotated[int, typer.Option(help="seed for init, shuffling, augmentation")] = 0,
    out: Annotated[Path, typer.Option(help="where to write the safetensors weights")] = shapes_detector.WEIGHTS,
    epochs: Annotated[int, typer.Option(help="passes over the training scenes")] = TrainConfig.epochs,
    scenes: Annotated[int, typer.Option(help="training scenes generated from TRAIN_SEED")] = TrainConfig.scenes,
    heldout: Annotated[int, typer.Option(help="held-out scenes generated from HELDOUT_SEED")] = 400,
    results: Annotated[Path, typer.Option(help="where to write the metrics JSON")] = RESULTS,
) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.monotonic()
    torch.manual_seed(seed)
    model = shapes_detector.ShapesDetector()
    size = model.config.input_size
    train_data = prepare(TRAIN_SEED, scenes, size)
    heldout_data = prepare(HELDOUT_SEED, heldout, size)
    print(f"generated {scenes} training + {heldout} held-out scenes ({time.monotonic() - start:.0f} s)", flush=True)
    train(model, train_data, TrainConfig(scenes=scenes, epochs=epochs, seed=seed))
    train_s = time.monotonic() - start
    metrics = coco_map(heldout_data, detect(model, heldout_data))
    shapes_detector.save(model.to(memory_format=torch.contiguous_format), out)
    report = {
        "command": "python -m models.train_shapes " + " ".join(sys.argv[1:]), "seed": seed,
        "train_scenes": scenes, "heldout_scenes": heldout, "epochs": epochs, "wall_s": round(train_s, 1),
        **metrics, "params": sum(p.numel() for p in model.parameters()), "input_size": size,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    typer.run(main)
