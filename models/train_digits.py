"""Training recipe for the default digits classifier.

    python -m models.train_digits --seed 0 --out models/weights/digits_cnn.safetensors

The same ``train`` function fine-tunes a pruned network (``export.prune``) with fewer
epochs and a lower learning rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer

from models import digits_cnn
from models.digits_data import DigitsSplit, load_split


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift_px: int = 1  # random translation, the only augmentation
    seed: int = 0


FINETUNE = TrainConfig(epochs=8, lr=1e-3)


def _shift(x: torch.Tensor, max_shift_px: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift_px`` pixels (zero padding)."""
    if max_shift_px == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift_px,) * 4)  # (N, 1, h + 2s, w + 2s)
    offs = torch.randint(0, 2 * max_shift_px + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs.tolist())])


def train(model: torch.nn.Module, split: DigitsSplit, config: TrainConfig = TrainConfig()) -> torch.nn.Module:
    """Train in place on ``split``'s training part; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout masks
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * ((len(x) + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), config.batch_size):
            idx = order[start : start + config.batch_size]
            xb = _shift(x[idx], config.max_shift_px, gen)  # (B, 1, 8, 8)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def main(
    seed: Annotated[int, typer.Option(help="seed for init, shuffling, augmentation")] = 0,
    out: Annotated[Path, typer.Option(help="where to write the safetensors weights")] = digits_cnn.WEIGHTS,
    epochs: Annotated[int, typer.Option(help="passes over the training split")] = TrainConfig.epochs,
) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    split = load_split()
    torch.manual_seed(seed)
    model = digits_cnn.DigitsCNN()
    start = time.monotonic()
    train(model, split, TrainConfig(epochs=epochs, seed=seed))
    acc = accuracy(model, split.x_test, split.y_test)
    digits_cnn.save(model, out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params={n_params} train_s={time.monotonic() - start:.1f} held_out_accuracy={acc:.4f} "
          f"(n={len(split.y_test)}) -> {out}")


if __name__ == "__main__":
    typer.run(main)
