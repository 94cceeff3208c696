"""A user's network, as `docs/export.md` walks through it: a small ResNet, its calibration
batches, and a fine-tune after pruning that distills the pruned network from the full one.

    deepserve export model --module docs/examples/tiny_resnet.py:build --input image:batch,3,32,32 \
        --output logits -r model_repository --name tiny_resnet \
        --variants fp32,fp16,int8-dynamic,int8-static,pruned50 \
        --calibration-data docs/examples/tiny_resnet.py:batches \
        --finetune docs/examples/tiny_resnet.py:distill --report docs/variants/tiny_resnet.md
"""

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.head = nn.Linear(64, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(image)).mean(dim=(2, 3)))


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose class is the brightest quadrant (0 top left ... 3 bottom right)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 4, n)
    for i, q in enumerate(y):
        r, c = divmod(int(q), 2)
        x[i, :, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16] += 0.6
    return x, y


def build() -> nn.Module:
    """Your network, trained: here a few seconds on the quadrant task (yours: load it with --weights)."""
    torch.manual_seed(0)
    net = TinyResNet()
    x, y = (torch.from_numpy(a) for a in images(2048, seed=1))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def batches():
    """Calibration batches, as a data loader would yield them (fresh images, same task)."""
    x, _ = images(256, seed=2)
    for start in range(0, len(x), 32):
        yield {"image": x[start : start + 32]}


def distill(pruned: nn.Module) -> None:
    """Fine-tune the pruned network in place to match the full network's logits."""
    teacher = build()
    optimizer = torch.optim.Adam(pruned.parameters(), lr=3e-3)
    pruned.train()
    x_all, _ = images(1024, seed=3)
    for _ in range(8):
        for start in range(0, len(x_all), 64):
            x = torch.from_numpy(x_all[start : start + 64])
            with torch.no_grad():
                target = teacher(x)
            loss = nn.functional.mse_loss(pruned(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    pruned.eval()
