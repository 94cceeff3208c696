"""The digits CNN, its data split, the shipped weights, and the benchmark networks."""

from __future__ import annotations

import numpy as np
import torch

from models import digits_cnn
from models.bench import mlp_tiny, resnet_bench
from models.digits_data import load_split
from models.train_digits import accuracy


def test_digits_cnn_shapes() -> None:
    model = digits_cnn.DigitsCNN().eval()
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_split_is_deterministic_and_scaled() -> None:
    a, b = load_split(), load_split()
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_test, b.x_test)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.x_train.dtype == np.float32
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert len(a.y_test) == 450


def test_shipped_weights_reach_97_percent() -> None:
    split = load_split()
    assert accuracy(digits_cnn.load(), split.x_test, split.y_test) >= 0.97


def test_save_load_roundtrip_keeps_channel_widths(tmp_path) -> None:
    model = digits_cnn.DigitsCNN(digits_cnn.DigitsCNNConfig(channels=(8, 16, 24))).eval()
    digits_cnn.save(model, tmp_path / "w.safetensors")
    loaded = digits_cnn.load(tmp_path / "w.safetensors")
    assert loaded.config.channels == (8, 16, 24)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))


def test_bench_models_are_deterministic() -> None:
    x = torch.rand(2, 3, 64, 64)
    a, b = resnet_bench(seed=0), resnet_bench(seed=0)
    assert torch.equal(a(x), b(x)) and a(x).shape == (2, 10)
    assert 1_000_000 <= sum(p.numel() for p in a.parameters()) <= 3_000_000
    assert not torch.equal(resnet_bench(seed=1)(x), a(x))
    assert mlp_tiny()(torch.rand(5, 64)).shape == (5, 10)
