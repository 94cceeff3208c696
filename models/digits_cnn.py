"""A small CNN for scikit-learn's bundled 8x8 handwritten digits (10 classes).

Input: float32 ``(N, 1, 8, 8)``, pixel values scaled to [0, 1] (sklearn's 0..16 / 16).
Output: float32 logits ``(N, 10)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from models import checkpoint

WEIGHTS = Path(__file__).parent / "weights" / "digits_cnn.safetensors"
LABELS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DigitsCNNConfig:
    channels: tuple[int, int, int] = (32, 64, 128)
    n_classes: int = 10
    dropout: float = 0.1


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsCNN(nn.Module):
    def __init__(self, config: DigitsCNNConfig = DigitsCNNConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.features = nn.Sequential(
            _conv_bn_relu(1, c1),  # (N, c1, 8, 8)
            _conv_bn_relu(c1, c2),  # (N, c2, 8, 8)
            nn.MaxPool2d(2),  # (N, c2, 4, 4)
            _conv_bn_relu(c2, c3),  # (N, c3, 4, 4)
            nn.MaxPool2d(2),  # (N, c3, 2, 2)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c3 * 4, config.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, c3, 2, 2)
        x = torch.flatten(x, 1)  # (N, c3 * 4)
        return self.head(self.dropout(x))  # (N, n_classes)

    def after_pruning(self) -> None:
        """Structured pruning removed channels: the config (saved as metadata) takes the new widths."""
        convs = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)]
        self.config = replace(self.config, channels=tuple(c.out_channels for c in convs))


def config_from_metadata(meta: dict[str, str] | None) -> DigitsCNNConfig:
    if not meta or "channels" not in meta:
        return DigitsCNNConfig()
    return DigitsCNNConfig(
        channels=tuple(int(c) for c in meta["channels"].split(",")),  # type: ignore[arg-type]
        n_classes=int(meta.get("n_classes", 10)),
        dropout=float(meta.get("dropout", 0.1)),
    )


def save(model: DigitsCNN, path: Path) -> None:
    checkpoint.save(model, path)


def load(path: Path = WEIGHTS, device: str = "cpu") -> DigitsCNN:
    """Load shipped (or pruned) weights; the channel widths come from the file's metadata."""
    return checkpoint.load_into(DigitsCNN(config_from_metadata(checkpoint.metadata(path))), path, device)
