"""A class-conditional VAE for 16x16 digits (``models.digits_gen``).

The encoder q(z | x) sees the image only, so it serves as an embedding model
(:class:`VAEEncoder`: image -> mu); the decoder p(x | z, y) is conditioned on the digit
(:class:`VAEDecoder`: (z, label) -> image in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models import checkpoint

WEIGHTS = Path(__file__).parent / "weights" / "digits_vae.safetensors"


@dataclass(frozen=True)
class DigitVAEConfig:
    latent_dim: int = 16
    channels: tuple[int, int] = (32, 64)
    hidden: int = 256
    n_classes: int = 10
    label_dim: int = 16


class DigitVAE(nn.Module):
    def __init__(self, config: DigitVAEConfig = DigitVAEConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.SiLU(),  # (N, c1, 16, 16)
            nn.Conv2d(c1, c1, 4, stride=2, padding=1), nn.SiLU(),  # (N, c1, 8, 8)
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.SiLU(),  # (N, c2, 4, 4)
            nn.Flatten(), nn.Linear(c2 * 16, config.hidden), nn.SiLU(),
        )
        self.to_stats = nn.Linear(config.hidden, 2 * config.latent_dim)  # (mu, logvar)
        self.label_embedding = nn.Embedding(config.n_classes, config.label_dim)
        self.decoder_in = nn.Sequential(
            nn.Linear(config.latent_dim + config.label_dim, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, c2 * 16), nn.SiLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.SiLU(),  # (N, c1, 8, 8)
            nn.ConvTranspose2d(c1, c1, 4, stride=2, padding=1), nn.SiLU(),  # (N, c1, 16, 16)
            nn.Conv2d(c1, 1, 3, padding=1),  # logits (N, 1, 16, 16)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 1, 16, 16)`` in [0, 1] -> (mu, logvar), each ``(N, latent_dim)``."""
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.decoder_in(torch.cat([z, self.label_embedding(y)], dim=1))
        return self.decoder(h.reshape(-1, self.config.channels[1], 4, 4))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)``, labels ``(N,)`` int64 -> images ``(N, 1, 16, 16)`` in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass: (reconstruction logits, mu, logvar)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode_logits(z, y), mu, logvar


class VAEEncoder(nn.Module):
    """Export wrapper: image ``(N, 1, 16, 16)`` float32 in [0, 1] -> embedding mu ``(N, latent_dim)``."""

    def __init__(self, vae: DigitVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image)[0]


class VAEDecoder(nn.Module):
    """Export wrapper: z ``(N, latent_dim)`` float32, label ``(N,)`` int64 -> image ``(N, 1, 16, 16)`` in [0, 1]."""

    def __init__(self, vae: DigitVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, label)


def config_from_metadata(meta: dict[str, str] | None) -> DigitVAEConfig:
    return checkpoint.config_from_metadata(DigitVAEConfig, meta)


def save(model: DigitVAE, path: Path) -> None:
    checkpoint.save(model, path)


def load(path: Path = WEIGHTS, device: str = "cpu") -> DigitVAE:
    return checkpoint.load_into(DigitVAE(config_from_metadata(checkpoint.metadata(path))), path, device)
