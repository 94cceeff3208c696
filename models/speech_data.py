"""Synthetic speech for the default speech recognizer: espeak-ng sentences, the voice split,
augmentation and padded feature batches. Nothing is downloaded; audio is cached outside git.

Voices are ``ACCENT+VARIANT`` (``espeak-ng -v en-us+m2``). The *unseen voices* never occur
in training or validation: every voice of the accent ``HELD_OUT_ACCENTS`` and every
variant in ``HELD_OUT_VARIANTS`` (in any accent)::

               training variants          held-out variants
    accents    train / val / test_seen    test_unseen
    held-out   test_unseen                test_unseen

Each split is a pure function of ``(split, n, seed, vocabulary)``: sentences from
``models.speech_text.make_sentence``, voice, speed (130-210 wpm), pitch (20-80) and
amplitude drawn from one ``numpy`` generator; audio resampled (soxr) to 16 kHz and cached
as int16 in ``CACHE_DIR``. Test sentences whose transcript occurs in training are redrawn.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.speech_text import load_vocab, make_sentence
from server.pipelines.audio_features import FEATURE_FLOOR, SAMPLE_RATE, log_mel

CACHE_DIR = Path.home() / ".cache" / "deepserve" / "speech"
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc", "en-gb-scotland")
VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt4", "Andy", "Annie", "adam", "Alex", "Alicia", "david", "edward", "john",
    "linda", "max", "paul", "steph", "robert", "caleb", "benjamin", "shelby", "travis", "victor",
    "grandma", "norbert", "michel", "iven",
)  # fmt: skip
HELD_OUT_ACCENTS = ("en-gb-scotland",)
HELD_OUT_VARIANTS = ("m3", "f3")
SPLIT_SEEDS = {"train": 1, "val": 2, "test_seen": 3, "test_unseen": 4}


def voice_name(accent: str, variant: str) -> str:
    return f"{accent}+{variant}" if variant else accent


def voices(unseen: bool) -> list[str]:
    """The training voices, or (``unseen=True``) the held-out ones."""
    out = []
    for accent in ACCENTS:
        for variant in VARIANTS:
            held = accent in HELD_OUT_ACCENTS or variant in HELD_OUT_VARIANTS
            if held == unseen:
                out.append(voice_name(accent, variant))
    return out


@dataclass(frozen=True)
class Utterance:
    text: str  # what espeak-ng speaks
    transcript: str  # normalized target
    voice: str
    speed_wpm: int
    pitch: int
    amplitude: int


def plan_split(split: str, n: int, words: list[str], exclude: frozenset[str] = frozenset()) -> list[Utterance]:
    """``n`` utterances of ``split`` (train / val use training voices, test_unseen the held-out)."""
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    pool = voices(unseen=split == "test_unseen")
    out: list[Utterance] = []
    while len(out) < n:
        text, transcript = make_sentence(rng, words)
        voice = pool[int(rng.integers(0, len(pool)))]
        speed, pitch, amp = int(rng.integers(130, 211)), int(rng.integers(20, 81)), int(rng.integers(60, 151))
        if transcript not in exclude:
            out.append(Utterance(text, transcript, voice, speed, pitch, amp))
    return out


def synthesize(u: Utterance) -> np.ndarray:
    """espeak-ng -> float32 mono 16 kHz in [-1, 1]."""
    import soundfile
    import soxr

    cmd = [
        "espeak-ng",
        "-v",
        u.voice,
        "-s",
        str(u.speed_wpm),
        "-p",
        str(u.pitch),
        "-a",
        str(u.amplitude),
        "--stdout",
        u.text,
    ]
    wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    x, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    if x.ndim == 2:
        x = x.mean(axis=1)
    return soxr.resample(x, rate, SAMPLE_RATE).astype(np.float32)


@dataclass
class AudioSet:
    """Utterances with their audio: int16 samples concatenated, ``offsets[i]:offsets[i+1]``."""

    utterances: list[Utterance]
    audio: np.ndarray  # (total,) int16
    offsets: np.ndarray  # (n + 1,) int64

    def samples(self, i: int) -> np.ndarray:
        return self.audio[self.offsets[i] : self.offsets[i + 1]].astype(np.float32) / 32767.0

    def __len__(self) -> int:
        return len(self.utterances)

    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def build_set(utterances: list[Utterance], workers: int = 2, cache_dir: Path = CACHE_DIR) -> AudioSet:
    """Synthesize (``workers`` espeak-ng processes at a time), cached by content hash."""
    key = hashlib.sha256(json.dumps([asdict(u) for u in utterances]).encode()).hexdigest()[:16]
    path = cache_dir / f"{key}.npz"
    if path.exists():
        data = np.load(path)
        return AudioSet(utterances, data["audio"], data["offsets"])
    with ThreadPoolExecutor(workers) as pool:  # the work is in the espeak-ng subprocesses
        clips = list(pool.map(synthesize, utterances, chunksize=64))
    pcm = [np.round(np.clip(c, -1, 1) * 32767).astype(np.int16) for c in clips]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in pcm])]).astype(np.int64)
    audio = np.concatenate(pcm)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, audio=audio, offsets=offsets)
    tmp.rename(path)
    return AudioSet(utterances, audio, offsets)


def load_splits(n_train: int, n_val: int, n_test: int, workers: int = 2) -> dict[str, AudioSet]:
    words = load_vocab()
    train = plan_split("train", n_train, words)
    seen = frozenset(u.transcript for u in train)
    plans = {
        "train": train,
        "val": plan_split("val", n_val, words, seen),
        "test_seen": plan_split("test_seen", n_test, words, seen),
        "test_unseen": plan_split("test_unseen", n_test, words, seen),
    }
    return {name: build_set(plan, workers) for name, plan in plans.items()}


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random leading/trailing silence, room-like reverb, gain and additive noise."""
    from scipy.signal import fftconvolve, lfilter

    lead, trail = int(rng.uniform(0, 0.5) * SAMPLE_RATE), int(rng.uniform(0, 0.8) * SAMPLE_RATE)
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    if rng.random() < 0.5:  # exponentially decaying noise impulse response, RT60 0.15-0.7 s
        rt60_s = rng.uniform(0.15, 0.7)
        t = np.arange(int(rt60_s * SAMPLE_RATE)) / SAMPLE_RATE
        ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60_s) * rng.uniform(0.05, 0.4)
        ir[0] = 1.0  # the direct sound
        x = fftconvolve(x, ir)[: len(x)].astype(np.float32)
    peak = float(np.abs(x).max()) or 1.0
    x = x * (10 ** (rng.uniform(-26, 0) / 20) * 0.9 / peak)
    if rng.random() < 0.8:
        snr_db = rng.uniform(5, 40)
        noise = rng.standard_normal(len(x)).astype(np.float32)
        if rng.random() < 0.5:  # red-ish noise: a one-pole low-pass of white noise
            noise = lfilter([1.0], [1.0, -rng.uniform(0.8, 0.99)], noise).astype(np.float32)
        signal_power = float(np.mean(x**2)) * (len(x) / max(1, len(x) - lead - trail))
        noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / max(float(np.mean(noise**2)), 1e-12))
        x = x + noise
    return np.clip(x, -1, 1).astype(np.float32)


def augment_features(f: np.ndarray, rng: np.random.Generator, warp_max: float, mask_max: int) -> np.ndarray:
    """Speaker-like variation in feature space: with probability 0.5 the mel axis is stretched
    or squeezed by up to ``warp_max`` (a vocal-tract-length-like warp, linear interpolation
    between bins), and with probability 0.5 one band of up to ``mask_max`` bins is set to the
    utterance's mean (SpecAugment's frequency mask)."""
    f = f.copy()
    n = f.shape[1]
    if warp_max > 0 and rng.random() < 0.5:
        pos = np.clip(np.arange(n) * (1 + rng.uniform(-warp_max, warp_max)), 0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = (pos - lo).astype(np.float32)
        f = f[:, lo] * (1 - w) + f[:, hi] * w
    if mask_max > 0 and rng.random() < 0.5:
        width = int(rng.integers(1, mask_max + 1))
        start = int(rng.integers(0, n - width + 1))
        f[:, start : start + width] = f.mean()
    return f.astype(np.float32)


def pad_features(feats: list[np.ndarray], extra_frames: int = 0) -> np.ndarray:
    """``(B, T_max + extra_frames, N_MELS)`` float32, padded with ``FEATURE_FLOOR``."""
    t_max = max(len(f) for f in feats) + extra_frames
    out = np.full((len(feats), t_max, feats[0].shape[1]), FEATURE_FLOOR, dtype=np.float32)
    for i, f in enumerate(feats):
        out[i, : len(f)] = f
    return out


def features(x: np.ndarray) -> np.ndarray:
    return log_mel(x)
