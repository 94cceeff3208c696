"""Benchmark networks: untrained, deterministically initialized from a seed.

They exist to measure throughput (batching, runtimes, quantization, pruning), so their
outputs mean nothing; their shapes and FLOPs are what matters.

- ``ResNetBench``: float32 ``(N, 3, 64, 64)`` -> logits ``(N, 10)``, ~1.2 M parameters.
- ``TinyMLP``: float32 ``(N, 64)`` -> logits ``(N, 10)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ResNetBenchConfig:
    widths: tuple[int, ...] = (32, 64, 128, 256)  # one stage per width; each stage after the first halves H, W
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # basic blocks per stage
    in_channels: int = 3
    n_classes: int = 10


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))  # (N, c_out, H/stride, W/stride)
        h = self.bn2(self.conv2(h))
        return torch.relu(h + self.shortcut(x))


class ResNetBench(nn.Module):
    def __init__(self, config: ResNetBenchConfig = ResNetBenchConfig()) -> None:
        super().__init__()
        self.config = config
        w0 = config.widths[0]
        # stem: (N, 3, 64, 64) -> (N, w0, 32, 32)
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w0), nn.ReLU()
        )
        layers: list[nn.Module] = []
        c_in = w0
        for i, (width, n_blocks) in enumerate(zip(config.widths, config.blocks, strict=True)):
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.stages = nn.Sequential(*layers)  # (N, widths[-1], 4, 4) for a 64x64 input
        self.pool = nn.AdaptiveAvgPool2d(1)  # (N, widths[-1], 1, 1)
        self.head = nn.Linear(c_in, config.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(self.pool(x), 1))  # (N, n_classes)


@dataclass(frozen=True)
class TinyMLPConfig:
    n_inputs: int = 64
    hidden: tuple[int, ...] = (128, 128)
    n_classes: int = 10


class TinyMLP(nn.Module):
    def __init__(self, config: TinyMLPConfig = TinyMLPConfig()) -> None:
        super().__init__()
        self.config = config
        dims = (config.n_inputs, *config.hidden)
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(dims):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], config.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, n_inputs) -> (N, n_classes)


def _seeded(factory, seed: int) -> nn.Module:
    """Build under a private RNG state so the caller's global seed is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
        # Non-trivial BatchNorm statistics, so fused weights and int8 ranges look like a trained net's.
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.0)
    return model.eval()


def resnet_bench(seed: int = 0, config: ResNetBenchConfig = ResNetBenchConfig()) -> ResNetBench:
    return _seeded(lambda: ResNetBench(config), seed)  # type: ignore[return-value]


def mlp_tiny(seed: int = 0, config: TinyMLPConfig = TinyMLPConfig()) -> TinyMLP:
    return _seeded(lambda: TinyMLP(config), seed)  # type: ignore[return-value]
