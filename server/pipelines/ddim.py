"""DDIM sampling arithmetic (numpy only): the noise schedule, the timesteps a request
visits, one deterministic (eta = 0) update and classifier-free guidance.

Shared by the server's step-level sampler (:mod:`server.scheduling.diffusion`) and the
training recipe's evaluation (``models.train_diffusion``), so that what is measured is
what is served. Every function works on a batch whose rows may sit at different steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class NoiseSchedule:
    """DDPM's forward process: ``train_steps`` betas, linear from ``beta_start`` to ``beta_end``."""

    train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if self.train_steps < 1 or not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"bad noise schedule {self}")

    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t for t = 0 .. train_steps - 1 (float64)."""
        betas = np.linspace(self.beta_start, self.beta_end, self.train_steps, dtype=np.float64)
        return np.cumprod(1.0 - betas)

    def timesteps(self, steps: int) -> np.ndarray:
        """The ``steps`` training timesteps DDIM visits, from the noisiest down to 0 (int64)."""
        if not 1 <= steps <= self.train_steps:
            raise ValueError(f"steps must be between 1 and {self.train_steps}, not {steps}")
        return np.linspace(self.train_steps - 1, 0, steps).round().astype(np.int64)


def initial_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """x_T for one image: a pure function of its seed, so batching never changes it."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def guide(eps_cond: np.ndarray, eps_uncond: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Classifier-free guidance: ε_u + s · (ε_c − ε_u), one scale per row."""
    s = scale.reshape((-1,) + (1,) * (eps_cond.ndim - 1)).astype(np.float32)
    return eps_uncond + s * (eps_cond - eps_uncond)


def ddim_step(x: np.ndarray, eps: np.ndarray, alpha: np.ndarray, alpha_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One eta = 0 DDIM update for a batch: rows at ᾱ = ``alpha`` move to ``alpha_prev``
    (1.0 for the last step). Returns (x_prev, x0), x0 the clipped clean-image estimate."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    a = alpha.reshape(shape).astype(np.float32)
    a_prev = alpha_prev.reshape(shape).astype(np.float32)
    x0 = np.clip((x - np.sqrt(1 - a) * eps) / np.sqrt(a), -1.0, 1.0)
    eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)  # the noise consistent with the clipped x0
    return np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps, x0


def to_unit(x: np.ndarray) -> np.ndarray:
    """Model space [-1, 1] -> pixel intensities [0, 1] (float32)."""
    return np.clip((x + 1.0) * 0.5, 0.0, 1.0).astype(np.float32)


def sample(net, labels: np.ndarray, seeds: np.ndarray, steps: int, guidance_scale: float,
           schedule: NoiseSchedule, null_class: int, shape: tuple[int, ...]) -> np.ndarray:
    """Sample a batch in lock step (all rows at the same step): the reference loop the
    recipe evaluates with. ``net(x, t, y) -> eps`` on numpy arrays. Returns [0, 1] images."""
    alphas = schedule.alphas_cumprod()
    ts = schedule.timesteps(steps)
    x = np.stack([initial_noise(int(s), shape) for s in seeds])
    n = len(labels)
    scale = np.full(n, guidance_scale, np.float32)
    for i, t in enumerate(ts):
        t_batch = np.full(n, t, np.int64)
        if guidance_scale == 1.0:
            eps = net(x, t_batch, labels.astype(np.int64))
        else:
            both = net(np.concatenate([x, x]), np.concatenate([t_batch, t_batch]),
                       np.concatenate([labels.astype(np.int64), np.full(n, null_class, np.int64)]))
            eps = guide(both[:n], both[n:], scale)
        prev = alphas[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x, x0 = ddim_step(x, eps, np.full(n, alphas[t]), np.full(n, prev))
    return to_unit(x0)
