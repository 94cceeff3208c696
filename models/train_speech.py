"""Training recipe for the default speech recognizer (``models.speech_ctc``).

    python -m models.train_speech --seed 0 --minutes 50 --out models/weights/speech_ctc.safetensors

Synthesizes the splits (``models.speech_data``, cached in ``~/.cache/deepserve/speech``),
then trains on augmented audio (a fresh augmentation per sample and step: noise, reverb,
gain, silence, then a mel-axis warp and a frequency mask on the features) with CTC loss,
Adam, linear warm-up and cosine decay, gradient clipping; batches are groups of similar
length padded with ``FEATURE_FLOOR`` (to a multiple of ``PAD_MULTIPLE`` frames, so the
network always sees some padding). Validation greedy WER is logged every
``eval_every`` steps and the best weights are written to ``--out``.

The learning-rate schedule is step-based; ``--steps`` fixes it (deterministic for a seed on
CPU). Without it the step count is estimated from the speed of the first 100 steps to fit
``--minutes``, so the run is then reproducible only given that count (logged and saved).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F

from models import speech_ctc
from models.eval_speech import RESULTS, scores, set_features, transcribe
from models.speech_data import (
    HELD_OUT_ACCENTS,
    HELD_OUT_VARIANTS,
    AudioSet,
    augment,
    augment_features,
    load_splits,
    pad_features,
    voices,
)
from models.speech_text import N_WORDS
from server.pipelines.audio_features import log_mel

PAD_MULTIPLE = 48  # frames; a multiple of the model's stride


@dataclass(frozen=True)
class TrainConfig:
    n_train: int = 20000
    n_val: int = 400
    n_test: int = 500
    batch_size: int = 32
    lr: float = 1.5e-3
    warmup_steps: int = 300
    clip_norm: float = 1.0
    eval_every: int = 250
    seed: int = 0
    mel_warp: float = 0.12  # feature-space augmentation (speech_data.augment_features); 0 turns it off
    freq_mask_bins: int = 10


class Batches(torch.utils.data.Dataset):
    """Batch ``k`` of epoch ``e`` is a pure function of ``(seed, e, k)``, whichever worker builds it."""

    def __init__(self, audio: AudioSet, config: TrainConfig, epoch: int) -> None:
        self.audio, self.config, self.epoch = audio, config, epoch
        rng = np.random.default_rng([config.seed, epoch])
        lengths = np.diff(audio.offsets)
        order = rng.permutation(len(audio))
        chunk = config.batch_size * 50
        batches = []
        for s in range(0, len(order), chunk):  # similar lengths together, then shuffled
            part = order[s : s + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[i : i + config.batch_size] for i in range(0, len(part), config.batch_size)]
        self.batches = [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, self.epoch, k, 7])
        c = self.config
        feats = [
            augment_features(log_mel(augment(self.audio.samples(i), rng)), rng, c.mel_warp, c.freq_mask_bins)
            for i in self.batches[k]
        ]
        t_max = max(len(f) for f in feats)
        x = pad_features(feats, extra_frames=-t_max % PAD_MULTIPLE + int(rng.integers(0, 2)) * PAD_MULTIPLE)
        labels = [speech_ctc.encode(self.audio.utterances[i].transcript) for i in self.batches[k]]
        targets = torch.tensor([c for lab in labels for c in lab], dtype=torch.long)
        return torch.from_numpy(x), targets, torch.tensor([len(lab) for lab in labels])


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def validate(model: speech_ctc.SpeechCTC, val_feats: list[np.ndarray], val: AudioSet) -> dict[str, float]:
    hyps, _ = transcribe(model, val_feats)
    return scores([u.transcript for u in val.utterances], hyps)


def train(model, splits: dict[str, AudioSet], config: TrainConfig, minutes: float, steps: int | None, out: Path):
    """Train until ``steps`` (or the time budget); returns a summary. Best-validation weights go to ``out``."""
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    val_feats = set_features(splits["val"], augmented=True)
    start, step, epoch = time.monotonic(), 0, 0
    total = steps or 10**9
    best = {"wer": float("inf")}
    history = []
    while step < total:
        loader = torch.utils.data.DataLoader(
            Batches(splits["train"], config, epoch), batch_size=None, shuffle=False, num_workers=1, prefetch_factor=6
        )
        for x, targets, target_lengths in loader:
            model.train()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, config)
            log_probs = model(x)  # (B, T', n_chars)
            input_lengths = torch.full((x.shape[0],), log_probs.shape[1], dtype=torch.long)
            loss = F.ctc_loss(log_probs.transpose(0, 1), targets, input_lengths, target_lengths, zero_infinity=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            opt.step()
            step += 1
            elapsed = time.monotonic() - start
            if steps is None and step == 100:  # fit the schedule to the time budget
                total = max(config.warmup_steps + 100, int(minutes * 60 / (elapsed / 100) * 0.97))
                print(f"step time {elapsed / 100:.2f}s -> total steps {total}", flush=True)
            if step % 50 == 0:
                print(
                    f"step {step} epoch {epoch} loss {loss.item():.3f} lr {lr_at(step, total, config):.2e} "
                    f"t {elapsed:.0f}s",
                    flush=True,
                )
            timeout = elapsed > minutes * 60
            if step % config.eval_every == 0 or step >= total or timeout:
                val = validate(model, val_feats, splits["val"])
                history.append({"step": step, "seconds": round(elapsed), "loss": round(loss.item(), 4), **val})
                print(f"VAL step {step} {val}", flush=True)
                if val["wer"] < best["wer"]:
                    best = {"step": step, **val}
                    speech_ctc.save(model, out)
            if step >= total or timeout:
                total = step
                break
        epoch += 1
    return {
        "steps": step,
        "epochs_started": epoch,
        "train_seconds": round(time.monotonic() - start, 1),
        "best_val": best,
        "val_history": history,
    }


def main(
    seed: Annotated[int, "seed for init, shuffling, augmentation"] = 0,
    out: Annotated[Path, "where to write the best safetensors weights"] = speech_ctc.WEIGHTS,
    minutes: Annotated[float, "wall-time budget of the training loop (synthesis not included)"] = 50.0,
    steps: Annotated[int, "fixed step count (overrides the time-fitted schedule)"] = 0,
    n_train: Annotated[int, "training utterances"] = TrainConfig.n_train,
    results: Annotated[Path, "results JSON: the training section"] = RESULTS,
    init: Annotated[Path | None, "continue from these weights (the previous run's record is kept)"] = None,
) -> None:
    torch.set_num_threads(1)  # the other core builds batches; 2 threads stall badly when a core is shared
    torch.manual_seed(seed)
    config = TrainConfig(n_train=n_train, seed=seed)
    t0 = time.monotonic()
    splits = load_splits(config.n_train, config.n_val, config.n_test)
    synth_s = time.monotonic() - t0
    sizes = {k: {"utterances": len(v), "hours": round(v.seconds() / 3600, 2)} for k, v in splits.items()}
    print(f"data ready in {synth_s:.0f}s: {sizes}", flush=True)
    model = speech_ctc.load(init) if init is not None else speech_ctc.SpeechCTC()
    previous = json.loads(results.read_text()).get("training") if init is not None and results.exists() else None
    summary = train(model, splits, config, minutes, steps or None, out)
    n_params = sum(p.numel() for p in model.parameters())
    record = {
        "command": (f"python -m models.train_speech --seed {seed} --minutes {minutes:g} --out {out}"
                    + (f" --init {init}" if init is not None else "")),
        "continued_from": previous,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "seed": seed,
        "torch": torch.__version__,
        "params": n_params,
        "model_config": asdict(model.config),
        "train_config": asdict(config),
        "minutes_budget": minutes,
        "synthesis_seconds": round(synth_s, 1),
        "data": sizes,
        "voices": {
            "train": voices(unseen=False),
            "unseen": voices(unseen=True),
            "held_out_accents": list(HELD_OUT_ACCENTS),
            "held_out_variants": list(HELD_OUT_VARIANTS),
        },
        "vocabulary": {
            "words": N_WORDS,
            "file": "models/data/speech_vocab.txt",
            "source": "CPython 3.11.7 stdlib comments and docstrings (tokenize), word frequency, "
            "filtered by Debian wamerican /usr/share/dict/american-english; see models/speech_text.py",
        },
        **summary,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"training": record}, indent=2) + "\n")
    print(f"params={n_params} best_val={summary['best_val']} -> {out}", flush=True)


if __name__ == "__main__":
    import typer

    typer.run(main)
