"""Training recipe for the class-conditional DDPM U-Net (``models.digit_unet``).

    python -m models.train_diffusion --seed 0 --out models/weights/digits_unet.safetensors

Training split only (``models.digits_data``), upsampled to 16x16, scaled to [-1, 1],
±1 px random shifts. DDPM epsilon prediction: uniform t in [0, train_steps), MSE on the
noise; the label is replaced by ``NULL_CLASS`` with probability 0.1 (classifier-free
guidance). AdamW, linear warm-up then cosine decay; the shipped weights are an
exponential moving average of the trained ones. Held-out: the epsilon MSE on the 450
held-out digits (seeded t and noise), and the conditional accuracy of 50 DDIM samples per
digit (``server.pipelines.ddim.sample``, the server's own sampler) at the default steps and
guidance scale. The full evaluation is ``models.eval_generation``.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer

from models import digit_unet
from models.digits_data import load_split
from models.digits_gen import NULL_CLASS, shift, upsample

RESULTS = Path(__file__).parent / "results" / "digits_diffusion.json"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    max_shift_px: int = 1
    seed: int = 0


def alphas_cumprod(model: digit_unet.DigitUNet) -> torch.Tensor:
    return torch.from_numpy(model.schedule().alphas_cumprod()).float()


def noised(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    a = abar[t][:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def train(model: digit_unet.DigitUNet, x_train: np.ndarray, y_train: np.ndarray, config: TrainConfig,
          log_every: int = 500) -> tuple[digit_unet.DigitUNet, float]:
    """Train ``model`` in place; returns (the EMA copy in eval mode, mean loss of the last 200 steps)."""
    gen = torch.Generator().manual_seed(config.seed)
    x_all, y_all = torch.from_numpy(x_train), torch.from_numpy(y_train)
    abar = alphas_cumprod(model)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    order, pos, recent = torch.randperm(len(x_all), generator=gen), 0, []
    for step in range(config.steps):
        if pos + config.batch_size > len(order):
            order, pos = torch.randperm(len(x_all), generator=gen), 0
        idx = order[pos : pos + config.batch_size]
        pos += config.batch_size
        x0 = shift(x_all[idx], config.max_shift_px, gen) * 2.0 - 1.0  # (B, 1, 16, 16) in [-1, 1]
        y = torch.where(torch.rand(len(idx), generator=gen) < config.label_dropout, NULL_CLASS, y_all[idx])
        t = torch.randint(0, len(abar), (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = F.mse_loss(model(noised(x0, t, noise, abar), t, y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        recent = (recent + [loss.item()])[-200:]
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{config.steps} loss(last 200)={np.mean(recent):.4f}", flush=True)
    model.eval()
    return ema, float(np.mean(recent))


@torch.no_grad()
def held_out_loss(model: digit_unet.DigitUNet, x: np.ndarray, y: np.ndarray, seed: int = 0, repeats: int = 4) -> float:
    """Epsilon MSE on held-out images at seeded uniform t and noise (conditional labels)."""
    gen = torch.Generator().manual_seed(seed)
    abar = alphas_cumprod(model)
    x0 = torch.from_numpy(x) * 2.0 - 1.0
    labels = torch.from_numpy(y)
    losses = []
    for _ in range(repeats):
        t = torch.randint(0, len(abar), (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        losses.append(float(F.mse_loss(model(noised(x0, t, noise, abar), t, labels), noise)))
    return float(np.mean(losses))


def main(
    seed: Annotated[int, typer.Option(help="seed for init, shuffling, augmentation, noise")] = 0,
    out: Annotated[Path, typer.Option(help="where to write the safetensors (EMA) weights")] = digit_unet.WEIGHTS,
    results: Annotated[Path, typer.Option(help="where to write the metrics JSON")] = RESULTS,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = TrainConfig.steps,
) -> None:
    from models.digits_gen import conditional_accuracy, sample_labels
    from models.eval_generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, diffusion_samples

    torch.set_num_threads(min(2, torch.get_num_threads()))
    split = load_split()
    config = TrainConfig(steps=steps, seed=seed)
    torch.manual_seed(seed)
    model = digit_unet.DigitUNet()
    start = time.monotonic()
    ema, train_loss = train(model, upsample(split.x_train), split.y_train, config)
    seconds = time.monotonic() - start
    digit_unet.save(ema, out)
    x_test = upsample(split.x_test)
    labels = sample_labels(50)
    metrics = {
        "eps_mse_ema": held_out_loss(ema, x_test, split.y_test),
        "eps_mse_raw": held_out_loss(model, x_test, split.y_test),
        "conditional_accuracy": conditional_accuracy(
            diffusion_samples(ema, labels, DEFAULT_STEPS, DEFAULT_GUIDANCE, seed=0), labels),
    }
    n_params = sum(p.numel() for p in ema.parameters())
    report = {
        "command": " ".join(["python -m models.train_diffusion", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed, "torch": torch.__version__, "train_seconds": round(seconds, 1), "params": n_params,
        "model_config": asdict(ema.config), "train_config": asdict(config), "weights": str(out),
        "train_loss_last_200_steps": round(train_loss, 4),
        "held_out": {"n": len(split.y_test), **{k: round(v, 4) for k, v in metrics.items()},
                     "sampler": {"steps": DEFAULT_STEPS, "guidance_scale": DEFAULT_GUIDANCE}},
        "notes": "eps_mse: epsilon MSE on the 450 held-out digits (16x16, [-1, 1]) at seeded uniform t, 4 draws, "
                 "for the shipped EMA weights and the raw last weights; conditional_accuracy: 50 DDIM samples "
                 "per digit (seeds 0..499, server.pipelines.ddim.sample) read by the digits CNN judge",
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"params={n_params} train_s={seconds:.1f} held_out_eps_mse={metrics['eps_mse_ema']:.4f} "
          f"conditional_accuracy={metrics['conditional_accuracy']:.4f} -> {out}, {results}")


if __name__ == "__main__":
    typer.run(main)
