"""Log-mel features for speech models, numpy only (the server imports this without torch).

The training recipe (``models.train_speech``) and the serving pipeline call the same
:func:`log_mel`, so a model sees at serving time exactly the features it was trained on.

    samples (n,) float32 mono, 16 kHz, in [-1, 1]
      -> frames of WINDOW_SAMPLES (25 ms) every HOP_SAMPLES (10 ms), no padding:
         n_frames = 1 + (n - WINDOW_SAMPLES) // HOP_SAMPLES   (0 if n < WINDOW_SAMPLES)
      -> Hann window, |rfft(N_FFT)|^2
      -> N_MELS triangular filters (HTK mel scale, 0..8 kHz)
      -> log(mel + LOG_OFFSET)                     (frames, N_MELS) float32

A frame of digital silence gives ``FEATURE_FLOOR`` in every band; batches of different
lengths are padded with that value (speech models here are trained on such padding).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
N_FFT = 512
N_MELS = 80
LOG_OFFSET = 1e-6
FEATURE_FLOOR = float(np.log(np.float32(LOG_OFFSET)))  # log-mel of an all-zero frame


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """``(N_FFT // 2 + 1, N_MELS)`` float32 triangular filters, HTK mel scale, 0 Hz to Nyquist."""
    mel_points = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2)
    hz_points = _mel_to_hz(mel_points)  # (N_MELS + 2,) band edges and centres
    bin_hz = np.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT  # (n_bins,)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]  # (N_MELS, 1)
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    bank = np.clip(np.minimum(rising, falling), 0.0, None)  # (N_MELS, n_bins)
    return np.ascontiguousarray(bank.T, dtype=np.float32)


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return np.hanning(WINDOW_SAMPLES + 1)[:-1].astype(np.float32)  # periodic Hann


def n_frames(n_samples: int) -> int:
    """Number of feature frames :func:`log_mel` returns for ``n_samples`` samples."""
    return 0 if n_samples < WINDOW_SAMPLES else 1 + (n_samples - WINDOW_SAMPLES) // HOP_SAMPLES


def log_mel(samples: np.ndarray) -> np.ndarray:
    """float32 mono 16 kHz samples in [-1, 1] -> ``(frames, N_MELS)`` float32 log-mel energies."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel takes mono samples of shape (n,), got {x.shape}; average the channels first")
    frames = n_frames(len(x))
    if frames == 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(x, WINDOW_SAMPLES)[::HOP_SAMPLES][:frames]  # (frames, 400)
    spectrum = np.fft.rfft(view * _window(), n=N_FFT, axis=1)  # (frames, 257)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return np.log(power @ mel_filterbank() + np.float32(LOG_OFFSET)).astype(np.float32)  # (frames, N_MELS)
