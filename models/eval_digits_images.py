"""Accuracy of the digits CNN behind ``digits_classify``: held-out digits drawn as images.

    python -m models.eval_digits_images --seed 0 --out models/results/digits_classify.json

Each of the 450 held-out 8x8 digits is drawn as a bigger image (3-13x scale, a random
border, random contrast, every other one dark ink on a light page, every third a JPEG),
then goes through the same steps as the served ensemble: ``image.digit`` (the server's
own function) and the shipped network (torch; the served ONNX export is parity-checked
against it). The integration tests send such images through ``/v1/classify``.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer


def draw(digit: np.ndarray, rng: np.random.Generator, dark_on_light: bool, jpeg: bool) -> bytes:
    """One (8, 8) digit in [0, 1] as encoded image bytes."""
    from PIL import Image

    scale = int(rng.integers(3, 14))
    big = np.pad(np.kron(digit, np.ones((scale, scale))), int(rng.integers(0, 4 * scale)))
    low, high = rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.0)
    page = low + big * (high - low)
    page = 1.0 - page if dark_on_light else page
    buffer = io.BytesIO()
    Image.fromarray(np.round(page * 255).astype(np.uint8), "L").save(buffer, format="JPEG" if jpeg else "PNG")
    return buffer.getvalue()


def evaluate(seed: int) -> dict:
    from models import digits_cnn
    from models.digits_data import load_split
    from server.pipelines.digits import digit_tensor

    split = load_split()
    rng = np.random.default_rng(seed)
    images = [draw(x[0], rng, i % 2 == 1, i % 3 == 0) for i, x in enumerate(split.x_test)]
    pixels = np.stack([digit_tensor(data) for data in images])
    network = digits_cnn.load().eval()
    with torch.inference_mode():
        predicted = network(torch.from_numpy(pixels)).argmax(dim=1).numpy()
        plain = network(torch.from_numpy(split.x_test)).argmax(dim=1).numpy()  # the 8x8 tensors themselves
    correct, plain_correct = int((predicted == split.y_test).sum()), int((plain == split.y_test).sum())
    return {"images": len(images), "correct": correct, "accuracy": correct / len(images),
            "tensor_correct": plain_correct, "tensor_accuracy": plain_correct / len(images)}


def main(
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option()] = Path("models/results/digits_classify.json"),
) -> None:
    started = time.perf_counter()
    result = evaluate(seed)
    result.update(command=f"python -m models.eval_digits_images --seed {seed} --out {out}", seed=seed,
                  wall_s=round(time.perf_counter() - started, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    typer.echo(f"held-out digits drawn as images: accuracy {result['accuracy']:.4f} ({result['correct']}/{result['images']})")


if __name__ == "__main__":
    typer.run(main)
