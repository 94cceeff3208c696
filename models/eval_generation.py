"""Quality of the generative digits models, judged by the shipped digits CNN.

    python -m models.eval_generation --seed 0 --out models/results/digits_generation.json

For the VAE (z ~ N(0, I)) and the diffusion U-Net (``server.pipelines.ddim.sample``, the
server's own DDIM sampler, at several step counts and guidance scales), 50 images per digit
(500, seeded):

- conditional accuracy: the share the judge reads as the requested digit;
- Fréchet distance between the judge's penultimate features (512-d) of the generated
  images and of the 450 held-out real digits (upsampled to 16x16, then both area-averaged
  to 8x8 by the same path). References: uniform-noise images (the ceiling to beat) and
  real training digits (real vs real: all 1,347, and 500 at random, the generated sets' size).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from models import digit_unet, digit_vae
from models.digits_data import load_split
from models.digits_gen import IMAGE_SIZE, NULL_CLASS, frechet_distance, judge_features, sample_labels, upsample
from server.pipelines import ddim

OUT = Path(__file__).parent / "results" / "digits_generation.json"
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 2.0
PER_CLASS = 50
STEP_COUNTS = (10, 25, 50)
GUIDANCE_SCALES = (1.0, 2.0, 3.0)


@torch.inference_mode()
def vae_samples(model: digit_vae.DigitVAE, labels: np.ndarray, seed: int) -> np.ndarray:
    """Decode z ~ N(0, I) (seeded) for each label: ``(N, 1, 16, 16)`` in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(labels), model.config.latent_dim, generator=gen)
    return model.eval().decode(z, torch.from_numpy(labels.astype(np.int64))).numpy()


def diffusion_samples(model: digit_unet.DigitUNet, labels: np.ndarray, steps: int, guidance_scale: float,
                      seed: int) -> np.ndarray:
    """DDIM samples via the server's sampler; image i starts from the noise of seed ``seed + i``."""
    seeds = np.arange(seed, seed + len(labels), dtype=np.int64)
    return ddim.sample(digit_unet.numpy_eps(model.eval()), labels.astype(np.int64), seeds, steps, guidance_scale,
                       model.schedule(), NULL_CLASS, (1, IMAGE_SIZE, IMAGE_SIZE))


def score(images: np.ndarray, labels: np.ndarray | None, real_features: np.ndarray) -> dict[str, float]:
    preds, feats = judge_features(images)
    out = {"frechet_distance": round(frechet_distance(feats, real_features), 3)}
    if labels is not None:
        out = {"conditional_accuracy": round(float((preds == labels).mean()), 4), **out}
    return out


def main(
    seed: Annotated[int, typer.Option(help="seed for z and the DDIM starting noise")] = 0,
    out: Annotated[Path, typer.Option(help="where to write the results JSON")] = OUT,
    vae_weights: Annotated[Path, typer.Option(help="VAE safetensors")] = digit_vae.WEIGHTS,
    unet_weights: Annotated[Path, typer.Option(help="U-Net safetensors")] = digit_unet.WEIGHTS,
) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    split = load_split()
    _, real = judge_features(upsample(split.x_test))
    held_preds, _ = judge_features(upsample(split.x_test))
    labels = sample_labels(PER_CLASS)
    results: dict[str, dict] = {}

    _, train_feats = judge_features(upsample(split.x_train))
    results["reference_train_vs_held_out"] = {"frechet_distance": round(frechet_distance(train_feats, real), 3),
                                              "n": len(split.x_train)}
    subset = np.random.default_rng(seed).choice(len(train_feats), len(labels), replace=False)
    results["reference_train_500_vs_held_out"] = {
        "frechet_distance": round(frechet_distance(train_feats[subset], real), 3), "n": len(labels)}
    noise = np.random.default_rng(seed).uniform(0.0, 1.0, (len(labels), 1, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    results["baseline_uniform_noise"] = score(noise, labels, real)

    vae = digit_vae.load(vae_weights)
    results["vae"] = score(vae_samples(vae, labels, seed), labels, real)
    print("vae", results["vae"], flush=True)

    unet = digit_unet.load(unet_weights)
    runs = sorted({(s, DEFAULT_GUIDANCE) for s in STEP_COUNTS} | {(DEFAULT_STEPS, g) for g in GUIDANCE_SCALES})
    diffusion = []
    for steps, guidance in runs:
        start = time.monotonic()
        images = diffusion_samples(unet, labels, steps, guidance, seed)
        row = {"steps": steps, "guidance_scale": guidance, **score(images, labels, real),
               "sample_seconds": round(time.monotonic() - start, 1)}
        print("diffusion", row, flush=True)
        diffusion.append(row)
    results["diffusion_ddim"] = diffusion

    report = {
        "command": " ".join(["python -m models.eval_generation", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed, "torch": torch.__version__,
        "samples": {"per_class": PER_CLASS, "total": len(labels), "vae_z": f"N(0, I), torch seed {seed}",
                    "ddim_noise_seeds": f"{seed}..{seed + len(labels) - 1}"},
        "defaults": {"steps": DEFAULT_STEPS, "guidance_scale": DEFAULT_GUIDANCE},
        "judge": {"model": "models/weights/digits_cnn.safetensors", "input": "16x16 area-averaged to 8x8",
                  "features": "flattened output of .features, 512-d",
                  "held_out_accuracy_via_16x16": round(float((held_preds == split.y_test).mean()), 4)},
        "real_set": {"n": len(split.x_test), "what": "held-out digits, upsampled x2 bilinear"},
        "frechet_note": "512-d features with 450-500 images per set: both covariances are rank-deficient "
                        "(D > N); the distance is still defined (sqrtm of a singular product, real part kept, "
                        "eps=1e-6 on the diagonals only if that root is non-finite). Compare only figures with "
                        "the same set sizes: reference_train_500_vs_held_out (500 random training digits, the size of "
                        "each generated set) is the real-vs-real floor for the generated figures.",
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
