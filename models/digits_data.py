"""scikit-learn's bundled digits, split the one way every recipe and report uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLIT_SEED = 0
TEST_SIZE = 0.25


@dataclass(frozen=True)
class DigitsSplit:
    x_train: np.ndarray  # (N_train, 1, 8, 8) float32 in [0, 1]
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, 1, 8, 8) float32 in [0, 1]
    y_test: np.ndarray  # (N_test,) int64


def load_split() -> DigitsSplit:
    """Deterministic stratified 75/25 split (random_state=0); held-out = ``x_test``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
    return DigitsSplit(x_tr, y_tr, x_te, y_te)
