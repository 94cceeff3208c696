"""A small class-conditional U-Net that predicts DDPM noise for 16x16 digits.

``forward(x (N, 1, 16, 16) in [-1, 1], t (N,) int64, y (N,) int64) -> eps (N, 1, 16, 16)``.
16x16 -> 8x8 -> 4x4 and back with skip connections; GroupNorm + SiLU residual blocks; a
sinusoidal timestep embedding plus a learned class embedding (11 entries: digits 0..9 and
``NULL_CLASS`` = 10, the unconditional class of classifier-free guidance) added into every
block. The config carries the noise schedule, so it travels in the safetensors metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models import checkpoint
from server.pipelines.ddim import NoiseSchedule

WEIGHTS = Path(__file__).parent / "weights" / "digits_unet.safetensors"


@dataclass(frozen=True)
class DigitUNetConfig:
    channels: tuple[int, int, int] = (32, 64, 96)  # at 16x16, 8x8, 4x4
    emb_dim: int = 128
    groups: int = 8
    n_classes: int = 11  # 10 digits + NULL_CLASS
    train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.train_steps, self.beta_start, self.beta_end)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps ``(N,)`` -> ``(N, dim)``."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / half))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class DigitUNet(nn.Module):
    def __init__(self, config: DigitUNetConfig = DigitUNetConfig()) -> None:
        super().__init__()
        self.config = config
        c0, c1, c2 = config.channels
        e, g = config.emb_dim, config.groups
        self.time_mlp = nn.Sequential(nn.Linear(c0, e), nn.SiLU(), nn.Linear(e, e))
        self.class_embedding = nn.Embedding(config.n_classes, e)
        self.conv_in = nn.Conv2d(1, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, e, g)  # 16x16
        self.pool0 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)  # -> 8x8
        self.down1 = ResBlock(c1, c1, e, g)
        self.pool1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)  # -> 4x4
        self.mid0 = ResBlock(c2, c2, e, g)
        self.mid1 = ResBlock(c2, c2, e, g)
        self.unpool1 = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)  # -> 8x8
        self.up1 = ResBlock(2 * c1, c1, e, g)
        self.unpool0 = nn.ConvTranspose2d(c1, c0, 4, stride=2, padding=1)  # -> 16x16
        self.up0 = ResBlock(2 * c0, c0, e, g)
        self.norm_out = nn.GroupNorm(g, c0)
        self.conv_out = nn.Conv2d(c0, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0])) + self.class_embedding(y)  # (N, e)
        emb = F.silu(emb)
        h0 = self.down0(self.conv_in(x), emb)  # (N, c0, 16, 16)
        h1 = self.down1(self.pool0(h0), emb)  # (N, c1, 8, 8)
        h = self.mid1(self.mid0(self.pool1(h1), emb), emb)  # (N, c2, 4, 4)
        h = self.up1(torch.cat([self.unpool1(h), h1], dim=1), emb)  # (N, c1, 8, 8)
        h = self.up0(torch.cat([self.unpool0(h), h0], dim=1), emb)  # (N, c0, 16, 16)
        return self.conv_out(F.silu(self.norm_out(h)))

    def schedule(self) -> NoiseSchedule:
        return self.config.schedule()


def numpy_eps(model: nn.Module, batch_size: int = 1024):
    """``model`` as the ``net(x, t, y) -> eps`` callable ``server.pipelines.ddim.sample`` takes."""

    @torch.inference_mode()
    def net(x, t, y):
        outs = [model(torch.from_numpy(x[s : s + batch_size]), torch.from_numpy(t[s : s + batch_size]),
                      torch.from_numpy(y[s : s + batch_size])) for s in range(0, len(x), batch_size)]
        return torch.cat(outs).numpy()

    return net


def config_from_metadata(meta: dict[str, str] | None) -> DigitUNetConfig:
    return checkpoint.config_from_metadata(DigitUNetConfig, meta)


def save(model: DigitUNet, path: Path) -> None:
    checkpoint.save(model, path)


def load(path: Path = WEIGHTS, device: str = "cpu") -> DigitUNet:
    return checkpoint.load_into(DigitUNet(config_from_metadata(checkpoint.metadata(path))), path, device)
